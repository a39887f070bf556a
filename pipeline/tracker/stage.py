"""Tracker stage: gives detections identities, one `ByteTracker` per camera, and publishes track lifecycle events.

`ByteTracker` (pipeline/tracker/bytetrack.py) predicts by each frame's pts, so dropped frames do not break identities.
A detection not (yet) assigned to a confirmed track is published with `track_id` null. An object on a published
track that the detector misses is published for a moment (the tracker's ``coast_s``) at the box the tracker predicts
for it, marked ``predicted`` (`FrameResult.predicted`), so it does not blink out of the output.

The engine hands the tracker detections down to the tracker's low threshold (:func:`engine_score_threshold`), so
that ByteTrack's low-score association keeps an occluded object's track; only those at or above
`engine.score_threshold` (``publish_threshold``) go on to analytics and Redis. A track's `track_started` event waits
for its first published box, and a track never published ends without a `track_ended` event: the events name only
tracks a subscriber has seen.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from engines.base import Detections

from pipeline.tracker.bytetrack import LOW_THRESH, ByteTracker, TrackEnd, TrackStart
from pipeline.events.contract import label_name, track_ended_event, track_started_event
from pipeline.frame import BatchResult, StreamEnd
from pipeline.stage import Channel, RunContext, Stage

__all__ = ["ByteTracker", "TrackerStage", "engine_score_threshold"]

def engine_score_threshold(publish_threshold: float) -> float:
    """The score threshold to build the pipeline's engine with: low enough for the tracker's low-score association,
    never above what is published."""
    return min(publish_threshold, LOW_THRESH)


class TrackerStage(Stage):
    def __init__(
        self,
        inbox: Channel[object],
        outbox: Channel[object],
        ctx: RunContext,
        label_names: Sequence[str],
        publish_event: Callable[[dict[str, str]], None] | None = None,
        frame_rate: float = 25.0,
        publish_threshold: float = 0.0,
        new_tracker: Callable[[], ByteTracker] | None = None,
    ) -> None:
        """``new_tracker`` builds each camera's tracker (default: ``ByteTracker(frame_rate=frame_rate)`` with its
        defaults), e.g. to turn on an option such as re-identification (``reid_buffer``)."""
        super().__init__("tracker", inbox, outbox, ctx)
        self.label_names = label_names
        self.publish_event = publish_event
        self.frame_rate = frame_rate
        self.publish_threshold = publish_threshold
        self.new_tracker = new_tracker or (lambda: ByteTracker(frame_rate=self.frame_rate))
        self._trackers: dict[str, ByteTracker] = {}
        # per camera: confirmed tracks not yet seen in a published box (their start event waits), and those announced
        self._pending: dict[str, dict[int, TrackStart]] = {}
        self._announced: dict[str, set[int]] = {}

    def process(self, item: object) -> None:
        assert isinstance(item, BatchResult)
        for result in item.results:
            camera = result.frame.stream
            tracker = self._trackers.get(camera)
            if tracker is None:
                tracker = self._trackers[camera] = self.new_tracker()
                self._pending[camera], self._announced[camera] = {}, set()
            det = result.detections
            frame = result.frame
            # detections are in source pixels (Frame.to_source), so the border is the source frame's
            size = (frame.width, frame.height) if frame.width > 0 and frame.height > 0 else None
            ids = tracker.update(det.boxes, det.scores, det.labels, timestamp=frame.pts, frame_size=size)
            published = det.scores >= self.publish_threshold
            if not published.all():  # low-score detections served the association only
                det = Detections(det.boxes[published], det.scores[published], det.labels[published])
                ids = ids[published]
            pred = tracker.predicted
            seen = np.isin(pred.track_ids, np.fromiter(self._announced[camera], np.int64))  # tracks a subscriber knows
            if seen.any():
                det = Detections(np.concatenate([det.boxes, pred.boxes[seen].astype(np.float32)]),
                                 np.concatenate([det.scores, pred.scores[seen].astype(np.float32)]),
                                 np.concatenate([det.labels, pred.labels[seen]]))
                ids = np.concatenate([ids, pred.track_ids[seen]])
            result.detections = det
            result.track_ids = ids
            result.predicted = np.arange(len(ids)) >= len(ids) - int(np.count_nonzero(seen))
            self._publish(camera, tracker.started, tracker.ended, ids)
        self.emit(item)

    def on_stream_end(self, marker: StreamEnd) -> None:
        tracker = self._trackers.pop(marker.stream, None)
        if tracker is not None:
            self._publish(marker.stream, [], tracker.finish(), np.zeros(0, np.int64))
            self._pending.pop(marker.stream, None)
            self._announced.pop(marker.stream, None)
        self.emit(marker)

    def _publish(
        self, camera: str, started: Sequence[TrackStart], ended: Sequence[TrackEnd], published_ids: np.ndarray,
    ) -> None:
        pending, announced = self._pending[camera], self._announced[camera]
        for track in started:
            pending[track.track_id] = track
        starts = [pending.pop(int(i)) for i in published_ids if int(i) in pending]
        for track in starts:
            announced.add(track.track_id)
        ends = []
        for track in ended:
            pending.pop(track.track_id, None)  # never published: no events at all
            if track.track_id in announced:
                announced.discard(track.track_id)
                ends.append(track)
        if self.publish_event is None or not (starts or ends):
            return
        now = time.time()
        for track in starts:
            self.publish_event(track_started_event(camera, track, label_name(self.label_names, track.label), now))
        for track in ends:
            self.publish_event(track_ended_event(camera, track, label_name(self.label_names, track.label), now))
