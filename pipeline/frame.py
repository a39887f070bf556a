"""What flows between stages."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engines.base import Detections


@dataclass
class Frame:
    """One decoded video frame."""

    stream: str  # camera / source name
    index: int  # 0-based count of frames decoded from this source
    pts: float  # presentation time in seconds, from the container
    capture_time: float  # wall clock (time.time()) when the frame left the decoder
    image: np.ndarray | None  # uint8 HxWx3 RGB, what the detector sees; released once detection is done
    width: int = 0  # source pixels: detections are published in these
    height: int = 0
    #: Source pixels per image pixel (x, y): the decoder may scale the image down to the engine's size.
    scale: tuple[float, float] = (1.0, 1.0)
    #: Makes `image` on first use (pipeline/sources/scaling.py): frames dropped before detection are never converted.
    pending: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.image is not None and not self.width:
            self.height, self.width = self.image.shape[:2]

    def materialize(self) -> np.ndarray | None:
        """The image, converting the decoded picture now if that was deferred."""
        if self.image is None and self.pending is not None:
            self.image, self.pending = self.pending(), None
        return self.image

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in image pixels -> source pixels."""
        sx, sy = self.scale
        return boxes if (sx, sy) == (1.0, 1.0) else boxes * np.array([sx, sy, sx, sy], np.float32)



def boxes_to_image(boxes: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Boxes in source pixels -> image pixels, for drawing; `scale` is source pixels per image pixel (x, y)."""
    sx, sy = scale
    if (sx, sy) == (1.0, 1.0):
        return boxes
    return np.asarray(boxes, np.float32) / np.array([sx, sy, sx, sy], np.float32)


@dataclass
class Batch:
    """Frames from any streams, detected together."""

    frames: list[Frame]


@dataclass
class FrameResult:
    """A frame after detection and tracking."""

    frame: Frame
    detections: Detections
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    # per detection: True where the tracker predicted the box of an object the detector missed (empty: none)
    predicted: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    analytics: object | None = None  # zones and lines to draw (pipeline.analytics Overlay), frames with an image


@dataclass
class BatchResult:
    results: list[FrameResult]


@dataclass(frozen=True)
class StreamEnd:
    """Control item: a source has finished; it follows that source's last frame through every stage."""

    stream: str


class EndOfInput:
    """Control item: no more input at all; each stage flushes, forwards it and exits."""


END = EndOfInput()


def frames_of(item: object) -> list[Frame]:
    """The frames an item carries (for counting and drop accounting)."""
    if isinstance(item, Frame):
        return [item]
    if isinstance(item, Batch):
        return item.frames
    if isinstance(item, FrameResult):
        return [item.frame]
    if isinstance(item, BatchResult):
        return [r.frame for r in item.results]
    return []
