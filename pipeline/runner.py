"""Assembles the stages from a config and runs them: source -> batcher -> detector -> tracker -> publisher."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field

import redis

from engines.base import Detector
from pipeline.batcher import Batcher
from pipeline.config import CameraConfig, PipelineConfig
from pipeline.detector import DetectorStage
from pipeline.frame import END
from pipeline.publisher import PublisherStage
from pipeline.source import SourceSpec, VideoSource
from pipeline.stage import Channel, RunContext, Stage
from pipeline.tracker import TrackerStage

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    elapsed_s: float
    streams: dict[str, dict[str, object]]
    stages: dict[str, dict[str, float]]
    stage_errors: dict[str, int] = field(default_factory=dict)
    stop_requested: bool = False

    @property
    def failed_streams(self) -> list[str]:
        return [name for name, s in self.streams.items() if s["state"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed_streams and not self.stage_errors

    @property
    def published(self) -> int:
        return sum(int(s["published"]) for s in self.streams.values())  # type: ignore[call-overload]

    @property
    def objects(self) -> int:
        return sum(int(s["objects"]) for s in self.streams.values())  # type: ignore[call-overload]

    @property
    def fps(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update(ok=self.ok, published=self.published, objects=self.objects, fps=round(self.fps, 2))
        return out


class Pipeline:
    """One run over a set of sources. Ends by itself when every source has ended, or on `request_stop`."""

    def __init__(self, config: PipelineConfig, detector: Detector, client: redis.Redis) -> None:
        self.config = config
        self.ctx = RunContext()
        size = config.runtime.queue_size
        frames: Channel[object] = Channel("frames", size)
        batches: Channel[object] = Channel("batches", 2)
        detected: Channel[object] = Channel("detected", size)
        tracked: Channel[object] = Channel("tracked", size)
        self.frames = frames
        self.stages: list[Stage] = [
            Batcher(frames, batches, self.ctx, config.batching.max_batch, config.batching.max_delay_ms),
            DetectorStage(batches, detected, self.ctx, detector),
            TrackerStage(detected, tracked, self.ctx),
            PublisherStage(tracked, self.ctx, client, detector.label_names, config.redis.prefix, config.redis.maxlen),
        ]
        self.sources: dict[str, VideoSource] = {}
        self._lock = threading.Lock()
        self._all_added = False
        self._ended = False
        self._started_at = 0.0
        self._stop_requested = False

    def start(self) -> None:
        self._started_at = time.monotonic()
        for stage in self.stages:
            stage.start()
        for camera in self.config.cameras:
            self.add_source(camera)
        with self._lock:
            self._all_added = True
        self._end_if_idle()

    def add_source(self, camera: CameraConfig) -> None:
        spec = SourceSpec(camera.name, camera.url, dict(camera.options), camera.open_timeout_s, camera.read_timeout_s)
        source = VideoSource(spec, self.frames, self.ctx, on_finished=self._on_source_finished)
        with self._lock:
            if camera.name in self.sources:
                raise ValueError(f"camera {camera.name!r} already exists")
            self.sources[camera.name] = source
        source.start()

    def _on_source_finished(self, source: VideoSource) -> None:
        with self._lock:
            self.sources.pop(source.spec.name, None)
        self._end_if_idle()

    def _end_if_idle(self) -> None:
        with self._lock:
            if self._ended or not self._all_added or self.sources:
                return
            self._ended = True
        self.frames.put(END)

    def request_stop(self) -> None:
        """Stop reading sources, let in-flight frames drain, and drop what is left after the drain timeout."""
        if self._stop_requested:
            return
        self._stop_requested = True
        log.info("stop requested: draining in-flight frames (at most %.1f s)", self.config.runtime.drain_timeout_s)
        self.ctx.stop.set()
        timer = threading.Timer(self.config.runtime.drain_timeout_s, self._force_end)
        timer.daemon = True
        timer.start()

    def _force_end(self) -> None:
        self.ctx.discard.set()
        with self._lock:
            stuck = list(self.sources)
            if self._ended:
                return
            self._ended = True
        if stuck:
            log.warning("sources still busy after the drain timeout, abandoned: %s", ", ".join(stuck))
        self.frames.put(END)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end; True when it has."""
        self.stages[-1].join(timeout)
        return not self.stages[-1].is_alive()

    @property
    def running(self) -> bool:
        return self.stages[-1].is_alive()

    def report(self) -> RunReport:
        return RunReport(
            elapsed_s=round(time.monotonic() - self._started_at, 3),
            streams=self.ctx.snapshot(),
            stages={s.name: {k: round(v, 4) for k, v in asdict(s.counters).items()} for s in self.stages},
            stage_errors=dict(self.ctx.stage_errors),
            stop_requested=self._stop_requested,
        )
