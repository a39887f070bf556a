"""The one interface every detector backend implements, and the names the CLI and config need (no torch here)."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class EngineError(RuntimeError):
    """A detector cannot be built or loaded (bad weights file, unknown arch, missing backend)."""


@dataclass(frozen=True)
class Detections:
    """Detections of one frame, in source-pixel coordinates."""

    boxes: np.ndarray  # float32 [N, 4]: x1, y1, x2, y2
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int64 [N]: index into Detector.label_names

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            boxes=np.zeros((0, 4), np.float32), scores=np.zeros((0,), np.float32), labels=np.zeros((0,), np.int64)
        )


class Detector(ABC):
    """A batch of RGB frames in, one `Detections` per frame out.

    Frames in one batch may have different sizes; boxes come back in each frame's own pixel coordinates.
    """

    #: Human-readable backend name, e.g. "torch" or "onnxruntime".
    backend: str
    #: label id -> name; id 0 is the background class.
    label_names: Sequence[str]

    @abstractmethod
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect objects in uint8 HxWx3 RGB images."""

    def frame_size_for(self, width: int, height: int) -> tuple[int, int] | None:
        """The (width, height) this engine resizes a `width` x `height` frame to, or None if it has no fixed rule.

        The decoder scales frames straight to this size, so the engine does no resizing of its own.
        """
        return None

    def close(self) -> None:
        """Release backend resources."""

    def label_name(self, label: int) -> str:
        names = self.label_names
        return names[label] if 0 <= label < len(names) else str(label)


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
PRECISIONS: tuple[str, ...] = ("fp32", "int8")  # engine.precision; int8 needs an accepted calibration


def state_dir() -> Path:
    """The user's state directory: $RPN_STATE_DIR, else $XDG_STATE_HOME/rpn-pipeline (~/.local/state/...)."""
    state = os.environ.get("RPN_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "rpn-pipeline"
    )
    return Path(state)


def default_cache_dir() -> Path:
    """Where exported ONNX graphs and TensorRT engines are cached (keyed by weights and settings)."""
    return state_dir() / "engines"
