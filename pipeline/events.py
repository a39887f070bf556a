"""The event contract, version 1: Redis keys and the fields of each stream entry (see docs/events.md)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from pipeline.bytetrack import TrackEnd, TrackStart
from pipeline.frame import FrameResult

SCHEMA_VERSION = 1


def detections_key(prefix: str, camera: str) -> str:
    """One Redis Stream per camera; one entry per processed frame."""
    return f"{prefix}:detections:{camera}"


def events_key(prefix: str) -> str:
    """One Redis Stream for events of all cameras: camera state changes (and, later, track lifecycle)."""
    return f"{prefix}:events"


def camera_state_event(camera: str, state: str, previous: str, reason: str | None, url: str, ts: float) -> dict[str, str]:
    """A camera changed state: connecting, online, offline, stopped or failed. `url` must be redacted."""
    return {
        "v": str(SCHEMA_VERSION),
        "type": "camera_state",
        "camera": camera,
        "state": state,
        "previous": previous,
        "reason": reason or "",
        "url": url,
        "ts": f"{ts:.6f}",
    }


def _box(box: Sequence[float]) -> str:
    return json.dumps([round(float(v), 1) for v in box])


def track_started_event(camera: str, track: TrackStart, label: str, ts: float) -> dict[str, str]:
    """A new object was confirmed: its first box and the pts (stream seconds) it was first seen at."""
    return {
        "v": str(SCHEMA_VERSION), "type": "track_started", "camera": camera, "track_id": str(track.track_id),
        "label": label, "box": _box(track.box), "pts": f"{track.time:.6f}", "score": f"{track.score:.4f}",
        "ts": f"{ts:.6f}",
    }


def track_ended_event(camera: str, track: TrackEnd, label: str, ts: float) -> dict[str, str]:
    """An object left (lost longer than the tracker's buffer, or the stream ended)."""
    return {
        "v": str(SCHEMA_VERSION), "type": "track_ended", "camera": camera, "track_id": str(track.track_id),
        "label": label, "duration_s": f"{track.duration:.3f}", "frames": str(track.frames),
        "best_score": f"{track.best_score:.4f}", "last_box": _box(track.box), "pts": f"{track.end_time:.6f}",
        "ts": f"{ts:.6f}",
    }


def frame_entry(result: FrameResult, label_names: Sequence[str], publish_ts: float) -> dict[str, str]:
    """Encode one processed frame as flat string fields (readable with plain `redis-cli XRANGE`)."""
    frame, det = result.frame, result.detections
    objects = [
        {
            "track_id": int(track_id) if track_id > 0 else None,
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
