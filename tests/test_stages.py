"""Stage policies in isolation, on real threads and channels: batching."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pipeline.inference.batcher import Batcher
from pipeline.frame import END, Batch, Frame, StreamEnd
from pipeline.stage import Channel, RunContext
from tests.waiting import wait_for


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


def test_a_batch_dropped_at_the_stop_deadline_does_not_leave_the_pulling_batcher_waiting() -> None:
    """With the engine pulling batches (`demand`), a batch dropped after the stop deadline never reached the engine,
    which still waits for it: the batcher must not wait for a new request, or END never gets through (a drain with
    drain_timeout_s 0 hung until killed)."""
    ctx = RunContext()
    inbox: Channel[object] = Channel("in", 100)
    outbox: Channel[object] = Channel("out", 100)
    batcher = Batcher(inbox, outbox, ctx, max_batch=4, max_delay_ms=300, pull=True)
    batcher.start()
    assert batcher.demand is not None
    batcher.demand.set()  # the engine asks for a batch, then waits on its inbox (DetectorStage.before_get)
    inbox.put(_frame("a", 0))
    wait_for(lambda: batcher.counters.frames_in == 1, 30, "the frame taken into a batch")
    ctx.discard.set()  # the stop deadline passes while the batch waits for company
    wait_for(lambda: ctx.stream("a").dropped == 1, 30, "the waiting batch dropped at its delay bound")
    inbox.put(END)
    assert _collect(outbox, timeout=10) == []
    batcher.join(10)
    assert not batcher.is_alive()
    assert ctx.stream("a").drop_reasons == {"stopped before processing": 1}


def test_tracker_stage_uses_low_scores_for_identity_but_publishes_and_announces_only_confident_boxes() -> None:
    from engines.base import Detections
    from pipeline.frame import BatchResult, FrameResult
    from pipeline.tracker.stage import TrackerStage, engine_score_threshold

    assert engine_score_threshold(0.5) == 0.1 and engine_score_threshold(0.05) == 0.05
    inbox: Channel[object] = Channel("in", 100)
    outbox: Channel[object] = Channel("out", 100)
    events: list[dict[str, str]] = []
    stage = TrackerStage(inbox, outbox, RunContext(), ("__background__", "person"), events.append,
                         publish_threshold=0.5)
    stage.start()
    # A person walks right, scored 0.9 except while half hidden (0.3 for 3 frames); a false positive scores 0.3 in
    # the same place frame after frame (a weak track of its own, never published).
    published: list[tuple[list[float], list[int]]] = []
    for i in range(12):
        x = 100.0 + 4 * i
        person = 0.3 if 5 <= i < 8 else 0.9
        det = Detections(np.array([[x, 50, x + 30, 130], [400, 200, 440, 240]], np.float32),
                         np.array([person, 0.3], np.float32), np.array([1, 1], np.int64))
        inbox.put(BatchResult([FrameResult(_frame("cam", i), det)]))
        out = outbox.get(timeout=30)
        assert isinstance(out, BatchResult)
        result = out.results[0]
        published.append((result.detections.scores.tolist(), result.track_ids.tolist()))
    inbox.put(StreamEnd("cam"))
    assert isinstance(outbox.get(timeout=30), StreamEnd)
    inbox.put(END)
    stage.join(5)
    assert all(s >= 0.5 for scores, _ in published for s in scores)  # nothing under the threshold is published
    assert [len(scores) for scores, _ in published[5:8]] == [0, 0, 0]  # the hidden frames publish no box
    ids = {i for _, track_ids in published for i in track_ids if i > 0}
    assert len(ids) == 1  # the low-score frames kept the person's track: the same id after them
    started = [e for e in events if e["type"] == "track_started"]
    ended = [e for e in events if e["type"] == "track_ended"]
    assert [int(e["track_id"]) for e in started] == list(ids) == [int(e["track_id"]) for e in ended]


def test_tracker_stage_publishes_a_missed_object_at_its_predicted_box_marked_predicted() -> None:
    """The detector misses a walking person for 8 frames: for the tracker's `coast_s` (0.2 s, 5 frames at 25 fps) the
    stage publishes the person's track at the predicted box, marked predicted, in the frame entry a subscriber reads
    (valid against the schema); then nothing, and the same id when the person is detected again."""
    from engines.base import Detections
    from pipeline.events.contract import frame_entry, validate_entry
    from pipeline.frame import BatchResult, FrameResult
    from pipeline.tracker.stage import TrackerStage

    inbox: Channel[object] = Channel("in", 100)
    outbox: Channel[object] = Channel("out", 100)
    stage = TrackerStage(inbox, outbox, RunContext(), ("__background__", "person"), None, publish_threshold=0.5)
    stage.start()
    objects: list[list[dict[str, object]]] = []
    for i in range(20):
        x = 100.0 + 4 * i
        seen = not 10 <= i < 18
        boxes = np.array([[x, 50, x + 30, 130]] if seen else np.zeros((0, 4)), np.float32)
        frame = Frame("cam", i, i / 25, time.time(), None, width=640, height=360)
        det = Detections(boxes, np.full(len(boxes), 0.9, np.float32), np.ones(len(boxes), np.int64))
        inbox.put(BatchResult([FrameResult(frame, det)]))
        out = outbox.get(timeout=30)
        assert isinstance(out, BatchResult)
        fields = frame_entry(out.results[0], ("__background__", "person"), time.time())
        validate_entry(fields)
        objects.append(json.loads(fields["objects"]))
    inbox.put(END)
    stage.join(5)
    (tid,) = {o["track_id"] for frame in objects for o in frame}
    assert tid is not None
    assert [len(frame) for frame in objects[10:18]] == [1, 1, 1, 1, 1, 0, 0, 0]
    for i in range(10, 15):
        (o,) = objects[i]
        assert o["predicted"] is True and o["score"] == pytest.approx(0.9)
        box = o["box"]
        assert isinstance(box, list) and abs(box[0] - (100.0 + 4 * i)) < 4, f"frame {i}: {box} off the walk"
    assert all("predicted" not in o for i, frame in enumerate(objects) if not 10 <= i < 18 for o in frame)

def test_tracker_stage_gives_the_tracker_the_frame_size_so_no_id_passes_across_the_border() -> None:
    """A person walks out at the right edge of 640x360 frames (boxes clipped to the frame, as the detector does), and
    two frames later another enters there, inside the departed track's widened predicted box: the stage passes the
    source frame's size, so the border guard of the tracker's re-identification (on here) refuses to re-identify the
    newcomer as the departed person (without it, one id would cover both): two tracks, two track_started events."""
    from engines.base import Detections
    from pipeline.frame import BatchResult, FrameResult
    from pipeline.tracker.stage import ByteTracker, TrackerStage

    inbox: Channel[object] = Channel("in", 100)
    outbox: Channel[object] = Channel("out", 100)
    events: list[dict[str, str]] = []
    stage = TrackerStage(inbox, outbox, RunContext(), ("__background__", "person"), events.append,
                         publish_threshold=0.5, new_tracker=lambda: ByteTracker(frame_rate=25.0, reid_buffer=2.5))
    stage.start()
    ids: list[int] = []

    def send(i: int, cx: float | None) -> None:
        boxes = np.zeros((0, 4), np.float32)
        if cx is not None:
            boxes = np.clip(np.array([[cx - 10, 75, cx + 10, 125]], np.float32), 0, [640, 360, 640, 360])
        frame = Frame("cam", i, i / 25, time.time(), None, width=640, height=360)
        det = Detections(boxes, np.full(len(boxes), 0.9, np.float32), np.ones(len(boxes), np.int64))
        inbox.put(BatchResult([FrameResult(frame, det)]))
        out = outbox.get(timeout=30)
        assert isinstance(out, BatchResult)
        ids.extend(int(t) for t in out.results[0].track_ids if t > 0)

    for i in range(23):  # out of view from frame 23 on (less than 16 of its 20 px inside)
        send(i, 500.0 + 6 * i)
    for i in (23, 24):
        send(i, None)
    for k in range(6):
        send(25 + k, 634.1 - 3 * k)
    inbox.put(StreamEnd("cam"))
    assert isinstance(outbox.get(timeout=30), StreamEnd)
    inbox.put(END)
    stage.join(5)
    started = [int(e["track_id"]) for e in events if e["type"] == "track_started"]
    assert len(set(ids)) == 2 and started == list(dict.fromkeys(ids))
