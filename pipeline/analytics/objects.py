"""What the zones and lines see of one frame: its tracked objects as arrays, a state row per track, and for each
zone or line which objects count and where their reference point is. Everything is computed for all zones (or
all lines) of a camera at once: numpy calls cost microseconds each, whatever the array size."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.config import ANCHORS, _RegionConfig


@dataclass
class FrameObjects:
    """The tracked objects of one frame. `rows` index each track's state in the regions' arrays."""

    pts: float
    ts: float
    ids: np.ndarray  # int64 [N], track ids > 0
    rows: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N]
    boxes: np.ndarray  # float64 [N, 4]
    scores: np.ndarray  # float64 [N]
    sightings: np.ndarray  # int64 [N]: frames each track has been seen in, this one included
    _anchors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]

    def anchor(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """x and y of the named point of each box (computed once per frame and anchor)."""
        found = self._anchors.get(name)
        if found is None:
            b = self.boxes
            x = {"bottom_left": b[:, 0], "bottom_right": b[:, 2]}.get(name)
            if x is None:
                x = (b[:, 0] + b[:, 2]) * 0.5
            y = (b[:, 1] + b[:, 3]) * 0.5 if name == "center" else b[:, 1] if name == "top_center" else b[:, 3]
            found = self._anchors[name] = (x, y)
        return found


class Selection:
    """Which objects each of R zones (or lines) counts: label filter, minimum size, score and track age in frames;
    and the reference points. Built once per configuration."""

    def __init__(self, configs: Sequence[_RegionConfig], label_names: Sequence[str]) -> None:
        n = len(label_names) + 1  # labels beyond the names never pass a label filter
        self.allowed = np.ones((len(configs), n), bool)
        for r, c in enumerate(configs):
            if c.labels is not None:
                self.allowed[r] = [i < len(label_names) and label_names[i] in c.labels for i in range(n)]
        self.min_area = np.array([c.min_size ** 2 for c in configs])[:, None]
        self.min_score = np.array([c.min_score for c in configs])[:, None]
        self.min_frames = np.array([c.min_frames for c in configs], np.int64)[:, None]
        self.trivial = bool(self.allowed.all() and not self.min_area.any() and not self.min_score.any()
                            and not (self.min_frames > 1).any())
        self.hysteresis = np.array([c.hysteresis for c in configs])[:, None]
        self.anchors = [c.anchor for c in configs]
        self.one_anchor = len(set(self.anchors)) <= 1

    def mask(self, obj: FrameObjects) -> np.ndarray:
        """bool [R, N]: object j counts for region r."""
        if self.trivial:
            return np.ones((len(self.anchors), len(obj.ids)), bool)
        labels = np.minimum(obj.labels, self.allowed.shape[1] - 1)
        keep = self.allowed[:, labels]
        if self.min_area.any():
            b = obj.boxes
            keep &= ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :] >= self.min_area
        if self.min_score.any():
            keep &= obj.scores[None, :] >= self.min_score
        if (self.min_frames > 1).any():
            keep &= obj.sightings[None, :] >= self.min_frames
        return keep

    def points(self, obj: FrameObjects) -> tuple[np.ndarray, np.ndarray]:
        """Reference points, x and y: [R, N], or [1, N] when every region uses the same anchor (it broadcasts)."""
        if self.one_anchor:
            x, y = obj.anchor(self.anchors[0] if self.anchors else ANCHORS[0])
            return x[None, :], y[None, :]
        xs, ys = zip(*(obj.anchor(a) for a in self.anchors))
        return np.stack(xs), np.stack(ys)

    def band(self, obj: FrameObjects) -> np.ndarray:
        """Dead band of each object for each region, pixels [R, N]."""
        return self.hysteresis * obj.heights[None, :]


class Emitter(Protocol):
    """How a zone or line reports an event about object `i` of the frame (-1: the track's last sighting)."""

    def __call__(self, i: int, kind: str, region: str, *args: Any) -> None: ...

    def label(self, i: int) -> str: ...
