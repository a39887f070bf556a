"""`run --resume` fences the stream it resumes: a write of the killed run still on its way when the resumed run read
its resume point is refused by Redis instead of publishing a frame twice (tests/chaos/resume_chaos.py kills `run`
itself in a loop)."""
from __future__ import annotations

import time

import pytest
import redis

from pipeline.events.bus import fence_and_resume_point
from pipeline.events.contract import detections_key


def test_a_late_write_of_the_killed_run_is_refused_after_the_resume_point(rclient: redis.Redis, prefix: str) -> None:
    prefix = f"{prefix}-fence"  # bare entries (frame numbers only), not validated against the schema as published
    key = detections_key(prefix, "clip")
    assert fence_and_resume_point(rclient, prefix, "clip") is None  # nothing published yet: from the start
    killed_clock = int(time.time() * 1000) - 5000  # the killed run wrote with its own ids, a few seconds ago
    for frame in range(10):
        rclient.xadd(key, {"frame": str(frame)}, id=f"{killed_clock + frame}-0")
    assert fence_and_resume_point(rclient, prefix, "clip") == 9
    # Frame 10 of the killed run, sent before the kill and held by the network, arrives after the resume point.
    with pytest.raises(redis.ResponseError, match="equal or smaller than the target stream top item"):
        rclient.xadd(key, {"frame": "10"}, id=f"{killed_clock + 10}-0")
    # The resumed run's frame 10 (an id from its clock, after the fence) is the one published.
    rclient.xadd(key, {"frame": "10"}, id=f"{int(time.time() * 1000) + 1}-0")
    assert [int(f["frame"]) for _, f in rclient.xrange(key)] == list(range(11))
    assert fence_and_resume_point(rclient, prefix, "clip") == 10  # fencing again is harmless
    rclient.delete(key)
