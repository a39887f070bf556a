"""The cluster's state, kept in Redis so that a restarted controller takes over where the last one stopped.

Keys (all under the run's prefix):
- `<prefix>:cluster:desired`   hash camera -> CameraConfig JSON: the cameras the user wants running.
- `<prefix>:cluster:placement` hash camera -> {"worker", "node", "epoch", "resume"} JSON: where each one runs.
- `<prefix>:cluster:done`      hash camera -> {"state", "worker", "node", counters} JSON of a file processed to its end.
- `<prefix>:cluster:epoch`     counter: every placement takes the next value.
- `<prefix>:owner:<camera>`    the epoch of the camera's placement; the publisher's writes are fenced with it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import redis

from pipeline.config import CameraConfig
from pipeline.events.contract import owner_key


@dataclass(frozen=True)
class Placement:
    worker: str
    node: str
    epoch: int
    resume: bool = False  # a file taken over from a lost worker: continue after its last published frame


class ClusterState:
    """Desired cameras, placements and epochs in Redis (one controller writes; workers only read owner keys)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.desired_key = f"{prefix}:cluster:desired"
        self.placement_key = f"{prefix}:cluster:placement"
        self.done_key = f"{prefix}:cluster:done"
        self.epoch_key = f"{prefix}:cluster:epoch"

    def desired(self) -> dict[str, CameraConfig]:
        raw = self.client.hgetall(self.desired_key)
        return {_s(k): CameraConfig.model_validate_json(v) for k, v in raw.items()}

    def add_desired(self, camera: CameraConfig) -> bool:
        """False if a camera of that name is already wanted."""
        return bool(self.client.hsetnx(self.desired_key, camera.name, camera.model_dump_json()))

    def remove_desired(self, name: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.desired_key, name)
        pipe.hdel(self.placement_key, name)
        pipe.hdel(self.done_key, name)
        pipe.delete(owner_key(self.prefix, name))  # fences whoever still runs it
        pipe.execute()

    def placements(self) -> dict[str, Placement]:
        raw = self.client.hgetall(self.placement_key)
        return {_s(k): Placement(**json.loads(v)) for k, v in raw.items()}

    def done(self) -> dict[str, dict[str, Any]]:
        return {_s(k): json.loads(v) for k, v in self.client.hgetall(self.done_key).items()}

    def assign(self, camera: str, worker: str, node: str, resume: bool = False) -> Placement:
        """A new placement with the next epoch; the owner key moves to it first, so the old owner is fenced."""
        epoch = int(self.client.incr(self.epoch_key))
        placement = Placement(worker, node, epoch, resume)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(owner_key(self.prefix, camera), str(epoch))
        pipe.hset(self.placement_key, camera, json.dumps(asdict(placement)))
        pipe.execute()
        return placement

    def unassign(self, camera: str) -> None:
        """Take a camera off its worker (fencing it) and leave it unplaced."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.placement_key, camera)
        pipe.delete(owner_key(self.prefix, camera))
        pipe.execute()

    def finish(self, camera: str, final: dict[str, Any]) -> None:
        """A file processed to its end (`final`: its state, worker and counters there): it leaves the placements
        and is not placed again."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.done_key, camera, json.dumps(final))
        pipe.hdel(self.placement_key, camera)
        pipe.delete(owner_key(self.prefix, camera))
        pipe.execute()

    def clear(self) -> None:
        """Forget every camera (a new `run --cluster` with a fresh config)."""
        names = list(self.desired()) + list(self.placements())
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.desired_key, self.placement_key, self.done_key)
        for name in names:
            pipe.delete(owner_key(self.prefix, name))
        pipe.execute()


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
