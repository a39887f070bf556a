"""Batcher stage: groups frames from all streams into batches for the engine.

A batch is sent when it holds `max_batch` frames, or `max_delay_ms` after its first frame arrived — whichever comes
first — so a lone or slow stream never waits longer than the delay bound.
"""
from __future__ import annotations

import time

from pipeline.frame import Batch, Frame, StreamEnd
from pipeline.stage import Channel, RunContext, Stage


class Batcher(Stage):
    def __init__(
        self, inbox: Channel[object], outbox: Channel[object], ctx: RunContext, max_batch: int, max_delay_ms: float
    ) -> None:
        super().__init__("batcher", inbox, outbox, ctx)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self._pending: list[Frame] = []
        self._deadline = 0.0

    def process(self, item: object) -> None:
        assert isinstance(item, Frame)
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
            self.emit(batch)
