"""Assembles the stages from a config and runs them: source -> batcher -> detector -> tracker -> publisher.

Sources can be added and removed while the pipeline runs (`add_source`, `remove_source`, `reload`); a removed
source's thread ends and its queue, tracker state and connection are released.

A view stage between tracker and publisher keeps each camera's latest frame for the HTTP server's live view
(pipeline/view.py) and, with `annotated_dir`, feeds the annotated video writer. Metrics: `self.metrics`.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from engines import create_detector
from engines.base import Detector
from pipeline.analytics import AnalyticsStage
from pipeline.monitor.annotate import AnnotatedVideoWriter
from pipeline.inference.batcher import Batcher, CameraQueues
from pipeline.config import AnalyticsConfig, CameraConfig, ConfigError, PipelineConfig, check_labels
from pipeline.inference.detector import DetectionFilter, DetectorStage
from pipeline.events.contract import camera_state_event
from pipeline.monitor.metrics import PipelineMetrics
from pipeline.events.publisher import EventPublisher, PublisherStage, PublisherStats, make_outbox
from pipeline.sources.decoder import Backoff, SourceSpec, VideoSource
from pipeline.stage import Channel, RunContext, Stage, StreamStats
from pipeline.tracker.stage import ByteTracker, TrackerStage, engine_score_threshold
from pipeline.monitor.view import LiveView, ViewStage

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    elapsed_s: float
    streams: dict[str, dict[str, object]]
    stages: dict[str, dict[str, float]]
    stage_errors: dict[str, int] = field(default_factory=dict)
    stop_requested: bool = False
    publisher: dict[str, object] = field(default_factory=dict)  # PublisherStats, and entries dropped by reason

    @property
    def failed_streams(self) -> list[str]:
        """Sources that failed for good, and cameras that never delivered a frame."""
        return [
            name for name, s in self.streams.items()
            if s["state"] == "failed" or (s["error"] and not s["decoded"])
        ]

    @property
    def undelivered(self) -> int:
        """Entries (frames and events) that never reached Redis because the run ended before Redis was back."""
        reasons: dict[str, int] = self.publisher.get("dropped_by_reason", {})  # type: ignore[assignment]
        return sum(n for reason, n in reasons.items() if reason.startswith("undelivered at shutdown"))

    @property
    def ok(self) -> bool:
        return not self.failed_streams and not self.stage_errors and not self.undelivered

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
        out.update(ok=self.ok, published=self.published, objects=self.objects, fps=round(self.fps, 2),
                   undelivered=self.undelivered)
        return out


def source_spec(camera: CameraConfig, config: PipelineConfig, start_after: int | None = None) -> SourceSpec:
    r = config.runtime.reconnect
    return SourceSpec(
        camera.name, camera.url, dict(camera.options), camera.transport, camera.open_timeout_s, camera.read_timeout_s,
        camera.realtime, camera.max_fps, Backoff(r.initial_s, r.max_s, r.jitter, r.healthy_s), camera.format,
        start_after, skip_frames=camera.skip_frames,
    )



def decoder_frame_size(detector: Detector, width: int, height: int) -> tuple[int, int] | None:
    """The size the decoder scales a `width` x `height` frame to for `detector`: the engine's size when it is smaller.
    The decoder scales down, never up (a small camera keeps its own pixels for the live view and annotated video; the
    engine enlarges it as before)."""
    size = detector.frame_size_for(width, height)
    return size if size is not None and size[0] <= width and size[1] <= height else None


def create_pipeline_detector(config: PipelineConfig) -> Detector:
    """The engine a pipeline runs with `config`: it keeps detections down to the tracker's low threshold, and the
    tracker stage passes on only those at or above `engine.score_threshold`."""
    e = config.engine
    return create_detector(e.backend, e.arch, e.weights, engine_score_threshold(e.score_threshold), e.threads,
                           e.device, e.frame_size, max_batch=config.batching.max_batch, precision=e.precision)

class Pipeline:
    """One run over a set of sources.

    With `until_sources_end` (the `run` command) it ends by itself once every source has ended; files end, live
    cameras only when removed or stopped. `request_stop` stops everything, letting in-flight frames drain.
    With `annotated_dir`, every processed frame is also drawn into `<annotated_dir>/<camera>.mp4`.
    """

    def __init__(
        self, config: PipelineConfig, detector: Detector, client: redis.Redis, until_sources_end: bool = True,
        annotated_dir: Path | None = None, redis_where: str | None = None,
        fence: Callable[[str, dict[str, str]], tuple[str, str] | None] | None = None,
        resume_after: dict[str, int] | None = None,
    ) -> None:
        """`client` need not reach Redis yet: entries wait in the publisher's buffer until it does.
        `redis_where` names the server in log lines (a URL without password; default: from the client).
        `fence` (cluster mode) fences each entry by its camera's placement (pipeline/events/outbox.py).
        `resume_after` (`run --resume`): per file camera, the last frame index an earlier run published."""
        keep = DetectionFilter.from_config(config.engine, detector.label_names)  # first: a bad label starts nothing
        self.config = config
        self.detector = detector
        self.ctx = RunContext()
        self.until_sources_end = until_sources_end
        self.resume_after = dict(resume_after or {})
        self.metrics = PipelineMetrics()
        size = config.runtime.queue_size
        self.queues = CameraQueues(self.ctx)
        batches: Channel[object] = Channel("batches", 1)  # the batcher builds a batch when the engine asks
        detected: Channel[object] = Channel("detected", size)
        tracked: Channel[object] = Channel("tracked", size)
        counted: Channel[object] = Channel("counted", size)
        viewed: Channel[object] = Channel("viewed", size)
        # One outbox for frames and events: no stage or source thread waits on Redis, and each stream stays ordered.
        self.outbox = make_outbox(client, config.redis, self.ctx, redis_where, fence)
        self.events = EventPublisher(self.outbox, config.redis.prefix)
        self.publisher = PublisherStage(viewed, self.ctx, self.outbox, detector.label_names, config.redis.prefix,
                                        config.redis.flush_timeout_s)
        self.view = LiveView(detector.label_names)
        self.writer = AnnotatedVideoWriter(annotated_dir, detector.label_names) if annotated_dir else None
        batcher = Batcher(self.queues, batches, self.ctx, config.batching.max_batch, config.batching.max_delay_ms,
                          pull=True)
        self.stages: list[Stage] = [
            batcher,
            DetectorStage(batches, detected, self.ctx, detector, batcher.demand,
                          keep_images="all" if self.writer else "latest", on_batch=self.metrics.observe_batch,
                          keep=keep),
            TrackerStage(detected, tracked, self.ctx, detector.label_names, self.events.publish,
                         publish_threshold=config.engine.score_threshold,
                         new_tracker=lambda: ByteTracker(coast_s=config.tracker.coast_s)),
            AnalyticsStage(tracked, counted, self.ctx, detector.label_names, self.events.publish),
            ViewStage(counted, viewed, self.ctx, self.view, self.writer, self._is_live,
                      self.metrics.frame_age.observe, self._on_stream_drained),
            self.publisher,
        ]
        self.analytics: AnalyticsStage = self.stages[3]  # type: ignore[assignment]
        problems = [f"camera {c.name!r}: {p}" for c in config.cameras for p in check_labels(c, detector.label_names)]
        if problems:
            raise ConfigError("\n".join(problems))
        self.metrics.attach(self)
        self.sources: dict[str, VideoSource] = {}
        self._cameras: dict[str, CameraConfig] = {}
        # Cameras shown by the API and metrics: added and not removed (ended files stay, with their final state).
        self._listed: dict[str, CameraConfig] = {}
        self._live: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._all_added = False
        self._ended = False
        self._started_at = 0.0
        self._stop_requested = False
        self._reloading = False

    def start(self) -> None:
        self._started_at = time.monotonic()
        self.outbox.start()
        if self.writer is not None:
            self.writer.start()
        for stage in self.stages:
            stage.start()
        for camera in self.config.cameras:
            self.add_source(camera, start_after=self.resume_after.get(camera.name))
        with self._lock:
            self._all_added = True
        self._end_if_idle()

    def _fit(self, width: int, height: int) -> tuple[int, int] | None:
        return decoder_frame_size(self.detector, width, height)

    def add_source(self, camera: CameraConfig, start_after: int | None = None) -> None:
        """Start reading a camera or file; its name must not be in use. RuntimeError once the pipeline is ending.

        `start_after` (files): skip the frames up to this index, already published by an earlier run (resume)."""
        # Frames are scaled down to the engine's size as they are decoded (where the engine says which size it wants).
        spec = dataclasses.replace(source_spec(camera, self.config, start_after), fit=self._fit)
        problems = check_labels(camera, self.detector.label_names)
        if problems:
            raise ConfigError(f"camera {camera.name!r}: " + "; ".join(problems))
        with self._lock:
            if camera.name in self.sources:
                raise ValueError(f"camera {camera.name!r} already exists")
            if self._ended or self._stop_requested:
                raise RuntimeError("the pipeline is stopping: no cameras can be added")
            stats = self.ctx.stream(camera.name)  # a name used before keeps its counters, not its old state
            stats.state, stats.error = "starting", None
            capacity = self.config.runtime.live_queue_size if spec.live else self.config.runtime.queue_size
            key = self.queues.open(camera.name, capacity, drop_oldest=spec.live, max_fps=spec.max_fps)
            source = VideoSource(
                spec, lambda item, stop: self.queues.put(key, item, stop), self.ctx,
                on_finished=self._on_source_finished, on_state=self._on_state,
            )
            self.sources[camera.name] = source
            self._cameras[camera.name] = camera
            self._listed[camera.name] = camera
            self._live[camera.name] = spec.live
            self.analytics.configure(camera.name, AnalyticsConfig(zones=camera.zones, lines=camera.lines))
        source.start()

    def remove_source(self, name: str, timeout: float = 10.0) -> bool:
        """Stop a source and wait for its thread to end; False if it is unknown or did not end in time.

        It leaves `listed_cameras`; a source that has already ended (a finished file) is only taken off the list.
        """
        with self._lock:
            source = self.sources.get(name)
            listed = self._listed.pop(name, None) is not None
        if source is None:
            self.view.forget(name)
            self.analytics.forget(name)
            return listed
        source.stop()
        source.join(timeout)
        return not source.is_alive()

    def camera_names(self) -> list[str]:
        """Sources running now."""
        with self._lock:
            return list(self.sources)

    def listed_cameras(self) -> dict[str, CameraConfig]:
        """Cameras added and not removed, running or ended, in the order they were added."""
        with self._lock:
            return dict(self._listed)

    def set_analytics(self, name: str, analytics: AnalyticsConfig) -> None:
        """Replace a listed camera's zones and lines while it runs (from its next frame; no restart).
        KeyError: no such camera; ValueError: a label the detector does not know."""
        problems = check_labels(analytics, self.detector.label_names)
        if problems:
            raise ValueError("; ".join(problems))
        with self._lock:
            camera = self._listed[name].model_copy(update={"zones": analytics.zones, "lines": analytics.lines})
            self._listed[name] = camera
            if name in self._cameras:
                self._cameras[name] = camera
            self.analytics.configure(name, analytics)

    def camera_stats(self) -> dict[str, StreamStats]:
        """Live counters of the listed cameras (the objects the sources update: read, do not modify)."""
        names = self.listed_cameras()
        return {name: self.ctx.stream(name) for name in names}

    def is_running(self, name: str) -> bool:
        with self._lock:
            return name in self.sources

    def _on_stream_drained(self, name: str) -> None:
        """A source's last frame has left the view stage: drop its latest frame if the camera was removed."""
        with self._lock:
            if name in self._listed:
                return
        self.view.forget(name)
        self.analytics.forget(name)

    def _is_live(self, name: str) -> bool:
        with self._lock:
            return self._live.get(name, True)

    def reload(self, config: PipelineConfig) -> tuple[list[str], list[str]]:
        """Apply a new camera list: remove cameras gone or changed, add new or changed ones. Returns (added, removed).

        Engine, batching and Redis settings are fixed for the life of the pipeline; changing them needs a restart.
        """
        for section in ("engine", "batching", "redis", "server"):
            if getattr(config, section) != getattr(self.config, section):
                log.warning("reload: %s settings changed; they take effect at the next start", section)
        new = {c.name: c for c in config.cameras}
        with self._lock:
            current = dict(self._cameras)
            self._reloading = True  # cameras come and go: the pipeline is not idle meanwhile
        removed = [n for n, c in current.items() if n not in new or _source_of(new[n]) != _source_of(c)]
        for name in set(current) - set(removed):  # zones and lines apply without restarting the camera
            if new[name] != current[name]:
                try:
                    self.set_analytics(name, AnalyticsConfig(zones=new[name].zones, lines=new[name].lines))
                except (KeyError, ValueError) as exc:
                    log.error("reload: camera %r keeps its zones and lines: %s", name, exc)
        for name in removed:
            self.remove_source(name)  # waits for the source's thread to end
        stuck = set(removed) & set(self.camera_names())
        for name in sorted(stuck):
            log.error("reload: camera %r did not stop in time; not starting its new version", name)
        added = [n for n, c in new.items() if (n not in current or n in removed) and n not in stuck]
        try:
            for name in added:
                self.add_source(new[name])
        finally:
            with self._lock:
                self._reloading = False
            self._end_if_idle()
        log.info("reload: %d camera(s) added %s, %d removed %s", len(added), added, len(removed), removed)
        return added, removed

    def _on_state(self, source: VideoSource, previous: str, state: str, reason: str | None) -> None:
        self.events.publish(camera_state_event(source.spec.name, state, previous, reason, source.stats.source, time.time()))

    def _on_source_finished(self, source: VideoSource) -> None:
        with self._lock:
            if self.sources.get(source.spec.name) is source:
                del self.sources[source.spec.name]
                self._cameras.pop(source.spec.name, None)
        self._end_if_idle()

    def _end_if_idle(self) -> None:
        with self._lock:
            if self._ended or not self._all_added or self.sources or self._reloading:
                return
            if not self.until_sources_end and not self._stop_requested:
                return
            self._ended = True
        self.queues.end()

    def request_stop(self) -> None:
        """Stop reading sources, let in-flight frames drain, and drop what is left after the drain timeout."""
        if self._stop_requested:
            return
        self._stop_requested = True
        log.info("stop requested: draining in-flight frames (at most %.1f s)", self.config.runtime.drain_timeout_s)
        self.ctx.stop.set()
        for source in list(self.sources.values()):
            source.stop()
        self._end_if_idle()
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
        self.queues.end()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end; True when it has."""
        self.stages[-1].join(timeout)
        return not self.stages[-1].is_alive()

    def publisher_stats(self) -> PublisherStats:
        """Redis connection state, buffer fill and delivery counters of the publisher (frames and events)."""
        return self.publisher.stats()

    def report(self) -> RunReport:
        return RunReport(
            elapsed_s=round(time.monotonic() - self._started_at, 3),
            streams=self.ctx.snapshot(),
            stages={s.name: {k: round(v, 4) for k, v in asdict(s.counters).items()} for s in self.stages},
            stage_errors=dict(self.ctx.stage_errors),
            stop_requested=self._stop_requested,
            publisher={**asdict(self.publisher_stats()), "dropped_by_reason": self.outbox.dropped_by_reason()},
        )


def _source_of(camera: CameraConfig) -> dict[str, object]:
    """What reading a camera depends on: all but its zones and lines."""
    return camera.model_dump(exclude={"zones", "lines"})
