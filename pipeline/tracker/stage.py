"""Tracker stage: gives detections identities, one `ByteTracker` per camera, and publishes track lifecycle events.

`ByteTracker` (pipeline/tracker/bytetrack.py) predicts by each frame's pts, so dropped frames do not break identities.
A detection not (yet) assigned to a confirmed track is published with `track_id` null.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pipeline.tracker.bytetrack import ByteTracker, TrackEnd, TrackStart
from pipeline.events.contract import track_ended_event, track_started_event
from pipeline.frame import BatchResult, StreamEnd
from pipeline.stage import Channel, RunContext, Stage

__all__ = ["ByteTracker", "TrackerStage"]


class TrackerStage(Stage):
    def __init__(
        self,
        inbox: Channel[object],
        outbox: Channel[object],
        ctx: RunContext,
        label_names: Sequence[str],
        publish_event: Callable[[dict[str, str]], None] | None = None,
        frame_rate: float = 25.0,
    ) -> None:
        super().__init__("tracker", inbox, outbox, ctx)
        self.label_names = label_names
        self.publish_event = publish_event
        self.frame_rate = frame_rate
        self._trackers: dict[str, ByteTracker] = {}

    def process(self, item: object) -> None:
        assert isinstance(item, BatchResult)
        for result in item.results:
            camera = result.frame.stream
            tracker = self._trackers.get(camera)
            if tracker is None:
                tracker = self._trackers[camera] = ByteTracker(frame_rate=self.frame_rate)
            det = result.detections
            result.track_ids = tracker.update(det.boxes, det.scores, det.labels, timestamp=result.frame.pts)
            self._publish(camera, tracker.started, tracker.ended)
        self.emit(item)

    def on_stream_end(self, marker: StreamEnd) -> None:
        tracker = self._trackers.pop(marker.stream, None)
        if tracker is not None:
            self._publish(marker.stream, [], tracker.finish())
        self.emit(marker)

    def _publish(self, camera: str, started: Sequence[TrackStart], ended: Sequence[TrackEnd]) -> None:
        if self.publish_event is None or not (started or ended):
            return
        now = time.time()
        for track in started:
            self.publish_event(track_started_event(camera, track, self._label(track.label), now))
        for track in ended:
            self.publish_event(track_ended_event(camera, track, self._label(track.label), now))

    def _label(self, label: int) -> str:
        return self.label_names[label] if 0 <= label < len(self.label_names) else str(label)
