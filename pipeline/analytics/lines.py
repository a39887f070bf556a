"""Counting lines: objects crossing a segment, in either named direction."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from pipeline.analytics.objects import Emitter, FrameObjects, Selection
from pipeline.config import LineConfig


class Lines:
    """All lines of one camera: per line and track, the confirmed side (with hysteresis), and in/out totals.

    A track's side is confirmed only once its reference point is further from the line than the dead band
    (`hysteresis` x the box height). A crossing is counted when the confirmed side flips and the path between the
    two sightings around the sign change passes through the segment (not beyond its ends); its time (`cross_pts`)
    is interpolated between those sightings. Jitter within the band flips nothing, so it counts nothing.
    Crossing from the left of points[0] -> points[1] (as seen on the image) to its right is `in`.
    """

    def __init__(self, configs: Sequence[LineConfig], label_names: Sequence[str], capacity: int) -> None:
        self.configs = list(configs)
        self.names = [c.name for c in configs]
        self.select = Selection(configs, label_names)
        r = len(configs)
        self.side = np.zeros((r, capacity), np.int8)  # confirmed side: 1 right of A->B, -1 left, 0 not yet
        self.prev = np.full((4, r, capacity), np.nan)  # last sighting: signed distance, x, y, pts
        self.zero = np.full((2, r, capacity), np.nan)  # the latest sign change: interpolated pts, position along
        self.totals: list[Counter[tuple[str, str]]] = [Counter() for _ in configs]  # (in|out, label)
        self.points = np.zeros((r, 2, 2))

    def adopt(self, old: Lines) -> None:
        """Keep the state and totals of lines whose definition did not change."""
        for r, c in enumerate(self.configs):
            if c.name in old.names and old.configs[k := old.names.index(c.name)] == c:
                self.side[r], self.prev[:, r], self.zero[:, r] = old.side[k], old.prev[:, k], old.zero[:, k]
                self.totals[r] = old.totals[k]

    def resize(self, width: int, height: int) -> None:
        self.points = np.array([c.pixel_points(width, height) for c in self.configs], np.float64).reshape(-1, 2, 2)
        a, u = self.points[:, 0, :, None], self.points[:, 1, :, None] - self.points[:, 0, :, None]  # [R, 2, 1]
        self._len = np.hypot(u[:, 0], u[:, 1])  # [R, 1]
        self._ax, self._ay = a[:, 0], a[:, 1]
        self._nx, self._ny = u[:, 0] / self._len, u[:, 1] / self._len  # unit direction

    def grow(self, capacity: int) -> None:
        n = capacity - self.side.shape[1]
        self.side = np.concatenate([self.side, np.zeros((len(self.configs), n), np.int8)], axis=1)
        self.prev = np.concatenate([self.prev, np.full((4, len(self.configs), n), np.nan)], axis=2)
        self.zero = np.concatenate([self.zero, np.full((2, len(self.configs), n), np.nan)], axis=2)

    def update(self, obj: FrameObjects, emit: Emitter) -> None:
        if not self.configs or not len(obj.ids):
            return
        rows = obj.rows
        keep = None if self.select.trivial else self.select.mask(obj)
        x, y = self.select.points(obj)
        d = self._nx * (y - self._ay) - self._ny * (x - self._ax)  # [R, N] signed distance; > 0: right of A->B
        prev = self.prev[:, :, rows]  # [4, R, N]
        pd = prev[0]
        flip = ((pd < 0) != (d < 0)) & (pd == pd)  # a sign change since the last sighting (NaN: none yet)
        if keep is not None:
            flip &= keep
        if flip.any():
            r, j = np.nonzero(flip)
            pd, px, py, pp = prev[:, r, j]
            f = pd / (pd - d[r, j])
            xr = r if len(x) > 1 else np.zeros_like(r)  # points may be one row for all lines
            zx, zy = px + f * (x[xr, j] - px), py + f * (y[xr, j] - py)
            u = ((zx - self._ax[r, 0]) * self._nx[r, 0] + (zy - self._ay[r, 0]) * self._ny[r, 0]) / self._len[r, 0]
            self.zero[0, r, rows[j]], self.zero[1, r, rows[j]] = pp + f * (obj.pts - pp), u
        band = self.select.band(obj)
        now = (d > band).astype(np.int8) - (d < -band)
        if keep is not None:
            now *= keep
        before = self.side[:, rows]
        crossed = now * before == -1  # the confirmed side flipped (the latest sign change was the crossing)
        if crossed.any():
            for r, j in zip(*np.nonzero(crossed)):
                cross_pts, u = self.zero[:, r, rows[j]]
                if 0.0 <= u <= 1.0:  # the path met the segment, not the line beyond its ends
                    direction = "in" if now[r, j] > 0 else "out"
                    c = self.configs[r]
                    self.totals[r][(direction, emit.label(int(j)))] += 1
                    emit(int(j), "line_cross", c.name, direction, c.in_name if direction == "in" else c.out_name,
                         float(cross_pts))
        self.side[:, rows] = np.where(now != 0, now, before)
        seen = np.empty_like(prev)
        seen[0], seen[1], seen[2], seen[3] = d, x, y, obj.pts
        self.prev[:, :, rows] = seen if keep is None else np.where(keep, seen, prev)

    def release(self, row: int, track_id: int, emit: Emitter, reason: str) -> None:
        self.side[:, row] = 0
        self.prev[:, :, row] = np.nan
        self.zero[:, :, row] = np.nan

    def counts(self) -> dict[str, dict[str, object]]:
        out = {}
        for c, totals in zip(self.configs, self.totals):
            by: dict[str, dict[str, int]] = {"in": {}, "out": {}}
            for (direction, label), n in totals.items():
                by[direction][label] = n
            out[c.name] = {"in": sum(by["in"].values()), "out": sum(by["out"].values()), "in_name": c.in_name,
                           "out_name": c.out_name, "in_by_label": by["in"], "out_by_label": by["out"]}
        return out
