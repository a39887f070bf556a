"""The runtime's one abstraction: stages are threads joined by bounded channels.

Each stage reads its inbox, processes items and writes its outbox. `END` flows through every stage at end of
input: a stage flushes what it holds, forwards `END` and exits, so in-flight frames drain in order. Once the run's
`discard` event is set (stop deadline passed), stages count what they still receive as dropped instead of
processing it, so every decoded frame is either published or counted as dropped.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Generic, Protocol, TypeVar

from pipeline.frame import END, EndOfInput, Frame, StreamEnd, frames_of

log = logging.getLogger(__name__)

T = TypeVar("T")


class Channel(Generic[T]):
    """A bounded FIFO between two stages. A full channel blocks the writer: backpressure, nothing lost."""

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self._queue: queue.Queue[T] = queue.Queue(maxsize=maxsize)

    def put(self, item: T, stop: threading.Event | None = None) -> bool:
        """Block until there is room; give up (return False) if `stop` gets set meanwhile."""
        if stop is None:
            self._queue.put(item)
            return True
        while True:
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                if stop.is_set():
                    return False

    def get(self, timeout: float | None = None) -> T:
        """Next item; raises queue.Empty after `timeout` seconds."""
        return self._queue.get(timeout=timeout)

    def depth(self) -> int:
        """Items waiting (approximate: for metrics)."""
        return self._queue.qsize()


class Inbox(Protocol):
    """What a stage reads from: a Channel, or the batcher's per-camera queues."""

    def get(self, timeout: float | None = None) -> object: ...

    def depth(self) -> int: ...


@dataclass
class StreamStats:
    """Per-source frame accounting: decoded == published + dropped once a run has drained."""

    source: str = ""  # redacted URL or path
    decoded: int = 0
    published: int = 0
    dropped: int = 0
    objects: int = 0
    reconnects: int = 0
    # files: starting -> running -> finished | failed | stopped;
    # live: connecting -> online <-> offline -> stopped (| failed when retrying cannot help)
    state: str = "starting"
    error: str | None = None
    drop_reasons: dict[str, int] = field(default_factory=dict)  # reason -> frames


class RunContext:
    """State shared by all stages of one run: stop signals, per-stream counters and recorded errors."""

    def __init__(self) -> None:
        self.stop = threading.Event()  # sources stop reading
        self.discard = threading.Event()  # stages stop processing and count what they get as dropped
        self._lock = threading.Lock()
        self.streams: dict[str, StreamStats] = {}
        self.stage_errors: Counter[str] = Counter()

    def stream(self, name: str) -> StreamStats:
        with self._lock:
            return self.streams.setdefault(name, StreamStats())

    def count(self, stream: str, field_name: str, n: int = 1) -> None:
        with self._lock:
            stats = self.streams.setdefault(stream, StreamStats())
            setattr(stats, field_name, getattr(stats, field_name) + n)

    def drop(self, frames: list[Frame], reason: str) -> None:
        for frame in frames:
            self.drop_count(frame.stream, reason)

    def drop_count(self, stream: str, reason: str, n: int = 1) -> None:
        """Count `n` frames of `stream` as dropped for `reason`."""
        with self._lock:
            stats = self.streams.setdefault(stream, StreamStats())
            stats.dropped += n
            stats.drop_reasons[reason] = stats.drop_reasons.get(reason, 0) + n

    def snapshot(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {name: asdict(stats) for name, stats in self.streams.items()}


@dataclass
class StageCounters:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    errors: int = 0
    busy_s: float = 0.0


class Stage(threading.Thread):
    """A pipeline stage: subclasses implement `process` and may hook timeouts, stream ends and flush."""

    def __init__(self, name: str, inbox: Inbox, outbox: Channel[object] | None, ctx: RunContext) -> None:
        super().__init__(name=name, daemon=True)
        self.inbox = inbox
        self.outbox = outbox
        self.ctx = ctx
        self.counters = StageCounters()
        self._blocked_s = 0.0

    # --- hooks -------------------------------------------------------------------------------------------------
    def process(self, item: object) -> None:
        raise NotImplementedError

    def before_get(self) -> None:
        """Called before each read of the inbox."""

    def wait_timeout(self) -> float | None:
        """How long to wait for the next item before `on_timeout` (None: forever)."""
        return None

    def on_timeout(self) -> None:
        pass

    def on_stream_end(self, marker: StreamEnd) -> None:
        self.emit(marker)

    def flush(self) -> None:
        pass

    # --- machinery ---------------------------------------------------------------------------------------------
    def emit(self, item: object) -> bool:
        """Pass `item` on; False when it was dropped instead (frames after the stop deadline)."""
        frames = frames_of(item)
        if frames and self.ctx.discard.is_set():
            self.drop(frames, "stopped before processing")
            return False
        self.counters.frames_out += len(frames)
        if self.outbox is not None:
            waited = time.perf_counter()
            self.outbox.put(item)
            self._blocked_s += time.perf_counter() - waited  # backpressure is not work: keep it out of busy_s
        return True

    def drop(self, frames: list[Frame], reason: str) -> None:
        self.counters.dropped += len(frames)
        self.ctx.drop(frames, reason)

    def run(self) -> None:
        while True:
            self.before_get()
            try:
                item = self.inbox.get(timeout=self.wait_timeout())
            except queue.Empty:
                self.on_timeout()
                continue
            if isinstance(item, EndOfInput):
                self.flush()
                if self.outbox is not None:
                    self.outbox.put(END)
                return
            if isinstance(item, StreamEnd):
                self.on_stream_end(item)
                continue
            frames = frames_of(item)
            self.counters.frames_in += len(frames)
            if self.ctx.discard.is_set():
                self.drop(frames, "stopped before processing")
                continue
            started, self._blocked_s = time.perf_counter(), 0.0
            try:
                self.process(item)
            except Exception as exc:  # one bad batch must not kill the stage: log, count, go on
                self.counters.errors += 1
                self.ctx.stage_errors[f"{self.name}: {type(exc).__name__}: {exc}"] += 1
                if self.counters.errors == 1:
                    log.exception("%s stage failed on frames of %s; dropping them", self.name, _streams(frames))
                else:
                    log.error("%s stage failed again (%d errors so far): %s", self.name, self.counters.errors, exc)
                self.drop(frames, f"{self.name} error")
            finally:
                self.counters.busy_s += time.perf_counter() - started - self._blocked_s


def _streams(frames: list[Frame]) -> str:
    return ", ".join(f"camera {name!r}" for name in sorted({f.stream for f in frames})) or "-"
