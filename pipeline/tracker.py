"""Tracker stage: gives detections identities, one tracker per stream.

`IoUTracker` is a plain IoU matcher (Hungarian assignment on 1 - IoU, class-aware): enough for the first version
of the pipeline; the ByteTrack-class tracker replaces it behind the same `update` signature.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from pipeline.frame import BatchResult, StreamEnd
from pipeline.stage import Channel, RunContext, Stage


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    label: int
    missed: int = 0


class IoUTracker:
    """Matches each frame's detections to the previous boxes of live tracks by IoU."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self._tracks: list[_Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Return one positive track id per detection (ids are never reused)."""
        ids = np.zeros(len(boxes), np.int64)
        matched_tracks: set[int] = set()
        if len(boxes) and self._tracks:
            iou = box_iou(
                torch.from_numpy(np.stack([t.box for t in self._tracks])), torch.from_numpy(boxes.astype(np.float32))
            ).numpy()
            same_label = np.array([t.label for t in self._tracks])[:, None] == labels[None, :]
            cost = np.where(same_label, 1.0 - iou, 1.0)
            for t, d in zip(*linear_sum_assignment(cost)):
                if cost[t, d] <= 1.0 - self.iou_threshold:
                    track = self._tracks[t]
                    track.box, track.missed = boxes[d].astype(np.float32), 0
                    ids[d] = track.track_id
                    matched_tracks.add(t)
        for i, track in enumerate(self._tracks):
            if i not in matched_tracks:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        for d in np.flatnonzero(ids == 0):
            self._tracks.append(_Track(self._next_id, boxes[d].astype(np.float32), int(labels[d])))
            ids[d] = self._next_id
            self._next_id += 1
        return ids


class TrackerStage(Stage):
    def __init__(self, inbox: Channel[object], outbox: Channel[object], ctx: RunContext) -> None:
        super().__init__("tracker", inbox, outbox, ctx)
        self._trackers: dict[str, IoUTracker] = {}

    def process(self, item: object) -> None:
        assert isinstance(item, BatchResult)
        for result in item.results:
            tracker = self._trackers.setdefault(result.frame.stream, IoUTracker())
            det = result.detections
            result.track_ids = tracker.update(det.boxes, det.scores, det.labels)
        self.emit(item)

    def on_stream_end(self, marker: StreamEnd) -> None:
        self._trackers.pop(marker.stream, None)
        self.emit(marker)
