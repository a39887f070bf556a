"""Detector engines: one `Detector` interface, several backends.

Importing this package is cheap (no torch): the CLI and config need only the names below.
"""
from __future__ import annotations

import logging
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
BACKENDS: tuple[str, ...] = ("auto", "torch")


def create_detector(
    backend: str = "auto",
    arch: str = DEFAULT_ARCH,
    weights: str | Path | None = None,
    score_threshold: float = 0.5,
    threads: int | None = None,
    device: str = "cpu",
) -> Detector:
    """Build a detector. `auto` picks the fastest backend available on this machine."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    import torch

    from engines.models import build_model
    from engines.torch_backend import TorchDetector

    if threads:
        torch.set_num_threads(threads)
    loaded = build_model(arch, weights)
    detector = TorchDetector(loaded, score_threshold=score_threshold, device=device)
    log.info("engine: %s backend, arch %s, %s", detector.backend, arch, f"weights {weights}" if weights else "untrained")
    return detector
