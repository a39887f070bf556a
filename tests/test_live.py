"""Live-source policies: fair round-robin batching, drop-oldest for live cameras, rate caps, realtime pacing,
bad camera URLs, and cameras added and removed while the pipeline runs."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from engines import Detector
from pipeline.inference.batcher import CameraQueues
from pipeline.config import CameraConfig, load_config
from pipeline.events.contract import detections_key, events_key
from pipeline.frame import END, Frame, StreamEnd
from pipeline.runner import Pipeline
from pipeline.stage import RunContext


def _frame(stream: str, index: int) -> Frame:
    return Frame(stream, index, index / 25, time.time(), np.zeros((4, 4, 3), np.uint8))


def test_camera_queues_serve_round_robin_and_drop_oldest_for_live() -> None:
    ctx = RunContext()
    queues = CameraQueues(ctx)
    busy = queues.open("busy", capacity=2, drop_oldest=True)
    quiet = queues.open("quiet", capacity=8, drop_oldest=False)
    for i in range(10):  # a live camera far ahead of the engine: only its 2 freshest frames wait
        queues.put(busy, _frame("busy", i))
    for i in range(3):
        queues.put(quiet, _frame("quiet", i))
    order = [queues.get(timeout=1) for _ in range(5)]
    assert [(f.stream, f.index) for f in order] == [  # type: ignore[attr-defined]
        ("busy", 8), ("quiet", 0), ("busy", 9), ("quiet", 1), ("quiet", 2)]
    assert ctx.streams["busy"].dropped == 8 and ctx.streams["busy"].drop_reasons == {
        "engine busy: oldest frame dropped": 8}
    assert ctx.stream("quiet").dropped == 0
    queues.put(busy, StreamEnd("busy"))
    assert queues.get(timeout=1) == StreamEnd("busy")
    queues.end()
    assert queues.get(timeout=1) is END


def test_a_camera_added_again_waits_until_its_old_readers_frames_are_out() -> None:
    ctx = RunContext()
    queues = CameraQueues(ctx)
    old = queues.open("cam", capacity=8, drop_oldest=False)
    other = queues.open("other", capacity=8, drop_oldest=False)
    for i in range(3):  # the removed reader's last frames, still queued, then its end
        queues.put(old, _frame("cam", 10 + i))
    queues.put(old, StreamEnd("cam"))
    new = queues.open("cam", capacity=8, drop_oldest=False)  # added again under the same name
    for i in range(2):
        queues.put(new, _frame("cam", i))
        queues.put(other, _frame("other", i))
    got = [queues.get(timeout=1) for _ in range(8)]
    cam = [item.index if isinstance(item, Frame) else "end" for item in got if item.stream == "cam"]  # type: ignore[attr-defined]
    assert cam == [10, 11, 12, "end", 0, 1]  # never back and forth between the two readers
    assert [item.index for item in got if item.stream == "other"] == [0, 1]  # type: ignore[attr-defined]


def test_camera_queues_rate_cap_drops_frames_sooner_than_max_fps() -> None:
    ctx = RunContext()
    queues = CameraQueues(ctx)
    key = queues.open("capped", capacity=100, drop_oldest=False, max_fps=5)
    served = []
    started = time.monotonic()
    for i in range(50):  # 50 frames over ~1 s, taken as they come
        queues.put(key, _frame("capped", i))
        try:
            served.append(queues.get(timeout=0))
        except Exception:
            pass
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert 0 < len(served) <= elapsed * 5 + 1
    assert ctx.streams["capped"].dropped == 50 - len(served)


def test_a_live_camera_s_frames_pushed_out_before_its_next_max_fps_slot_count_as_capped_not_engine_busy() -> None:
    ctx = RunContext()
    queues = CameraQueues(ctx)
    key = queues.open("cam", capacity=1, drop_oldest=True, max_fps=0.5)  # one slot every 2 s
    queues.put(key, _frame("cam", 0))
    assert queues.get(timeout=1).index == 0  # type: ignore[attr-defined]  # served: the next slot is 2 s away
    for i in range(1, 6):  # 25 fps camera, 1-frame live queue: each new frame pushes the previous one out
        queues.put(key, _frame("cam", i))
    assert ctx.streams["cam"].drop_reasons == {"over the camera's max_fps": 4}  # the cap, not a busy engine

    fresh = queues.open("fresh", capacity=3, drop_oldest=True, max_fps=1000)
    for i in range(3):
        queues.put(fresh, _frame("fresh", i))
    assert queues.get(timeout=1).index == 2  # type: ignore[attr-defined]  # its slot goes to the newest frame
    assert ctx.streams["fresh"].drop_reasons == {"over the camera's max_fps": 2}

    busy = queues.open("busy", capacity=1, drop_oldest=True, max_fps=1000)  # due at once: the engine is late
    for i in range(3):
        queues.put(busy, _frame("busy", i))
    assert ctx.streams["busy"].drop_reasons == {"engine busy: oldest frame dropped": 2}


def _run_until(pipeline: Pipeline, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_bad_camera_urls_give_clear_errors_and_retries_while_a_file_completes(
    make_video: Callable[..., Path], detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    config = load_config(data={
        "cameras": [
            {"name": "good", "url": str(make_video(20, seed=21))},
            {"name": "nohost", "url": "rtsp://viewer:pw@no-such-host.invalid/stream"},
            {"name": "refused", "url": "rtsp://127.0.0.1:9/stream"},
            {"name": "scheme", "url": "madeup://127.0.0.1/stream"},
        ],
        "redis": {"prefix": prefix},
        "runtime": {"reconnect": {"initial_s": 0.1, "max_s": 0.4}},
    })
    pipeline = Pipeline(config, detector, rclient)
    pipeline.start()
    streams = pipeline.ctx.streams
    _run_until(pipeline, lambda: streams["good"].state == "finished" and streams["refused"].reconnects >= 2
               and streams["nohost"].reconnects >= 2, timeout=60)
    pipeline.request_stop()
    assert pipeline.wait(timeout=30)
    report = pipeline.report()
    s = report.streams
    assert s["good"]["published"] == 20
    assert s["nohost"]["error"] == "unknown host 'no-such-host.invalid' (Name or service not known)"
    assert s["refused"]["error"] == "cannot open: Connection refused"
    assert s["scheme"]["state"] == "failed" and s["scheme"]["error"] == "unsupported URL scheme 'madeup'"
    assert s["scheme"]["reconnects"] == 0  # retrying cannot help
    assert set(report.failed_streams) == {"nohost", "refused", "scheme"}
    events = [f for _, f in rclient.xrange(events_key(prefix)) if f["type"] == "camera_state"]
    refused = [(e["previous"], e["state"]) for e in events if e["camera"] == "refused"]
    assert refused[:2] == [("starting", "connecting"), ("connecting", "offline")]
    assert ("offline", "offline") not in refused and len(refused) <= 3  # retries do not flood the events stream
    assert all("pw" not in e["url"] for e in events)


def test_realtime_file_is_paced_like_a_camera(make_video: Callable[..., Path], detector: Detector,
                                              rclient: redis.Redis, prefix: str) -> None:
    config = load_config(data={
        "cameras": [{"name": "paced", "url": str(make_video(25, seed=22)), "realtime": True}],
        "redis": {"prefix": prefix},
    })
    pipeline = Pipeline(config, detector, rclient)
    started = time.monotonic()
    pipeline.start()
    assert pipeline.wait(timeout=30)
    took = time.monotonic() - started
    s = pipeline.report().streams["paced"]
    assert took >= 0.9  # 25 frames at 25 fps: paced over about one second, not as fast as decoding allows
    assert s["decoded"] == s["published"] + s["dropped"] == 25


def test_cameras_added_and_removed_at_runtime(make_video: Callable[..., Path], detector: Detector,
                                              rclient: redis.Redis, prefix: str) -> None:
    long_video = make_video(750, seed=23)
    config = load_config(data={"cameras": [], "redis": {"prefix": prefix}})
    pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
    pipeline.start()
    pipeline.add_source(CameraConfig(name="a", url=str(long_video), realtime=True))
    _run_until(pipeline, lambda: pipeline.ctx.streams["a"].published > 5, timeout=30)
    assert pipeline.remove_source("a")
    assert pipeline.camera_names() == []
    removed_at = pipeline.ctx.streams["a"].published
    pipeline.add_source(CameraConfig(name="a", url=str(long_video), realtime=True))  # the name is free again
    # The re-added camera really runs: a new reader publishes more frames, and only one reader exists.
    _run_until(pipeline, lambda: pipeline.ctx.streams["a"].published > removed_at + 5, timeout=60)
    assert pipeline.camera_names() == ["a"] and pipeline.is_running("a")
    assert [t.name for t in threading.enumerate()].count("source-a") == 1
    pipeline.request_stop()
    assert pipeline.wait(timeout=30)
    s = pipeline.report().streams["a"]
    assert s["decoded"] == s["published"] + s["dropped"]
    frames = [int(f["frame"]) for _, f in rclient.xrange(detections_key(prefix, "a"))]
    assert len(frames) == s["published"], frames
    # Two readers, one after the other: the index goes back once, where the second starts the file again (its
    # first frames may have been dropped by the live queue). Had the first kept running, they would interleave.
    assert sum(b <= a for a, b in zip(frames, frames[1:])) == 1, frames
