"""One camera's analytics: its zones and lines, a state row per live track, the events of each frame."""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.analytics.lines import Lines
from pipeline.analytics.objects import FrameObjects
from pipeline.analytics.zones import Zones
from pipeline.config import AnalyticsConfig
from pipeline.events.contract import (
    label_name,
    line_cross_event,
    zone_dwell_event,
    zone_enter_event,
    zone_exit_event,
    zone_occupancy_event,
)
from pipeline.frame import FrameResult

log = logging.getLogger(__name__)

#: A track unseen this long (stream seconds) is gone: it leaves its zones (`reason: lost`). The tracker's buffer.
LOST_AFTER_S = 1.5
_BUILDERS = {"zone_enter": zone_enter_event, "zone_exit": zone_exit_event, "zone_dwell": zone_dwell_event,
             "line_cross": line_cross_event, "zone_occupancy": zone_occupancy_event}


@dataclass(slots=True)
class Sighting:
    """An object as one frame saw it: what an analytics event says of it."""

    track_id: int
    label: str
    box: tuple[float, float, float, float]
    score: float
    pts: float
    ts: float


@dataclass(frozen=True)
class Overlay:
    """What the live view and the annotated video draw: zones (pixels) with occupancy, lines with totals."""

    zones: tuple[tuple[str, tuple[tuple[float, float], ...], int, bool], ...]  # name, points, occupancy, overcrowded
    lines: tuple[tuple[str, tuple[tuple[float, float], ...], int, int], ...]  # name, (a, b), in total, out total


