"""Zones: polygons (shapely) that objects enter, stay in and leave, with occupancy and overcrowding."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import shapely

from pipeline.analytics.objects import Emitter, FrameObjects, Selection
from pipeline.config import ZoneConfig

INSIDE, OUTSIDE, UNKNOWN = 1, -1, 0


class Zones:
    """All zones of one camera: per zone and track, inside/outside (with hysteresis), entries, exits, occupancy.

    A reference point counts as inside (or outside) only once it is further than the dead band from the border
    (`hysteresis` x the box height); within the band a track keeps its last state, so jitter on the border gives
    no events. An object first seen inside a zone enters it then.
    """

    def __init__(self, configs: Sequence[ZoneConfig], label_names: Sequence[str], capacity: int) -> None:
        self.configs = list(configs)
        self.names = [c.name for c in configs]
        self.select = Selection(configs, label_names)
        r = len(configs)
        self.state = np.zeros((r, capacity), np.int8)
        self.entered = np.zeros((r, capacity))  # pts of entry
        self.raw = np.zeros((r, capacity), np.int8)  # last side of the border, without the dead band
        self.flip = np.zeros((r, capacity))  # pts of the first sighting on that side: when it crossed the border
        self.dwelt = np.zeros((r, capacity), bool)  # zone_dwell already sent for this visit
        self.dwell_s = np.array([c.dwell_s if c.dwell_s is not None else np.inf for c in configs])[:, None]
        self.any_dwell = any(c.dwell_s is not None for c in configs)
        self.inside: list[dict[int, str]] = [{} for _ in configs]  # track id -> label, of the objects inside
        self.entries: list[Counter[str]] = [Counter() for _ in configs]  # by label
        self.exits: list[Counter[str]] = [Counter() for _ in configs]
        self.polygons: list[np.ndarray] = []

    def adopt(self, old: Zones) -> None:
        """Keep the state and counts of zones whose definition did not change."""
        for r, c in enumerate(self.configs):
            if c.name in old.names and old.configs[k := old.names.index(c.name)] == c:
                self.state[r], self.entered[r], self.dwelt[r] = old.state[k], old.entered[k], old.dwelt[k]
                self.raw[r], self.flip[r] = old.raw[k], old.flip[k]
                self.inside[r], self.entries[r], self.exits[r] = old.inside[k], old.entries[k], old.exits[k]

    def resize(self, width: int, height: int) -> None:
        """Pixel geometry for frames of this size (normalised points scale with it)."""
        self.polygons = [np.asarray(c.pixel_points(width, height), np.float64) for c in self.configs]
        self._shapes = np.array([shapely.Polygon(p) for p in self.polygons], dtype=object)[:, None]
        shapely.prepare(self._shapes)
        # Every zone's edges in one array, padded with copies of its first edge, for one distance computation
        edges = max((len(p) for p in self.polygons), default=0)
        a = np.zeros((len(self.polygons), edges, 2))
        b = np.zeros_like(a)
        for r, p in enumerate(self.polygons):
            q = np.roll(p, -1, axis=0)
            a[r], b[r] = np.resize(p, (edges, 2)), np.resize(q, (edges, 2))
        self._ax, self._ay = a[:, None, :, 0], a[:, None, :, 1]  # [R, 1, E]
        self._dx, self._dy = b[:, None, :, 0] - self._ax, b[:, None, :, 1] - self._ay
        self._len2 = np.maximum(self._dx ** 2 + self._dy ** 2, 1e-12)

    def grow(self, capacity: int) -> None:
        r, n = len(self.configs), capacity - self.state.shape[1]
        self.state = np.concatenate([self.state, np.zeros((r, n), np.int8)], axis=1)
        self.entered = np.concatenate([self.entered, np.zeros((r, n))], axis=1)
        self.dwelt = np.concatenate([self.dwelt, np.zeros((r, n), bool)], axis=1)
        self.raw = np.concatenate([self.raw, np.zeros((r, n), np.int8)], axis=1)
        self.flip = np.concatenate([self.flip, np.zeros((r, n))], axis=1)

    def side(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """INSIDE or OUTSIDE, per zone and point [R, N] (x, y: [R, N] or [1, N])."""
        return np.where(shapely.contains_xy(self._shapes, x, y), INSIDE, OUTSIDE).astype(np.int8)

    def near_border(self, r: np.ndarray, x: np.ndarray, y: np.ndarray, band: np.ndarray) -> np.ndarray:
        """Whether point k is within band[k] pixels of zone r[k]'s border."""
        ax, ay, dx, dy = self._ax[r, 0], self._ay[r, 0], self._dx[r, 0], self._dy[r, 0]  # [K, E]
        px, py = x[:, None] - ax, y[:, None] - ay
        t = np.clip((px * dx + py * dy) / self._len2[r, 0], 0.0, 1.0)
        ex, ey = px - t * dx, py - t * dy
        return (ex * ex + ey * ey).min(axis=1) < band * band

    def update(self, obj: FrameObjects, emit: Emitter) -> None:
        if not self.configs or not len(obj.ids):
            return
        rows = obj.rows
        keep = None if self.select.trivial else self.select.mask(obj)
        x, y = self.select.points(obj)
        raw = self.side(x, y)
        crossed = raw != self.raw[:, rows]
        if keep is not None:
            crossed &= keep
        if crossed.any():
            r, j = np.nonzero(crossed)
            self.raw[r, rows[j]], self.flip[r, rows[j]] = raw[r, j], obj.pts
        prev = self.state[:, rows]
        # Only points on another side than their zone state can change it; the dead band is checked for those alone.
        moved = raw != prev
        if keep is not None:
            moved &= keep
        new = prev
        if moved.any():
            r, j = np.nonzero(moved)
            xr = r if len(x) > 1 else np.zeros_like(r)
            near = self.near_border(r, x[xr, j], y[xr, j], self.select.hysteresis[r, 0] * obj.heights[j])
            r, j = r[~near], j[~near]
            if len(r):
                new = prev.copy()
                new[r, j] = raw[r, j]
                self.state[r, rows[j]] = raw[r, j]
        if new is not prev:
            changed = new != prev
            pairs = list(zip(*np.nonzero(changed)))
            for r, j in pairs:  # exits first: occupancy never counts one object twice
                if prev[r, j] == INSIDE:
                    self._exit(r, int(j), int(obj.ids[j]), int(rows[j]), emit, "left", float(self.flip[r, rows[j]]))
            for r, j in pairs:
                if new[r, j] == INSIDE:
                    row, inside = int(rows[j]), self.inside[r]
                    self.entered[r, row], self.dwelt[r, row] = self.flip[r, row], False
                    label = emit.label(int(j))
                    inside[int(obj.ids[j])] = label
                    self.entries[r][label] += 1
                    emit(int(j), "zone_enter", self.names[r], float(self.entered[r, row]))
                    emit(int(j), "zone_occupancy", self.names[r], len(inside), len(inside) - 1,
                         self.configs[r].max_objects)
        if not self.any_dwell:
            return
        due = (new == INSIDE) & (obj.pts - self.entered[:, rows] >= self.dwell_s)
        if due.any():
            due &= ~self.dwelt[:, rows]
            for r, j in zip(*np.nonzero(due)):
                row = int(rows[j])
                self.dwelt[r, row] = True
                emit(int(j), "zone_dwell", self.names[r], float(self.entered[r, row]), float(self.dwell_s[r, 0]))

    def release(self, row: int, track_id: int, emit: Emitter, reason: str) -> None:
        """A track is gone (lost, stream ended): it leaves the zones it was in. `emit` holds its last sighting."""
        for r in np.flatnonzero(self.state[:, row] == INSIDE):
            self._exit(int(r), -1, track_id, row, emit, reason, None)
        self.state[:, row], self.dwelt[:, row], self.raw[:, row] = UNKNOWN, False, UNKNOWN

    def _exit(self, r: int, i: int, track_id: int, row: int, emit: Emitter, reason: str,
              exited_pts: float | None) -> None:
        inside = self.inside[r]
        label = inside.pop(track_id, None) or emit.label(i)
        self.exits[r][label] += 1
        emit(i, "zone_exit", self.names[r], float(self.entered[r, row]), exited_pts, reason)
        emit(i, "zone_occupancy", self.names[r], len(inside), len(inside) + 1, self.configs[r].max_objects)

    def overcrowded(self, r: int) -> bool:
        limit = self.configs[r].max_objects
        return limit is not None and len(self.inside[r]) > limit

    def counts(self) -> dict[str, dict[str, object]]:
        return {c.name: {"occupancy": len(self.inside[r]), "occupancy_by_label": dict(Counter(self.inside[r].values())),
                         "overcrowded": self.overcrowded(r), "max_objects": c.max_objects,
                         "entries": dict(self.entries[r]), "exits": dict(self.exits[r])}
                for r, c in enumerate(self.configs)}
