"""The event contract, version 1: Redis keys, the fields of each stream entry, and their JSON Schema.

docs/events.md documents every field; `pipeline/schema/events.schema.json` (shipped with the package) states the
same in JSON Schema. Entries are flat string fields, as Redis stores them; `parse_entry` gives typed values.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, Protocol

import numpy as np

from pipeline.frame import FrameResult

SCHEMA_VERSION = 1


def detections_key(prefix: str, camera: str) -> str:
    """One Redis Stream per camera; one entry per processed frame."""
    return f"{prefix}:detections:{camera}"


def parse_stream_id(stream_id: str | bytes) -> tuple[int, int]:
    """A Redis stream id "<ms>-<seq>" as (ms, seq): tuples order as Redis orders the ids."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def events_key(prefix: str) -> str:
    """One Redis Stream for events of all cameras: camera state changes and track lifecycle."""
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


def owner_key(prefix: str, camera: str) -> str:
    """Cluster mode: the fencing epoch of the camera's current placement; writes carrying another epoch are refused."""
    return f"{prefix}:owner:{camera}"


def camera_assigned_event(camera: str, worker: str, node: str, reason: str, epoch: int, ts: float) -> dict[str, str]:
    """Cluster mode: the controller placed a camera on a worker (first placement, or once a worker had room)."""
    return {
        "v": str(SCHEMA_VERSION), "type": "camera_assigned", "camera": camera, "worker": worker, "node": node,
        "reason": reason, "epoch": str(epoch), "ts": f"{ts:.6f}",
    }


def camera_moved_event(camera: str, worker: str, node: str, reason: str, epoch: int, from_worker: str,
                       from_node: str, ts: float) -> dict[str, str]:
    """Cluster mode: a camera was taken from a lost worker and placed on another."""
    return {
        "v": str(SCHEMA_VERSION), "type": "camera_moved", "camera": camera, "worker": worker, "node": node,
        "reason": reason, "epoch": str(epoch), "from_worker": from_worker, "from_node": from_node, "ts": f"{ts:.6f}",
    }


def camera_unplaced_event(camera: str, reason: str, ts: float) -> dict[str, str]:
    """Cluster mode: no live worker has room for the camera; it is placed once one has."""
    return {"v": str(SCHEMA_VERSION), "type": "camera_unplaced", "camera": camera, "reason": reason, "ts": f"{ts:.6f}"}


class TrackStart(Protocol):
    """What a `track_started` event says of a track (pipeline.tracker.TrackStart has these fields)."""

    track_id: int
    box: Sequence[float]
    time: float
    score: float


class TrackEnd(Protocol):
    """What a `track_ended` event says of a track (pipeline.tracker.TrackEnd has these fields)."""

    track_id: int
    box: Sequence[float]
    end_time: float
    duration: float
    frames: int
    best_score: float


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


# --- zone and line analytics (pipeline/analytics; docs/analytics.md) -----------------------------------------------
ANALYTICS_EVENT_TYPES = ("zone_enter", "zone_exit", "zone_dwell", "line_cross", "zone_occupancy")


class Sighting(Protocol):
    """The object an analytics event is about (pipeline.analytics.Sighting has these fields)."""

    track_id: int
    label: str
    box: Sequence[float]
    score: float
    pts: float  # stream seconds of the frame it was seen in
    ts: float  # wall-clock capture time of that frame


def _region_event(kind: str, camera: str, where: tuple[str, str], obj: Sighting, **extra: str) -> dict[str, str]:
    return {
        "v": _VERSION, "type": kind, "camera": camera, where[0]: where[1], "track_id": str(obj.track_id),
        "label": obj.label, "score": f"{min(max(obj.score, 0.0), 1.0):.4f}", "box": _box(obj.box),
        "pts": f"{obj.pts:.6f}", "ts": f"{obj.ts:.6f}", **extra,
    }


def zone_enter_event(camera: str, zone: str, obj: Sighting, entered_pts: float) -> dict[str, str]:
    """An object's reference point went into a zone (or it was first seen there) at `entered_pts`."""
    return _region_event("zone_enter", camera, ("zone", zone), obj, entered_pts=f"{entered_pts:.6f}")


def zone_exit_event(camera: str, zone: str, obj: Sighting, entered_pts: float, exited_pts: float | None,
                    reason: str) -> dict[str, str]:
    """An object left a zone at `exited_pts` (`left`), was lost inside it (`lost`) or its stream ended (`ended`);
    for those two it left when last seen."""
    exited = obj.pts if exited_pts is None else exited_pts
    return _region_event("zone_exit", camera, ("zone", zone), obj, entered_pts=f"{entered_pts:.6f}",
                         exited_pts=f"{exited:.6f}", duration_s=f"{max(0.0, exited - entered_pts):.3f}",
                         reason=reason)


def zone_dwell_event(camera: str, zone: str, obj: Sighting, entered_pts: float, threshold_s: float) -> dict[str, str]:
    """An object has been inside a zone for the zone's `dwell_s` (once per visit)."""
    return _region_event("zone_dwell", camera, ("zone", zone), obj, entered_pts=f"{entered_pts:.6f}",
                         dwell_s=f"{max(0.0, obj.pts - entered_pts):.3f}", threshold_s=f"{threshold_s:.3f}")


def line_cross_event(camera: str, line: str, obj: Sighting, direction: str, direction_name: str,
                     cross_pts: float) -> dict[str, str]:
    """An object crossed a line: `direction` in (left to right of the line's direction) or out."""
    return _region_event("line_cross", camera, ("line", line), obj, direction=direction,
                         direction_name=direction_name, cross_pts=f"{cross_pts:.6f}")


