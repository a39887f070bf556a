"""The event contract, version 1: Redis keys and the fields of each stream entry (see docs/events.md)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from pipeline.frame import FrameResult

SCHEMA_VERSION = 1


def detections_key(prefix: str, camera: str) -> str:
    """One Redis Stream per camera; one entry per processed frame."""
    return f"{prefix}:detections:{camera}"


def frame_entry(result: FrameResult, label_names: Sequence[str], publish_ts: float) -> dict[str, str]:
    """Encode one processed frame as flat string fields (readable with plain `redis-cli XRANGE`)."""
    frame, det = result.frame, result.detections
    objects = [
        {
            "track_id": int(track_id),
            "label": label_names[label] if 0 <= label < len(label_names) else str(label),
            "score": round(float(score), 4),
            "box": [round(float(v), 1) for v in box],
        }
        for box, score, label, track_id in zip(det.boxes, det.scores, det.labels.tolist(), result.track_ids)
    ]
    return {
        "v": str(SCHEMA_VERSION),
        "camera": frame.stream,
        "frame": str(frame.index),
        "pts": f"{frame.pts:.6f}",
        "capture_ts": f"{frame.capture_time:.6f}",
        "publish_ts": f"{publish_ts:.6f}",
        "width": str(frame.width),
        "height": str(frame.height),
        "objects": json.dumps(objects, separators=(",", ":")),
    }


def parse_frame_entry(entry_id: str, fields: Mapping[str, str]) -> dict[str, object]:
    """Decode an entry written by `frame_entry` into typed JSON-ready values."""
    return {
        "id": entry_id,
        "v": int(fields["v"]),
        "camera": fields["camera"],
        "frame": int(fields["frame"]),
        "pts": float(fields["pts"]),
        "capture_ts": float(fields["capture_ts"]),
        "publish_ts": float(fields["publish_ts"]),
        "width": int(fields["width"]),
        "height": int(fields["height"]),
        "objects": json.loads(fields["objects"]),
    }
