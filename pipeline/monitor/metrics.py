"""Prometheus metrics of one pipeline, in a registry of its own (several pipelines may live in one process).

Counters and gauges are read from the pipeline's live state when scraped (`PipelineCollector`), so the hot path
does no extra bookkeeping for them; the three histograms are observed by the stages as batches and frames pass.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from pipeline.analytics import AnalyticsStage
from pipeline.config import PipelineConfig
from pipeline.events.outbox import PublisherStats
from pipeline.inference.batcher import CameraQueues
from pipeline.monitor.annotate import AnnotatedVideoWriter
from pipeline.monitor.view import LiveView
from pipeline.stage import Stage, StreamStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: Every state a camera can be in (pipeline/stage.py StreamStats.state); each gets a 0/1 series.
CAMERA_STATES = ("starting", "connecting", "running", "online", "offline", "finished", "stopped", "failed")


class MetricsSource(Protocol):
    """What the collector reads of a running pipeline at scrape time (`pipeline.runner.Pipeline` provides it)."""

    config: PipelineConfig
    detector: Any
    stages: Sequence[Stage]
    view: LiveView
    writer: AnnotatedVideoWriter | None

    queues: CameraQueues
    analytics: AnalyticsStage

    def camera_stats(self) -> Mapping[str, StreamStats]: ...

    def publisher_stats(self) -> PublisherStats: ...


class PipelineMetrics:
    """The registry and the histograms the stages observe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_size = Histogram(
            "rpn_engine_batch_size", "Frames per engine batch.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256), registry=self.registry,
        )
        self.batch_latency = Histogram(
            "rpn_engine_batch_latency_seconds", "Engine time per batch (inference and its pre/post-processing).",
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5),
            registry=self.registry,
        )
        self.frame_age = Histogram(
            "rpn_frame_age_seconds",
            "Age of each processed frame from decoding to the end of tracking (handed to the publisher).",
            buckets=(0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60), registry=self.registry,
        )

    def observe_batch(self, size: int, latency_s: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(latency_s)

    def attach(self, pipeline: MetricsSource) -> None:
        self.registry.register(PipelineCollector(pipeline))

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class PipelineCollector(Collector):
    """Reads cameras, stages and the publisher at scrape time."""

    def __init__(self, pipeline: MetricsSource) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        yield from self._cameras()
        yield from self._stages()
        yield from self._publisher()
        yield from self._annotated()
        yield from self._analytics()
        engine = self.pipeline.config.engine
        info = InfoMetricFamily("rpn_engine", "The detector engine.")
        info.add_metric([], {"backend": str(getattr(self.pipeline.detector, "backend", "")), "arch": engine.arch})
        yield info

    def _cameras(self) -> Iterator[Metric]:
        p = self.pipeline
        lab = ["camera"]
        decoded = CounterMetricFamily("rpn_camera_frames_decoded", "Frames decoded.", labels=lab)
        processed = CounterMetricFamily(
            "rpn_camera_frames_processed", "Frames detected, tracked and published.", labels=lab)
        dropped = CounterMetricFamily("rpn_camera_frames_dropped", "Frames dropped (any reason).", labels=lab)
        objects = CounterMetricFamily("rpn_camera_objects", "Objects detected.", labels=lab)
        reconnects = CounterMetricFamily("rpn_camera_reconnects", "Reconnect attempts.", labels=lab)
        fps = GaugeMetricFamily("rpn_camera_fps", "Frames processed per second, last 5 s.", labels=lab)
        latency = GaugeMetricFamily(
            "rpn_camera_latency_seconds", "Age of the newest processed frame when it was processed.", labels=lab)
        depth = GaugeMetricFamily("rpn_camera_queue_depth", "Frames waiting for the engine.", labels=lab)
        state = GaugeMetricFamily("rpn_camera_state", "1 for the camera's current state, else 0.",
                                  labels=["camera", "state"])
        depths = p.queues.depths()
        for name, stats in p.camera_stats().items():
            decoded.add_metric([name], stats.decoded)
            processed.add_metric([name], stats.published)
            dropped.add_metric([name], stats.dropped)
            objects.add_metric([name], stats.objects)
            reconnects.add_metric([name], stats.reconnects)
            fps.add_metric([name], p.view.fps(name))
            seconds = p.view.latency_s(name)
            if seconds is not None:
                latency.add_metric([name], seconds)
            depth.add_metric([name], depths.get(name, 0))
            states = CAMERA_STATES if stats.state in CAMERA_STATES else (*CAMERA_STATES, stats.state)
            for s in states:
                state.add_metric([name, s], 1.0 if s == stats.state else 0.0)
        yield from (decoded, processed, dropped, objects, reconnects, fps, latency, depth, state)

    def _stages(self) -> Iterator[Metric]:
        lab = ["stage"]
        depth = GaugeMetricFamily("rpn_stage_queue_depth", "Items waiting in the stage's inbox.", labels=lab)
        busy = CounterMetricFamily("rpn_stage_busy_seconds", "Time spent processing (not waiting).", labels=lab)
        frames_in = CounterMetricFamily("rpn_stage_frames_in", "Frames received.", labels=lab)
        frames_out = CounterMetricFamily("rpn_stage_frames_out", "Frames passed on (published, for the last).",
                                         labels=lab)
        dropped = CounterMetricFamily("rpn_stage_frames_dropped", "Frames dropped by the stage.", labels=lab)
        errors = CounterMetricFamily("rpn_stage_errors", "Batches that failed in the stage.", labels=lab)
        alive = GaugeMetricFamily("rpn_stage_running", "1 while the stage's thread runs.", labels=lab)
        for stage in self.pipeline.stages:
            c = stage.counters
            depth.add_metric([stage.name], stage.inbox.depth())
            busy.add_metric([stage.name], c.busy_s)
            frames_in.add_metric([stage.name], c.frames_in)
            frames_out.add_metric([stage.name], c.frames_out)
            dropped.add_metric([stage.name], c.dropped)
            errors.add_metric([stage.name], c.errors)
            alive.add_metric([stage.name], 1.0 if stage.is_alive() else 0.0)
        yield from (depth, busy, frames_in, frames_out, dropped, errors, alive)

    def _publisher(self) -> Iterator[Metric]:
        s = self.pipeline.publisher_stats()
        yield GaugeMetricFamily("rpn_publisher_connected", "1 while Redis takes the publisher's writes.",
                                value=1.0 if s.connected else 0.0)
        yield GaugeMetricFamily("rpn_publisher_buffered_entries", "Entries waiting for Redis.",
                                value=s.buffered_entries)
        yield GaugeMetricFamily("rpn_publisher_buffered_bytes", "Bytes waiting for Redis.", value=s.buffered_bytes)
        yield GaugeMetricFamily("rpn_publisher_buffer_max_entries", "Buffer bound, entries.", value=s.max_entries)
        yield GaugeMetricFamily("rpn_publisher_buffer_max_bytes", "Buffer bound, bytes.", value=s.max_bytes)
        yield CounterMetricFamily("rpn_publisher_delivered_entries", "Entries written to Redis.",
                                  value=s.delivered_entries)
        yield CounterMetricFamily("rpn_publisher_dropped_entries", "Entries dropped (Redis down, buffer full).",
                                  value=s.dropped_entries)
        yield CounterMetricFamily("rpn_publisher_errors", "Failed writes to Redis.", value=s.errors)

    def _annotated(self) -> Iterator[Metric]:
        writer = self.pipeline.writer
        if writer is None:
            return
        lab = ["camera"]
        written = CounterMetricFamily("rpn_annotated_frames_written", "Frames written to annotated video.",
                                      labels=lab)
        dropped = CounterMetricFamily("rpn_annotated_frames_dropped",
                                      "Live frames not written: the encoder was behind.", labels=lab)
        errors = CounterMetricFamily("rpn_annotated_errors", "Annotated video write failures.", labels=lab)
        for name, s in writer.snapshot().items():
            written.add_metric([name], s.written)
            dropped.add_metric([name], s.dropped)
            errors.add_metric([name], s.errors)
        yield from (written, dropped, errors)

    def _analytics(self) -> Iterator[Metric]:
        occupancy = GaugeMetricFamily("rpn_zone_occupancy", "Objects inside the zone now.",
                                      labels=["camera", "zone", "label"])
        entries = CounterMetricFamily("rpn_zone_entries", "Objects that entered the zone.",
                                      labels=["camera", "zone", "label"])
        exits = CounterMetricFamily("rpn_zone_exits", "Objects that left the zone.", labels=["camera", "zone", "label"])
        crossings = CounterMetricFamily("rpn_line_crossings", "Objects that crossed the line, by direction (in/out).",
                                        labels=["camera", "line", "direction", "label"])
        for camera, analytics in self.pipeline.analytics.cameras().items():
            zones, lines = analytics.metrics()
            for zone, label, now, entered, left in zones:
                occupancy.add_metric([camera, zone, label], now)
                entries.add_metric([camera, zone, label], entered)
                exits.add_metric([camera, zone, label], left)
            for line, direction, label, n in lines:
                crossings.add_metric([camera, line, direction, label], n)
        yield from (occupancy, entries, exits, crossings)
