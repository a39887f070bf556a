"""`Clip`: detections and ground truth of one sequence, as the tracking evaluation feeds them to every tracker.

Made from a rendered clip and the detector (lab/track_eval.py) or from simulated detections over synthetic and real
trajectories (lab/track_regimes.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["Clip"]


@dataclass
class Clip:
    """Cached detections and ground truth of one rendered clip."""

    name: str
    fps: float
    frames: int
    crowded: bool
    # detections, concatenated over frames; det_frame = frame index of each row
    det_frame: np.ndarray  # int64 [D]
    det_boxes: np.ndarray  # float32 [D, 4]
    det_scores: np.ndarray  # float32 [D]
    det_labels: np.ndarray  # int64 [D]
    # ground truth, concatenated over frames
    gt_frame: np.ndarray  # int64 [G]
    gt_ids: np.ndarray  # int64 [G]
    gt_boxes: np.ndarray  # float64 [G, 4]
    gt_labels: np.ndarray  # int64 [G]
    gt_ignored: np.ndarray  # bool [G]
    times: np.ndarray | None = None  # float64 [frames]: timestamp (s) of each frame; None: index / fps
    frame_size: tuple[int, int] | None = None  # (width, height) the boxes' coordinates are in; None: unknown

    def time(self, t: int) -> float:
        return float(self.times[t]) if self.times is not None else t / self.fps

    def detections(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sel = self.det_frame == t
        return self.det_boxes[sel], self.det_scores[sel], self.det_labels[sel]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: v for k, v in asdict(self).items() if isinstance(v, np.ndarray)}
        meta = np.array(json.dumps({"name": self.name, "fps": self.fps, "frames": self.frames,
                                    "crowded": self.crowded, "frame_size": self.frame_size}))
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, meta=meta, **arrays)
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> Clip:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            size = meta.pop("frame_size", None)  # absent in clips cached before it was recorded
            meta["frame_size"] = None if size is None else (int(size[0]), int(size[1]))
            return Clip(**meta, **{k: z[k] for k in z.files if k != "meta"})
