"""Detector engines: one `Detector` interface, several backends.

- `torch`: the eager torchvision model (the reference);
- `onnxruntime`: the exported graphs in ONNX Runtime on the CPU (engines/onnx_backend.py);
- `tensorrt`: the exported graphs compiled by TensorRT on an NVIDIA GPU (engines/tensorrt_backend.py);
- `auto`: tensorrt when a GPU and the package are present, else onnxruntime.

Importing this package is cheap (no torch): the CLI and config need only the names below.
"""
from __future__ import annotations

from engines.base import (
    ARCHS,
    BACKENDS,
    DEFAULT_ARCH,
    TORCHVISION_ARCHS,
    Detections,
    Detector,
    EngineError,
    default_cache_dir,
    state_dir,
)
from engines.factory import create_detector, resolve_backend

__all__ = [
    "ARCHS", "BACKENDS", "DEFAULT_ARCH", "TORCHVISION_ARCHS", "Detections", "Detector", "EngineError",
    "create_detector", "default_cache_dir", "resolve_backend", "state_dir",
]
