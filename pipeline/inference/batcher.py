"""Batcher stage: groups frames from all streams into batches for the engine.

Its inbox, `CameraQueues`, holds one small queue per source and serves them round-robin, so no camera starves
and a slow or dead one never holds a batch back. A batch is sent when it holds `max_batch` frames, or `max_delay_ms`
after its first frame arrived, whichever comes first.

The batcher starts a batch only when the engine asks for one (`demand`): frames wait in the camera queues, where
live ones are replaced by fresher ones, instead of ageing in batches built ahead of the engine.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import av

from pipeline.frame import END, Batch, Frame, StreamEnd
from pipeline.stage import Channel, RunContext, Stage

log = logging.getLogger(__name__)

#: Drop reasons of the batcher's queues (counted per camera, shown in the summary, /metrics and the events).
ENGINE_BUSY_DROP = "engine busy: oldest frame dropped"
MAX_FPS_DROP = "over the camera's max_fps"


@dataclass
class _SourceQueue:
    name: str
    capacity: int
    drop_oldest: bool
    min_interval_s: float  # 1 / max_fps; 0 for no cap
    items: deque[object] = field(default_factory=deque)
    next_allowed: float = 0.0


class CameraQueues:
    """The batcher's inbox: a bounded queue per source, served round-robin.

    A file source's full queue blocks its writer (backpressure: lossless). A live source's full queue drops its
    oldest frame instead (counted), so the engine always works on the freshest frames. A source with `max_fps` has
    the frames that come sooner than 1 / max_fps after the last one served dropped (counted); a live one's slot
    goes to its newest waiting frame. A source's
    `StreamEnd` is served after all its frames; `end()` makes `get` return END once every queue is empty.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._cond = threading.Condition()
        self._queues: dict[int, _SourceQueue] = {}  # insertion order is the round-robin order
        self._cursor = 0
        self._keys = itertools.count()
        self._ended = False

    def open(self, name: str, capacity: int, drop_oldest: bool, max_fps: float | None = None) -> int:
        """Add a queue for a new source; returns its key for `put`."""
        with self._cond:
            key = next(self._keys)
            self._queues[key] = _SourceQueue(name, capacity, drop_oldest, 1.0 / max_fps if max_fps else 0.0)
            return key

    def put(self, key: int, item: object, stop: threading.Event | None = None) -> bool:
        """Queue an item; False if `stop` got set while waiting for room (the item was not queued)."""
        with self._cond:
            q = self._queues[key]
            while isinstance(item, Frame) and len(q.items) >= q.capacity:
                if q.drop_oldest:
                    self._drop_oldest_frame(q)
                    break
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.05)
            q.items.append(item)
            self._cond.notify_all()
            return True

    def _drop_oldest_frame(self, q: _SourceQueue) -> None:
        # Before the camera's next max_fps slot nothing of it can be served, so a frame pushed out then was lost to
        # the cap, not to a busy engine: counted as such, the engine-busy count says when detection fell behind.
        capped = q.min_interval_s > 0 and time.monotonic() < q.next_allowed
        for i, old in enumerate(q.items):
            if isinstance(old, Frame):
                del q.items[i]
                self.ctx.drop([old], MAX_FPS_DROP if capped else ENGINE_BUSY_DROP)
                return

    def depth(self) -> int:
        """Frames waiting in all queues (for metrics)."""
        with self._cond:
            return sum(len(q.items) for q in self._queues.values())

    def depths(self) -> dict[str, int]:
        """Frames waiting per source (for metrics)."""
        with self._cond:
            return {q.name: len(q.items) for q in self._queues.values()}

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> object:
        """The next item, round-robin over sources; raises queue.Empty after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                item = self._next()
                if item is not None:
                    self._cond.notify_all()  # a blocked writer may have room now
                    return item
                if self._ended and not any(q.items for q in self._queues.values()):
                    return END
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise queue.Empty
                self._cond.wait(remaining)

    def _next(self) -> object | None:
        keys = list(self._queues)
        # A camera removed and added again (reload, API) has two queues for a while: the new reader's frames wait
        # until the old one's last frames and its StreamEnd are out, so the stream never goes back and forth.
        waiting, names = set(), set()
        for key in keys:
            q = self._queues[key]
            if q.name in names:
                waiting.add(key)
            if q.items:
                names.add(q.name)
        for offset in range(len(keys)):
            key = keys[(self._cursor + offset) % len(keys)]
            q = self._queues[key]
            while q.items and key not in waiting:
                item = q.items.popleft()
                if isinstance(item, StreamEnd):
                    del self._queues[key]
                    self._cursor = (self._cursor + offset) % max(1, len(self._queues))
                    return item
                now = time.monotonic()
                if q.min_interval_s and isinstance(item, Frame) and now < q.next_allowed:
                    self.ctx.drop([item], MAX_FPS_DROP)
                    continue
                q.next_allowed = now + q.min_interval_s
                if q.min_interval_s and q.drop_oldest:
                    # A capped live camera's slot goes to its freshest frame; the older ones waiting were passed
                    # over by the cap. Detections stay current and frame age stays within one frame interval.
                    while q.items and isinstance(q.items[0], Frame):
                        self.ctx.drop([item], MAX_FPS_DROP)
                        item = q.items.popleft()
                self._cursor = (self._cursor + offset + 1) % len(keys)
                return item
        return None


class Batcher(Stage):
    def __init__(
        self, inbox: CameraQueues | Channel[object], outbox: Channel[object], ctx: RunContext, max_batch: int,
        max_delay_ms: float, pull: bool = False,
    ) -> None:
        super().__init__("batcher", inbox, outbox, ctx)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self._pending: list[Frame] = []
        self._deadline = 0.0
        #: With `pull`, set by the engine's stage each time it is ready for the next batch.
        self.demand = threading.Event() if pull else None
        self._has_demand = False

    def before_get(self) -> None:
        if self.demand is not None and not self._pending and not self._has_demand:
            self.demand.wait()
            self.demand.clear()
            self._has_demand = True

    def process(self, item: object) -> None:
        assert isinstance(item, Frame)
        try:
            item.materialize()  # the one conversion, of frames that passed max_fps and the live queue
        except (ValueError, av.FFmpegError) as exc:  # one bad picture costs its frame, not the batch or other cameras
            log.warning("camera %r: frame %d could not be converted (%s); dropped", item.stream, item.index, exc)
            self.ctx.drop([item], "picture could not be converted")
            return
        if not self._pending:
            self._deadline = time.monotonic() + self.max_delay_s
        self._pending.append(item)
        if len(self._pending) >= self.max_batch:
            self.flush()

    def wait_timeout(self) -> float | None:
        return max(0.0, self._deadline - time.monotonic()) if self._pending else None

    def on_timeout(self) -> None:
        self.flush()

    def on_stream_end(self, marker: StreamEnd) -> None:
        # The marker must not overtake that stream's frames still waiting here.
        if any(f.stream == marker.stream for f in self._pending):
            self.flush()
        self.emit(marker)

    def flush(self) -> None:
        if self._pending:
            batch, self._pending = Batch(self._pending), []
            # The engine's request is used up only by a batch that reaches it: one dropped after the stop deadline
            # leaves the engine waiting for it, and waiting for a new request here would hang the drain.
            if self.emit(batch):
                self._has_demand = False
