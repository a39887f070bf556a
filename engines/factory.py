"""`create_detector`: pick a backend and build a detector from an architecture and weights."""
from __future__ import annotations

import logging
from pathlib import Path

from engines.base import BACKENDS, DEFAULT_ARCH, PRECISIONS, Detector, EngineError, default_cache_dir

log = logging.getLogger("engines")


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
    precision: str = "fp32",
) -> Detector:
    """Build a detector. `frame_size` (width, height) fixes the accelerated backends' static input size.

    Without `weights`, the default architecture uses the weights shipped with the package. `weights` may also
    name torchvision's COCO weights of `arch` ("DEFAULT", "COCO_V1"), fetched once into the torch hub cache.
    `precision` int8 needs an accepted INT8 calibration (python -m lab.quantize; TensorRT: a calibration cache,
    benchmarks/gpu_check.sh).
    """
    backend = resolve_backend(backend)
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    if precision == "int8" and backend == "torch":
        raise EngineError("precision int8 needs backend onnxruntime or tensorrt, not torch")
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

        exported = cached_export(loaded, loaded.weights_file, frame_size, cache_dir or default_cache_dir())
        if backend == "onnxruntime":
            from engines.onnx_backend import create_onnxruntime_detector

            detector = create_onnxruntime_detector(loaded, exported, score_threshold, threads, precision=precision)
        else:
            from engines.tensorrt_backend import create_tensorrt_detector, int8_calibration_cache

            detector = create_tensorrt_detector(
                loaded, exported, score_threshold, max_batch=max_batch, cache_dir=cache_dir or default_cache_dir(),
                int8=int8_calibration_cache(exported) if precision == "int8" else None,
            )
    log.info("engine: %s backend, arch %s, %s", backend, arch,
             f"weights {weights} ({loaded.weights_file})" if weights else "untrained")
    return detector
