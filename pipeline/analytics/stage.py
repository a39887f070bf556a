"""The analytics stage: between the tracker and the view, it runs each camera's zones and lines on every tracked
frame, publishes their events and attaches what the view draws (`FrameResult.analytics`)."""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from pipeline.analytics.camera import LOST_AFTER_S, CameraAnalytics
from pipeline.config import AnalyticsConfig
from pipeline.frame import BatchResult, StreamEnd
from pipeline.stage import Channel, RunContext, Stage


class AnalyticsStage(Stage):
    """Cameras without zones or lines pass through untouched. `configure` may be called from any thread: the new
    zones and lines apply from the camera's next frame, without a restart."""

    def __init__(
        self,
        inbox: Channel[object],
        outbox: Channel[object],
        ctx: RunContext,
        label_names: Sequence[str],
        publish_event: Callable[[dict[str, str]], None] | None = None,
        lost_after_s: float = LOST_AFTER_S,
    ) -> None:
        super().__init__("analytics", inbox, outbox, ctx)
        self.label_names = label_names
        self.publish_event = publish_event
        self.lost_after_s = lost_after_s
        self._lock = threading.Lock()
        self._cameras: dict[str, CameraAnalytics] = {}

    def configure(self, camera: str, config: AnalyticsConfig) -> None:
        """Set a camera's zones and lines (unchanged ones keep their state and counts)."""
        with self._lock:
            found = self._cameras.get(camera)
            if found is not None:
                found.reconfigure(config)
            elif config.zones or config.lines:
                self._cameras[camera] = CameraAnalytics(camera, config, self.label_names, self.lost_after_s)

    def forget(self, camera: str) -> None:
        with self._lock:
            self._cameras.pop(camera, None)

    def camera(self, name: str) -> CameraAnalytics | None:
        with self._lock:
            return self._cameras.get(name)

    def cameras(self) -> dict[str, CameraAnalytics]:
        with self._lock:
            return dict(self._cameras)

    def process(self, item: object) -> None:
        assert isinstance(item, BatchResult)
        cameras = self._cameras  # read without the lock: replaced entries are whole objects
        for result in item.results:
            analytics = cameras.get(result.frame.stream)
            if analytics is None:
                continue
            self._publish(analytics.update(result))
            if result.frame.image is not None:  # a frame the view or the annotated video will draw
                result.analytics = analytics.overlay()
        self.emit(item)

    def on_stream_end(self, marker: StreamEnd) -> None:
        analytics = self._cameras.get(marker.stream)
        if analytics is not None:
            self._publish(analytics.end())
        self.emit(marker)

    def _publish(self, events: list[dict[str, str]]) -> None:
        if self.publish_event is not None:
            for event in events:
                self.publish_event(event)
