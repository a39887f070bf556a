"""Detector engines: one `Detector` interface, several backends.

- `torch`: the eager torchvision model (the reference);
- `onnxruntime`: the exported graphs in ONNX Runtime on the CPU (engines/onnx_backend.py);
- `tensorrt`: the exported graphs compiled by TensorRT on an NVIDIA GPU (engines/tensorrt_backend.py);
- `auto`: tensorrt when a GPU and the package are present, else onnxruntime.

Importing this package is cheap (no torch): the CLI and config need only the names below.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from engines.base import Detections, Detector, EngineError

__all__ = ["ARCHS", "BACKENDS", "DEFAULT_ARCH", "Detections", "Detector", "EngineError", "create_detector"]

log = logging.getLogger(__name__)

#: The project's own default model (see engines/models.py and docs/model.md).
DEFAULT_ARCH = "fasterrcnn_lite"
#: torchvision's Faster R-CNN builders, for users who bring COCO checkpoints.
TORCHVISION_ARCHS: tuple[str, ...] = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
ARCHS: tuple[str, ...] = (DEFAULT_ARCH, *TORCHVISION_ARCHS)
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "tensorrt")


def state_dir() -> Path:
    """The user's state directory: $RPN_STATE_DIR, else $XDG_STATE_HOME/rpn-pipeline (~/.local/state/...)."""
    state = os.environ.get("RPN_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "rpn-pipeline"
    )
    return Path(state)


def default_cache_dir() -> Path:
    """Where exported ONNX graphs and TensorRT engines are cached (keyed by weights and settings)."""
    return state_dir() / "engines"


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    from engines.tensorrt_backend import tensorrt_available

    return "tensorrt" if tensorrt_available() else "onnxruntime"


def create_detector(
    backend: str = "auto",
    arch: str = DEFAULT_ARCH,
    weights: str | Path | None = None,
    score_threshold: float = 0.5,
    threads: int | None = None,
    device: str = "cpu",
    frame_size: tuple[int, int] = (640, 360),
    max_batch: int = 8,
    cache_dir: Path | None = None,
) -> Detector:
    """Build a detector. `frame_size` (width, height) fixes the accelerated backends' static input size.

    Without `weights`, the default architecture uses the weights shipped with the package.
    """
    backend = resolve_backend(backend)
    import torch

    from engines.models import build_model, default_weights

    if threads:
        torch.set_num_threads(threads)
    if weights is None:
        weights = default_weights(arch)
    loaded = build_model(arch, weights)
    if backend == "torch":
        from engines.torch_backend import TorchDetector

        detector: Detector = TorchDetector(loaded, score_threshold=score_threshold, device=device)
    else:
        from engines.export import cached_export

        exported = cached_export(loaded, Path(weights) if weights else None, frame_size, cache_dir or default_cache_dir())
        if backend == "onnxruntime":
            from engines.onnx_backend import create_onnxruntime_detector

            detector = create_onnxruntime_detector(loaded, exported, score_threshold, threads)
        else:
            from engines.tensorrt_backend import create_tensorrt_detector

            detector = create_tensorrt_detector(
                loaded, exported, score_threshold, max_batch=max_batch, cache_dir=cache_dir or default_cache_dir()
            )
    log.info("engine: %s backend, arch %s, %s", backend, arch, f"weights {weights}" if weights else "untrained")
    return detector
