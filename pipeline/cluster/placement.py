"""Placement: which worker takes a camera. Pure functions, so that the policy is tested without a cluster."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerSlot:
    """A live worker as placement sees it."""

    name: str
    node: str
    capacity: int  # cameras it takes at most


def choose_worker(workers: Iterable[WorkerSlot], load: Mapping[str, int]) -> WorkerSlot | None:
    """The least loaded worker with room (ties: by name, for repeatable placements); None when all are full."""
    candidates = [w for w in workers if load.get(w.name, 0) < w.capacity]
    if not candidates:
        return None
    return min(candidates, key=lambda w: (load.get(w.name, 0) / w.capacity, load.get(w.name, 0), w.name))


def place_all(cameras: Iterable[str], workers: Iterable[WorkerSlot], load: Mapping[str, int]
              ) -> tuple[dict[str, WorkerSlot], list[str]]:
    """Place `cameras` one by one on the least loaded workers. Returns (placed, unplaced); `load` is not changed."""
    pool = list(workers)
    counts = dict(load)
    placed: dict[str, WorkerSlot] = {}
    unplaced: list[str] = []
    for camera in cameras:
        worker = choose_worker(pool, counts)
        if worker is None:
            unplaced.append(camera)
            continue
        placed[camera] = worker
        counts[worker.name] = counts.get(worker.name, 0) + 1
    return placed, unplaced
