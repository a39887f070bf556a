"""The live view: the latest processed frame of each camera, its rates and latency, and the stage that feeds it.

`ViewStage` sits between the tracker and the publisher. Per frame it only stores references and counts (no
drawing, no encoding): a JPEG is drawn and encoded when someone asks for it (`LiveView.jpeg`), once per frame, so
the hot path costs next to nothing when no one is watching. The detector keeps the image of each camera's last
frame of a batch for it (or of every frame, when annotated video is written); this stage releases them.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.events.contract import frame_objects
from pipeline.monitor.annotate import AnnotatedJob, AnnotatedVideoWriter, annotate, to_jpeg
from pipeline.frame import BatchResult, FrameResult, StreamEnd
from pipeline.stage import Channel, RunContext, Stage

FPS_WINDOW_S = 5.0


@dataclass
class _Latest:
    """A processed frame: its detections and tracks, and its image if it kept one."""

    index: int
    pts: float
    capture_time: float
    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    image: np.ndarray | None = None
    overlay: object | None = None  # zones and lines (pipeline.analytics Overlay)
    predicted: np.ndarray | None = None  # per box: predicted by the tracker for a missed object (FrameResult)


@dataclass
class _Camera:
    latest: _Latest | None = None  # the newest processed frame
    shown: _Latest | None = None  # the newest one with an image: what frame.jpg shows
    latency_s: float | None = None  # capture to processed, of the newest frame
    processed_at: deque[float] = field(default_factory=deque)  # monotonic times within the fps window
    jpeg: bytes | None = None
    jpeg_index: int = -1
    jpeg_lock: threading.Lock = field(default_factory=threading.Lock)


class LiveView:
    """Thread-safe store of each camera's latest frame; written by `ViewStage`, read by the HTTP server."""

    def __init__(self, label_names: Sequence[str]) -> None:
        self.label_names = label_names
        self._lock = threading.Lock()
        self._cameras: dict[str, _Camera] = {}

    def update(self, result: FrameResult, latency_s: float, now: float | None = None) -> None:
        frame, det = result.frame, result.detections
        latest = _Latest(frame.index, frame.pts, frame.capture_time, frame.width, frame.height, det.boxes,
                         det.scores, det.labels, result.track_ids, frame.image, result.analytics, result.predicted)
        now = time.monotonic() if now is None else now
        with self._lock:
            cam = self._cameras.setdefault(frame.stream, _Camera())
            cam.latest, cam.latency_s = latest, latency_s
            if latest.image is not None:
                cam.shown = latest
            cam.processed_at.append(now)
            while cam.processed_at and cam.processed_at[0] < now - FPS_WINDOW_S:
                cam.processed_at.popleft()

    def forget(self, camera: str) -> None:
        with self._lock:
            self._cameras.pop(camera, None)

    def fps(self, camera: str, now: float | None = None) -> float:
        """Frames processed per second over the last few seconds (0 once the camera stops delivering)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            cam = self._cameras.get(camera)
            if cam is None:
                return 0.0
            times = [t for t in cam.processed_at if t >= now - FPS_WINDOW_S]
        if len(times) < 2 or now <= times[0]:
            return 0.0
        # Intervals up to now, not to the last frame: a camera that stops delivering decays to 0.
        return (len(times) - 1) / (now - times[0])

    def latency_s(self, camera: str) -> float | None:
        with self._lock:
            cam = self._cameras.get(camera)
            return cam.latency_s if cam is not None else None

    def frame_size(self, camera: str) -> tuple[int, int] | None:
        """(width, height) of the camera's newest processed frame."""
        with self._lock:
            cam = self._cameras.get(camera)
            latest = cam.latest if cam is not None else None
        return (latest.width, latest.height) if latest is not None else None

    def latest(self, camera: str) -> dict[str, object] | None:
        """The newest processed frame: index, pts, size and its objects (JSON-ready)."""
        with self._lock:
            cam = self._cameras.get(camera)
            latest = cam.latest if cam is not None else None
        if latest is None:
            return None
        objects = frame_objects(latest.boxes, latest.scores, latest.labels, latest.track_ids, latest.predicted,
                                self.label_names)  # as in the Redis frame entries (docs/events.md)
        return {"index": latest.index, "pts": round(latest.pts, 6), "capture_ts": round(latest.capture_time, 6),
                "width": latest.width, "height": latest.height, "objects": objects}

    def jpeg(self, camera: str) -> tuple[bytes, int] | None:
        """The newest frame with an image, annotated, as JPEG, and its frame index; None before the first one.

        Drawn and encoded on the first request for each frame, then served from cache."""
        with self._lock:
            cam = self._cameras.get(camera)
            shown = cam.shown if cam is not None else None
        if cam is None or shown is None or shown.image is None:
            return None
        with cam.jpeg_lock:  # concurrent viewers encode each frame once
            if cam.jpeg_index != shown.index or cam.jpeg is None:
                # Boxes and zones are in source pixels; the image may be the engine-sized one the detector saw.
                scale = (shown.width / shown.image.shape[1], shown.height / shown.image.shape[0])
                drawn = annotate(shown.image, shown.boxes, shown.scores, shown.labels, shown.track_ids,
                                 self.label_names, shown.overlay, scale, shown.predicted)  # type: ignore[arg-type]
                cam.jpeg, cam.jpeg_index = to_jpeg(drawn), shown.index
            return cam.jpeg, cam.jpeg_index


class ViewStage(Stage):
    """Feeds the live view and the annotated video writer, measures frame age, and releases the images."""

    def __init__(
        self,
        inbox: Channel[object],
        outbox: Channel[object],
        ctx: RunContext,
        view: LiveView,
        writer: AnnotatedVideoWriter | None = None,
        is_live: Callable[[str], bool] = lambda _name: True,
        on_frame_age: Callable[[float], None] | None = None,
        on_stream_drained: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__("view", inbox, outbox, ctx)
        self.view = view
        self.writer = writer
        self.is_live = is_live
        self.on_frame_age = on_frame_age
        self.on_stream_drained = on_stream_drained  # a source's last frame has passed

    def process(self, item: object) -> None:
        assert isinstance(item, BatchResult)
        now = time.time()
        for result in item.results:
            frame = result.frame
            age = max(0.0, now - frame.capture_time)
            if self.on_frame_age is not None:
                self.on_frame_age(age)
            self.view.update(result, age)
            if self.writer is not None and frame.image is not None:
                det = result.detections
                job = AnnotatedJob(frame.stream, frame.image, frame.pts, det.boxes, det.scores, det.labels,
                                   result.track_ids, result.analytics, frame.scale,  # type: ignore[arg-type]
                                   result.predicted)
                # Files wait for the encoder (their video is complete); live cameras never do.
                self.writer.submit(job, wait=not self.is_live(frame.stream), stop=self.ctx.discard)
            frame.image = None  # the view and the writer hold their own references
        self.emit(item)

    def on_stream_end(self, marker: StreamEnd) -> None:
        if self.writer is not None:
            self.writer.end_stream(marker.stream)
        if self.on_stream_drained is not None:
            self.on_stream_drained(marker.stream)
        self.emit(marker)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.close()