def zone_occupancy_event(camera: str, zone: str, obj: Sighting, count: int, previous: int,
                         max_objects: int | None) -> dict[str, str]:
    """The number of objects in a zone changed (`obj` entered or left); overcrowding began or ended."""
    over = max_objects is not None and count > max_objects
    was = max_objects is not None and previous > max_objects
    return _region_event("zone_occupancy", camera, ("zone", zone), obj, count=str(count),
                         previous_count=str(previous), max_objects="" if max_objects is None else str(max_objects),
                         overcrowded="true" if over else "false",
                         overcrowding="begin" if over and not was else "end" if was and not over else "")


def label_name(label_names: Sequence[str], label: int) -> str:
    """The name of detector class ``label``, as events and frame entries carry it; the number itself (as text) for a
    class the model's list does not name."""
    return label_names[label] if 0 <= label < len(label_names) else str(label)


def frame_objects(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, track_ids: np.ndarray,
                  predicted: np.ndarray | None, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """A frame's objects as published (the `objects` field, decoded): track_id, label, score, box, and `predicted`
    where true; also what the HTTP API's `last_frame` shows."""
    # Whole arrays to Python lists at once: per-element numpy scalars would cost most of the encoding time.
    boxes_1 = np.asarray(boxes, np.float64).round(1).tolist()
    scores_4 = np.asarray(scores, np.float64).round(4).tolist()
    objects: list[dict[str, Any]] = [
        {
            "track_id": track_id if track_id > 0 else None,
            "label": label_name(label_names, label),
            "score": score,
            "box": box,
        }
        for box, score, label, track_id in zip(boxes_1, scores_4, np.asarray(labels).tolist(),
                                               np.asarray(track_ids).tolist())
    ]
    if predicted is not None:
        for i in np.flatnonzero(np.asarray(predicted, bool)).tolist():  # the key only where true: small entries
            objects[i]["predicted"] = True
    return objects


def frame_entry(result: FrameResult, label_names: Sequence[str], publish_ts: float) -> dict[str, str]:
    """Encode one processed frame as flat string fields (readable with plain `redis-cli XRANGE`)."""
    frame, det = result.frame, result.detections
    objects = frame_objects(det.boxes, det.scores, det.labels, result.track_ids, result.predicted, label_names)
    return {
        "v": _VERSION,
        "camera": frame.stream,
        "frame": str(frame.index),
        "pts": f"{frame.pts:.6f}",
        "capture_ts": f"{frame.capture_time:.6f}",
        "publish_ts": f"{publish_ts:.6f}",  # the publisher stamps these two again when it sends the entry
        "latency_ms": f"{max(0.0, publish_ts - frame.capture_time) * 1000:.1f}",
        "width": str(frame.width),
        "height": str(frame.height),
        "objects": _compact(objects),
    }


_VERSION = str(SCHEMA_VERSION)
_compact = json.JSONEncoder(separators=(",", ":")).encode


def _json(value: str) -> Any:
    return json.loads(value)


# How each stored string decodes; fields not listed (added in a later release) stay strings.
FIELD_TYPES: dict[str, Callable[[str], Any]] = {
    "v": int, "frame": int, "width": int, "height": int, "track_id": int, "frames": int, "epoch": int,
    "pts": float, "capture_ts": float, "publish_ts": float, "latency_ms": float, "ts": float, "score": float,
    "best_score": float, "duration_s": float,
    "objects": _json, "box": _json, "last_box": _json,
    # analytics events
    "count": int, "previous_count": int, "max_objects": lambda v: int(v) if v else None,
    "overcrowded": lambda v: v == "true", "entered_pts": float, "exited_pts": float, "dwell_s": float, "threshold_s": float,
    "cross_pts": float,
}


def parse_entry(entry_id: str, fields: Mapping[str, str]) -> dict[str, object]:
    """Decode any entry (frame or event) into typed JSON-ready values, with its stream id as `id`."""
    out: dict[str, object] = {"id": entry_id}
    for name, value in fields.items():
        decode = FIELD_TYPES.get(name)
        out[name] = decode(value) if decode is not None else value
    return out


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema of stored entries (`pipeline/schema/events.schema.json`)."""
    text = resources.files("pipeline").joinpath("schema/events.schema.json").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def validate_entry(fields: Mapping[str, str]) -> None:
    """Check one stored entry (frame or event) against the JSON Schema; raises jsonschema.ValidationError.

    Fields holding JSON text (a frame's `objects`, an event's `box`) are also decoded and checked against their
    `contentSchema`, which JSON Schema validators otherwise treat as an annotation. Needs the `jsonschema` package.
    """
    import jsonschema  # imported lazily: only validation needs it

    root = schema()
    kinds = [ref["$ref"].rsplit("/", 1)[1] for ref in root["oneOf"]]
    kind = fields.get("type", "frame")
    if kind not in kinds or kind == "frame" and "type" in fields:
        raise jsonschema.ValidationError(f"unknown entry type {kind!r}; known: {', '.join(kinds[1:])}")
    _validator(f"#/$defs/{kind}").validate(dict(fields))  # names the field at fault, unlike the root's oneOf
    definition = root["$defs"][kind]
    for name, prop in definition["properties"].items():
        if name not in fields:
            continue
        target = root["$defs"][prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else prop
        if "contentSchema" in target:
            _validator(target["contentSchema"]["$ref"]).validate(json.loads(fields[name]))


@functools.cache
def _validator(ref: str) -> Any:
    import jsonschema  # imported lazily: only validation needs it

    root = schema()
    cls = jsonschema.validators.validator_for(root)
    cls.check_schema(root)
    return cls({"$ref": ref, "$defs": root["$defs"]})
