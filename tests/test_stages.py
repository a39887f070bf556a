"""Stage policies in isolation, on real threads and channels: batching."""
from __future__ import annotations

import time

import numpy as np

from pipeline.inference.batcher import Batcher
from pipeline.frame import END, Batch, Frame, StreamEnd
from pipeline.stage import Channel, RunContext


def _frame(stream: str, index: int) -> Frame:
    return Frame(stream, index, index / 25, time.time(), np.zeros((8, 8, 3), np.uint8))


def _collect(channel: Channel[object], timeout: float = 2.0) -> list[object]:
    items: list[object] = []
    while True:
        item = channel.get(timeout=timeout)
        if item is END:
            return items
        items.append(item)


def test_batcher_fills_batches_and_bounds_the_wait() -> None:
    inbox: Channel[object] = Channel("in", 100)
    outbox: Channel[object] = Channel("out", 100)
    batcher = Batcher(inbox, outbox, RunContext(), max_batch=4, max_delay_ms=80)
    batcher.start()
    for i in range(10):
        inbox.put(_frame("a", i))
    first = outbox.get(timeout=30)
    second = outbox.get(timeout=30)
    third = outbox.get(timeout=30)  # only 2 frames left: sent when the delay bound expires, not when 4 are there
    assert [len(b.frames) for b in (first, second, third)] == [4, 4, 2]  # type: ignore[attr-defined]
    lone_at = time.monotonic()
    inbox.put(_frame("b", 0))
    lone = outbox.get(timeout=30)  # a lone frame goes out alone: the batcher never waits for a full batch
    assert isinstance(lone, Batch) and len(lone.frames) == 1
    assert time.monotonic() - lone_at >= 0.06  # it waited for company first (max_delay_ms 80, with slack)
    inbox.put(END)
    assert _collect(outbox) == []
    batcher.join(2)
    assert not batcher.is_alive()


def test_stream_end_never_overtakes_its_frames() -> None:
    inbox: Channel[object] = Channel("in", 100)
    outbox: Channel[object] = Channel("out", 100)
    batcher = Batcher(inbox, outbox, RunContext(), max_batch=8, max_delay_ms=10_000)
    batcher.start()
    for i in range(3):
        inbox.put(_frame("a", i))
    inbox.put(StreamEnd("a"))
    inbox.put(END)
    items = _collect(outbox)
    assert isinstance(items[0], Batch) and [f.index for f in items[0].frames] == [0, 1, 2]
    assert items[1] == StreamEnd("a")
