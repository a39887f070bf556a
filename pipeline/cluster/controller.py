"""The cluster controller: owns the desired cameras, places them on workers, moves them when a worker is lost.

It runs as a detached, named Ray actor (restarted by Ray when it dies) and keeps everything it knows in Redis
(pipeline/cluster/state.py), so a restarted controller finds the same workers (by name, one per node) and the same
placements, and moves nothing that is healthy. One reconcile loop, every `cluster.reconcile_interval_s`:

1. Nodes: Ray's view of the cluster (`ray.nodes()`): a node is lost when Ray's health checks declare it dead.
2. Workers: one detached actor per live node that has the worker resource, pinned to it; polled for status.
   A worker whose actor died (RayActorError) or whose node is dead is lost.
3. Placement: cameras of lost workers move to the least loaded live workers with room (`camera_moved`), new ones are
   placed the same way (`camera_assigned`), those that fit nowhere are `unplaced` until a worker has room. Each
   placement takes a new epoch, written to `<prefix>:owner:<camera>` before the worker is told: the old owner is
   fenced from that moment.
4. Workers are told what to run; a worker running a camera under another epoch is told to stop it. Files that a
   worker processed to their end are marked done.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.cluster.placement import WorkerSlot, choose_worker
from pipeline.cluster.state import ClusterState, Placement
from pipeline.cluster.worker import ClusterWorker, redis_client
from pipeline.config import CameraConfig, PipelineConfig
from pipeline.events.contract import (
    camera_assigned_event, camera_moved_event, camera_unplaced_event, events_key,
)
from pipeline.runner import source_spec

log = logging.getLogger(__name__)

CONTROLLER_NAME = "rpn-controller"


def worker_name(node_id: str) -> str:
    return f"rpn-worker-{node_id[:12]}"


@dataclass
class _Worker:
    handle: Any
    node: str
    status: dict[str, Any] | None = None  # the last answer; None until the worker is ready
    last_seen: float = 0.0
    pending: Any = None  # the status call in flight
    asked_at: float = 0.0
    created_at: float = field(default_factory=time.monotonic)


@dataclass
class _Counters:
    failovers: int = 0  # cameras moved off lost workers
    moves_by_reason: dict[str, int] = field(default_factory=dict)  # node_died / worker_died -> cameras moved
    workers_lost: int = 0
    placements: int = 0
    unplaced_events: int = 0
    moved: dict[str, float] = field(default_factory=dict)  # camera -> time.time() it was moved (failover metrics)


class ClusterController:
    """See the module docstring. Run it as a Ray actor: `ray.remote(ClusterController)`."""

    def __init__(self, config: PipelineConfig, serve_api: bool = True) -> None:
        self.config = config
        self.cc = config.cluster
        self.prefix = config.redis.prefix
        self.client = redis_client(config)
        self.state = ClusterState(self.client, self.prefix)
        self.workers: dict[str, _Worker] = {}
        self.counters = _Counters()
        self._unplaced_reported: set[str] = set()
        self._started: dict[str, tuple[int, float]] = {}  # camera -> (epoch, time it was last sent to its worker)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.started_at = time.time()
        self._ticks = 0
        self.server = None
        if serve_api and config.server.enabled:
            from pipeline.cluster.api import start_cluster_api

            self.server = start_cluster_api(self, config.server)
            log.info("cluster HTTP API on %s", self.server.url)
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()

    # --- the API of the actor ----------------------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        return {"api": self.server.url if self.server else None, "started_at": self.started_at, "pid": os.getpid()}

    def add_camera(self, camera: CameraConfig) -> bool:
        """Want `camera` running; False if its name is taken. It is placed at the next reconcile."""
        with self._lock:
            return self.state.add_desired(camera)

    def remove_camera(self, name: str) -> bool:
        """Stop `camera` wherever it runs and forget it; False if unknown."""
        with self._lock:
            if name not in self.state.desired():
                return False
            placement = self.state.placements().get(name)
            worker = self.workers.get(placement.worker) if placement else None
            if worker is not None:
                try:
                    ray.get(worker.handle.stop_camera.remote(name), timeout=15)
                except (RayActorError, GetTimeoutError) as exc:
                    log.warning("removing %s: its worker %s did not answer (%s); fenced anyway", name,
                                placement.worker, exc)  # type: ignore[union-attr]
            self.state.remove_desired(name)  # deletes the owner key: whatever still runs it is fenced
            self._started.pop(name, None)
            self._unplaced_reported.discard(name)
            return True

    def reconcile_now(self) -> None:
        self._reconcile()

    def cameras(self) -> list[dict[str, Any]]:
        """Every wanted camera: where it runs (worker, node, epoch) and its counters there."""
        with self._lock:
            desired, placements, done = self.state.desired(), self.state.placements(), self.state.done()
            out = []
            for name, camera in desired.items():
                p = placements.get(name)
                w = self.workers.get(p.worker) if p else None
                stats = ((w.status or {}).get("cameras", {}).get(name) if w else None) or done.get(name) or {}
                out.append({
                    "name": name, "url": _redacted(camera.url),
                    "placement": "done" if name in done else "placed" if p else "unplaced",
                    "worker": p.worker if p else stats.get("worker"), "node": p.node if p else stats.get("node"),
                    "epoch": p.epoch if p else stats.get("epoch"), "state": stats.get("state"),
                    **{k: stats.get(k) for k in ("decoded", "published", "dropped", "drop_reasons", "objects",
                                                  "error")},
                })
            return out

    def cluster(self) -> dict[str, Any]:
        """Workers with their node, load and health; counters of placements and failovers."""
        with self._lock:
            placements = self.state.placements()
            now = time.time()
            workers = []
            for name, w in sorted(self.workers.items()):
                load = sum(1 for p in placements.values() if p.worker == name)
                status = w.status or {}
                workers.append({"name": name, "node": w.node, "ready": w.status is not None,
                                "backend": status.get("backend"), "gpus": status.get("gpus"),
                                "healthy": w.status is not None and now - w.last_seen < self.cc.worker_timeout_s,
                                "cameras": load, "capacity": self.cc.max_cameras_per_worker,
                                "seconds_since_seen": round(now - w.last_seen, 2) if w.last_seen else None})
            desired = self.state.desired()
            done = self.state.done()
            return {"workers": workers, "cameras": len(desired), "placed": len(placements), "done": len(done),
                    "unplaced": sorted(set(desired) - set(placements) - set(done)),
                    "failovers": self.counters.failovers, "moves_by_reason": dict(self.counters.moves_by_reason),
                    "workers_lost": self.counters.workers_lost,
                    "placements": self.counters.placements, "controller_started_at": self.started_at}

    def worker_metrics(self, name: str) -> bytes | None:
        w = self.workers.get(name)
        if w is None:
            return None
        return ray.get(w.handle.metrics.remote(), timeout=10)  # type: ignore[no-any-return]

    def stop(self, stop_workers: bool = True) -> dict[str, Any]:
        """Stop reconciling; with `stop_workers`, drain and stop every worker and return their final status."""
        self._stop.set()
        self._thread.join(10)
        final: dict[str, Any] = {}
        if stop_workers:
            calls = {name: w.handle.shutdown.remote() for name, w in self.workers.items()}
            for name, ref in calls.items():
                try:
                    final[name] = ray.get(ref, timeout=30)
                except (RayActorError, GetTimeoutError):
                    final[name] = None
                try:
                    ray.kill(self.workers[name].handle)
                except (RayActorError, ValueError):
                    pass
        if self.server is not None:
            self.server.stop()
        return final

    # --- the reconcile loop ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.cc.reconcile_interval_s):
            try:
                self._reconcile()
            except Exception:  # one bad round (Redis away) must not end the controller
                log.exception("reconcile failed; retrying")

    def _reconcile(self) -> None:
        with self._lock:
            self._ticks += 1
            lost = self._refresh_workers()
            self._poll()
            self._place(lost)
            self._sync_workers()

    def _refresh_workers(self) -> dict[str, str]:
        """Create a worker per live worker node; drop workers Ray declared lost. Returns {lost worker: reason}."""
        resource = self.cc.worker_resource
        # The worker claims every GPU of its node: Ray then accounts them to it (no other GPU task lands there) and
        # pins CUDA_VISIBLE_DEVICES to them. Unclaimed, the GPUs are visible or not depending on Ray's version
        # (older releases and RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO hide them from actors that claim none).
        gpus = {n["NodeID"]: int(n["Resources"].get("GPU", 0)) for n in ray.nodes()
                if n["Alive"] and n["Resources"].get(resource, 0) > 0}
        alive = set(gpus)
        lost: dict[str, str] = {}
        for name, w in list(self.workers.items()):
            if w.node not in alive:
                lost[name] = "node_died"
        for node in alive:
            name = worker_name(node)
            if name in self.workers:
                continue
            handle = ray.remote(ClusterWorker).options(
                name=name, namespace=self.cc.namespace, lifetime="detached", get_if_exists=True,
                num_cpus=0, num_gpus=gpus[node], resources={resource: 1}, max_restarts=0, max_concurrency=8,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            ).remote(self.config, name, node)
            self.workers[name] = _Worker(handle, node)
            log.info("worker %s on node %s (%d GPUs)", name, node, gpus[node])
        for name in lost:
            self._forget_worker(name)
        return lost

    def _forget_worker(self, name: str) -> None:
        w = self.workers.pop(name, None)
        if w is None:
            return
        self.counters.workers_lost += 1
        try:
            ray.kill(w.handle)  # a worker cut off but alive must stop; it is fenced either way
        except (RayActorError, ValueError):
            pass

    def _poll(self) -> None:
        """Collect status answers; ask again. A worker whose actor died is dropped (lost: worker_died)."""
        now = time.monotonic()
        for name, w in list(self.workers.items()):
            if w.pending is not None:
                ready, _ = ray.wait([w.pending], timeout=0)
                if not ready:
                    continue
                try:
                    w.status = ray.get(w.pending)
                    w.last_seen = time.time()
                except RayActorError as exc:
                    log.warning("worker %s died: %s", name, str(exc).splitlines()[0] if str(exc) else exc)
                    self._forget_worker(name)
                    continue
                except Exception:  # noqa: BLE001 - a failing status call: keep the worker, ask again
                    log.exception("worker %s: status failed", name)
                w.pending = None
            if w.pending is None:
                w.pending = w.handle.status.remote()
                w.asked_at = now

    def _place(self, lost: dict[str, str]) -> None:
        desired = self.state.desired()
        placements = self.state.placements()
        done = self.state.done()
        for name in set(placements) - set(desired):
            self.state.unassign(name)  # left over from a removal half done
            placements.pop(name)
        ready = {n: w for n, w in self.workers.items() if w.status is not None}
        slots = [WorkerSlot(n, w.node, self.cc.max_cameras_per_worker) for n, w in sorted(ready.items())]
        load: dict[str, int] = {}
        orphans: list[tuple[str, Placement, str]] = []
        for name, p in placements.items():
            if p.worker in self.workers:
                load[p.worker] = load.get(p.worker, 0) + 1
            else:
                orphans.append((name, p, lost.get(p.worker, "worker_died")))
        now = time.time()
        # New cameras wait (up to a minute) for workers still loading their engine, so that they spread over all.
        starting = any(w.status is None and time.monotonic() - w.created_at < 60 for w in self.workers.values())
        for name, old, reason in sorted(orphans):
            slot = choose_worker(slots, load)
            camera = desired[name]
            if slot is None:
                self.state.unassign(name)
                self._report_unplaced(name, "no live worker has room")
                continue
            resume = source_spec(camera, self.config).is_file and not camera.realtime
            new = self.state.assign(name, slot.name, slot.node, resume=resume)
            load[slot.name] = load.get(slot.name, 0) + 1
            self.counters.failovers += 1
            self.counters.moves_by_reason[reason] = self.counters.moves_by_reason.get(reason, 0) + 1
            self.counters.placements += 1
            self.counters.moved[name] = now
            self._event(camera_moved_event(name, slot.name, slot.node, reason, new.epoch, old.worker, old.node, now))
            log.info("camera %s moved %s -> %s (%s, epoch %d)", name, old.worker, slot.name, reason, new.epoch)
        for name in sorted(set(desired) - set(placements) - set(done)):
            if starting:
                break
            slot = choose_worker(slots, load)
            if slot is None:
                self._report_unplaced(name, "every worker is full" if slots else "no live worker")
                continue
            new = self.state.assign(name, slot.name, slot.node)
            load[slot.name] = load.get(slot.name, 0) + 1
            self.counters.placements += 1
            reason = "capacity" if name in self._unplaced_reported else "new"
            self._unplaced_reported.discard(name)
            self._event(camera_assigned_event(name, slot.name, slot.node, reason, new.epoch, now))
            log.info("camera %s placed on %s (%s, epoch %d)", name, slot.name, reason, new.epoch)

    def _report_unplaced(self, name: str, reason: str) -> None:
        if name in self._unplaced_reported:
            return
        self._unplaced_reported.add(name)
        self.counters.unplaced_events += 1
        self._event(camera_unplaced_event(name, reason, time.time()))
        log.warning("camera %s unplaced: %s", name, reason)

    def _sync_workers(self) -> None:
        """Tell each ready worker what to run: start what is placed there, stop what is not, collect done files."""
        desired = self.state.desired()
        placements = self.state.placements()
        now = time.monotonic()
        for wname, w in self.workers.items():
            if w.status is None:
                continue
            running: dict[str, Any] = w.status["cameras"]
            for name, p in placements.items():
                if p.worker != wname:
                    continue
                have = running.get(name)
                if have is not None and have["epoch"] == p.epoch:
                    if have["drained"] and source_spec(desired[name], self.config).is_file:
                        self.state.finish(name, {**have, "worker": wname, "node": w.node})
                        w.handle.stop_camera.remote(name)
                        log.info("file %s %s on %s", name, have["state"], wname)
                    continue
                sent = self._started.get(name)
                if sent is not None and sent[0] == p.epoch and now - sent[1] < 10:
                    continue  # asked already; its next status will show it
                self._started[name] = (p.epoch, now)
                w.handle.start_camera.remote(desired[name], p.epoch, p.resume)
            for name, have in running.items():
                p = placements.get(name)
                mine = p is not None and p.worker == wname and p.epoch == have["epoch"]
                if not mine and have["epoch"] is not None:
                    log.info("worker %s still runs %s under epoch %s: stopping it", wname, name, have["epoch"])
                    w.handle.stop_camera.remote(name)

    def _event(self, fields: dict[str, str]) -> None:
        # A shared stream: Redis assigns the id, so the controller never conflicts with the workers' writers.
        self.client.xadd(events_key(self.prefix), fields, maxlen=self.config.redis.maxlen, approximate=True)


def _redacted(url: str) -> str:
    from pipeline.sources.urls import redact_url

    return redact_url(url)
