"""A cluster worker: today's local pipeline (decode -> batch -> engine -> track -> publish) for the cameras placed on
its node. Frames never leave the node; entries go to the shared Redis under the same keys and schema as a local run.

The controller runs one `ClusterWorker` per worker node as a detached Ray actor (`ray.remote(ClusterWorker)`); the
class itself knows nothing of Ray, so it also runs in a plain process (the fencing test does that).
Every entry of a camera is fenced with the epoch of the placement the worker was given: once the controller has
moved the camera elsewhere (a new epoch in `<prefix>:owner:<camera>`), this worker's writes are refused and counted
under "fenced: placement revoked", even if it never heard of the move.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis

from engines import Detector
from pipeline.config import CameraConfig, PipelineConfig
from pipeline.events.bus import last_published_frame
from pipeline.events.contract import owner_key
from pipeline.runner import Pipeline, create_pipeline_detector, source_spec

log = logging.getLogger(__name__)

REVOKED = "revoked"  # the token of a camera this worker no longer holds: no owner key ever has it


def redis_client(config: PipelineConfig) -> redis.Redis:
    """A client of the shared Redis named by `config.redis.url` (cluster mode has no embedded server per node)."""
    if not config.redis.url:
        raise ValueError("cluster mode needs redis.url: every node publishes to the same Redis")
    return redis.Redis.from_url(config.redis.url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
                                **config.redis.client_options())


class ClusterWorker:
    """The pipeline of one worker node, driven by the controller through `start_camera` / `stop_camera`."""

    def __init__(self, config: PipelineConfig, name: str, node: str, detector: Detector | None = None) -> None:
        self.name = name
        self.node = node
        self.config = config.model_copy(update={"cameras": []})
        self.prefix = config.redis.prefix
        self.client = redis_client(config)
        self.detector = detector or create_pipeline_detector(config)
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()
        self.pipeline = Pipeline(self.config, self.detector, self.client, until_sources_end=False, fence=self._fence,
                                 redis_where=f"Redis (worker {name})")
        self.pipeline.start()
        self.started_at = time.time()
        log.info("worker %s on node %s ready", name, node)

    def _fence(self, key: str, fields: dict[str, str]) -> tuple[str, str] | None:
        camera = fields.get("camera")
        if camera is None:
            return None
        with self._lock:
            epoch = self._epochs.get(camera)
        return owner_key(self.prefix, camera), str(epoch) if epoch is not None else REVOKED

    def start_camera(self, camera: CameraConfig, epoch: int, resume: bool = False) -> bool:
        """Run `camera` under placement `epoch` (idempotent). `resume`: a file continues after the last frame that
        its stream holds. False when it cannot start (the pipeline is stopping)."""
        with self._lock:
            current = self._epochs.get(camera.name)
        if current == epoch and self.pipeline.is_running(camera.name):
            return True
        if camera.name in self.pipeline.listed_cameras():
            self.pipeline.remove_source(camera.name)  # an older placement, or a finished file run again
        start_after = None
        if resume and source_spec(camera, self.config).is_file:
            start_after = last_published_frame(self.client, self.prefix, camera.name)
            log.info("worker %s: resuming %s after frame %s", self.name, camera.name, start_after)
        with self._lock:
            self._epochs[camera.name] = epoch
        try:
            self.pipeline.add_source(camera, start_after=start_after)
        except (ValueError, RuntimeError) as exc:
            log.error("worker %s: cannot start %s: %s", self.name, camera.name, exc)
            return False
        return True

    def stop_camera(self, name: str) -> bool:
        """Stop a camera (or forget a finished file) and give up its placement."""
        stopped = self.pipeline.remove_source(name)
        with self._lock:
            self._epochs.pop(name, None)
        return stopped

    def status(self) -> dict[str, Any]:
        """Cameras with their epoch and counters; `drained` once every decoded frame is published or dropped."""
        cameras: dict[str, Any] = {}
        with self._lock:
            epochs = dict(self._epochs)
        for name, stats in self.pipeline.camera_stats().items():
            running = self.pipeline.is_running(name)
            cameras[name] = {
                "epoch": epochs.get(name), "state": stats.state, "running": running,
                "drained": not running and stats.decoded == stats.published + stats.dropped,
                "decoded": stats.decoded, "published": stats.published, "dropped": stats.dropped,
                "drop_reasons": dict(stats.drop_reasons), "objects": stats.objects, "error": stats.error,
            }
        pub = self.pipeline.publisher_stats()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # set by Ray from the GPUs the worker claims
        return {"name": self.name, "node": self.node, "pid": os.getpid(), "cameras": cameras,
                "started_at": self.started_at, "backend": self.detector.backend,
                "gpus": [g for g in visible.split(",") if g] if visible is not None else None,
                "redis_connected": pub.connected, "buffered_entries": pub.buffered_entries,
                "dropped_by_reason": self.pipeline.outbox.dropped_by_reason()}

    def metrics(self) -> bytes:
        """This worker's Prometheus exposition (the controller's /metrics/workers/<name> serves it)."""
        return self.pipeline.metrics.exposition()[0]

    def ping(self) -> str:
        return self.name

    def shutdown(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop every camera, drain, and return the final status."""
        self.pipeline.request_stop()
        self.pipeline.wait(timeout)
        final = self.status()
        self.detector.close()
        self.client.close()
        return final