class CameraAnalytics:
    """Zones and lines of one camera. `update` is called by the analytics stage with each tracked frame; `counts`,
    `overlay` and `reconfigure` may be called from other threads (the HTTP API)."""

    def __init__(self, camera: str, config: AnalyticsConfig, label_names: Sequence[str],
                 lost_after_s: float = LOST_AFTER_S) -> None:
        self.camera = camera
        self.label_names = tuple(label_names)
        self.lost_after_s = lost_after_s
        self.size: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._capacity = 64
        self._slot: dict[int, int] = {}  # track id -> state row
        self._free = list(range(self._capacity - 1, -1, -1))
        self._track = np.zeros(self._capacity, np.int64)  # row -> track id (0: free)
        self._sightings = np.zeros(self._capacity, np.int64)  # row -> frames its track has been seen in
        # Last sighting of each row's track, for events after it is gone: pts, capture ts, score, label, box
        self._last_pts = np.full(self._capacity, np.inf)
        self._last = np.zeros((self._capacity, 7))
        self._frame_pts: float | None = None
        self.config = AnalyticsConfig()
        self.zones = Zones([], self.label_names, self._capacity)
        self.lines = Lines([], self.label_names, self._capacity)
        self.reconfigure(config)

    # --- configuration -----------------------------------------------------------------------------------------
    def reconfigure(self, config: AnalyticsConfig) -> None:
        """New zones and lines; ones whose definition is unchanged keep their state and counts."""
        with self._lock:
            zones = Zones(config.zones, self.label_names, self._capacity)
            lines = Lines(config.lines, self.label_names, self._capacity)
            if self.config.zones or self.config.lines:
                zones.adopt(self.zones)
                lines.adopt(self.lines)
            if self.size is not None:
                zones.resize(*self.size)
                lines.resize(*self.size)
            self.zones, self.lines, self.config = zones, lines, config

    # --- per frame -----------------------------------------------------------------------------------------------
    def update(self, result: FrameResult) -> list[dict[str, str]]:
        """The events of one tracked frame, in order."""
        frame, det = result.frame, result.detections
        events: list[dict[str, str]] = []
        with self._lock:
            if self._frame_pts is not None and frame.pts < self._frame_pts - 1.0:  # the camera's clock restarted
                self._release_all(events, "ended")
            self._frame_pts = frame.pts
            if (frame.width, frame.height) != self.size and frame.width and frame.height:
                self._resize(frame.width, frame.height)
            if not (self.config.zones or self.config.lines):
                return events
            ids = np.asarray(result.track_ids, np.int64)
            keep = np.flatnonzero(ids > 0)  # objects not (yet) on a confirmed track have no identity to follow
            rows = self._rows(ids[keep])
            self._sightings[rows] += 1
            obj = FrameObjects(
                frame.pts, frame.capture_time, ids[keep], rows,
                np.asarray(det.labels, np.int64)[keep], np.asarray(det.boxes, np.float64)[keep],
                np.asarray(det.scores, np.float64)[keep], self._sightings[rows],
            )
            emit = _Emit(self, obj, events)
            self.zones.update(obj, emit)
            self.lines.update(obj, emit)
            rows = obj.rows
            self._last_pts[rows] = frame.pts
            self._last[rows] = np.column_stack([np.full(len(rows), frame.capture_time), obj.scores, obj.labels,
                                                obj.boxes])
            stale = np.flatnonzero(self._last_pts < frame.pts - self.lost_after_s)
            if len(stale):
                self._release(stale, events, "lost")
        return events

    def end(self) -> list[dict[str, str]]:
        """The camera's stream ended: every tracked object leaves its zones (`reason: ended`)."""
        events: list[dict[str, str]] = []
        with self._lock:
            self._release_all(events, "ended")
            self._frame_pts = None
        return events

    # --- reading (any thread) ------------------------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {"zones": self.zones.counts(), "lines": self.lines.counts()}

    def metrics(self) -> tuple[list[tuple[str, str, int, int, int]], list[tuple[str, str, str, int]]]:
        """For /metrics: (zone, label, occupancy, entries, exits) and (line, direction, label, crossings)."""
        with self._lock:
            zones, lines = [], []
            z = self.zones
            for r, name in enumerate(z.names):
                now: dict[str, int] = {}
                for label in z.inside[r].values():
                    now[label] = now.get(label, 0) + 1
                for label in sorted({*now, *z.entries[r], *z.exits[r]}):
                    zones.append((name, label, now.get(label, 0), z.entries[r][label], z.exits[r][label]))
            for name, totals in zip(self.lines.names, self.lines.totals):
                lines.extend((name, d, label, n) for (d, label), n in sorted(totals.items()))
            return zones, lines

    def overlay(self) -> Overlay | None:
        with self._lock:
            if self.size is None or not (self.config.zones or self.config.lines):
                return None
            z, li = self.zones, self.lines
            zones = tuple((name, tuple(map(tuple, z.polygons[r].tolist())), len(z.inside[r]), z.overcrowded(r))
                          for r, name in enumerate(z.names))
            lines = tuple((name, tuple(map(tuple, li.points[r].tolist())),
                           sum(n for (d, _), n in li.totals[r].items() if d == "in"),
                           sum(n for (d, _), n in li.totals[r].items() if d == "out"))
                          for r, name in enumerate(li.names))
            return Overlay(zones, lines)  # type: ignore[arg-type]

    # --- tracks --------------------------------------------------------------------------------------------------
    def _resize(self, width: int, height: int) -> None:
        self.size = (width, height)
        self.zones.resize(width, height)
        self.lines.resize(width, height)
        for region in [*self.config.zones, *self.config.lines]:
            problem = region.outside_frame(width, height)
            if problem:
                log.warning("camera %r: %s", self.camera, problem)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        slot = self._slot
        rows = [slot.get(t, -1) for t in ids.tolist()]
        if -1 in rows:
            for k, t in enumerate(ids.tolist()):
                if rows[k] == -1:
                    if not self._free:
                        self._grow()
                    rows[k] = slot[t] = self._free.pop()
                    self._track[rows[k]] = t
        return np.asarray(rows, np.int64)

    def _grow(self) -> None:
        old, new = self._capacity, self._capacity * 2
        self._capacity = new
        self._free.extend(range(new - 1, old - 1, -1))
        self._track = np.concatenate([self._track, np.zeros(new - old, np.int64)])
        self._sightings = np.concatenate([self._sightings, np.zeros(new - old, np.int64)])
        self._last_pts = np.concatenate([self._last_pts, np.full(new - old, np.inf)])
        self._last = np.concatenate([self._last, np.zeros((new - old, 7))])
        self.zones.grow(new)
        self.lines.grow(new)

    def _release(self, rows: np.ndarray, events: list[dict[str, str]], reason: str) -> None:
        for row in rows.tolist():
            track_id = int(self._track[row])
            ts, score, label, *box = self._last[row].tolist()
            last = Sighting(track_id, label_name(self.label_names, int(label)), tuple(box), score,  # type: ignore[arg-type]
                            float(self._last_pts[row]), ts)
            emit = _Emit(self, None, events, last=last)
            self.zones.release(row, track_id, emit, reason)
            self.lines.release(row, track_id, emit, reason)
            self._slot.pop(track_id, None)
            self._track[row], self._last_pts[row], self._sightings[row] = 0, np.inf, 0
            self._free.append(row)

    def _release_all(self, events: list[dict[str, str]], reason: str) -> None:
        self._release(np.flatnonzero(self._track > 0), events, reason)


class _Emit:
    """Builds the events regions report about a frame's objects, making each object's `Sighting` once."""

    def __init__(self, owner: CameraAnalytics, obj: FrameObjects | None, events: list[dict[str, str]],
                 last: Sighting | None = None) -> None:
        self.owner, self.obj, self.events, self.last = owner, obj, events, last
        self.sightings: list[Sighting | None] | None = None

    def label(self, i: int) -> str:
        if i < 0 or self.obj is None:
            return self.last.label if self.last is not None else ""
        return label_name(self.owner.label_names, int(self.obj.labels[i]))

    def sighting(self, i: int) -> Sighting:
        if i < 0 or self.obj is None:
            assert self.last is not None
            return self.last
        if self.sightings is None:
            self.sightings = [None] * len(self.obj.ids)
        found = self.sightings[i]
        if found is None:
            o = self.obj
            x1, y1, x2, y2 = o.boxes[i].tolist()
            found = self.sightings[i] = Sighting(int(o.ids[i]), self.label(i), (x1, y1, x2, y2),
                                                 float(o.scores[i]), o.pts, o.ts)
        return found

    def __call__(self, i: int, kind: str, region: str, *args: Any) -> None:
        self.events.append(_BUILDERS[kind](self.owner.camera, region, self.sighting(i), *args))
