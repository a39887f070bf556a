"""The publisher's outbox against real redis-server processes: down at start, killed, hung, ahead of our ids."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from engines import Detector
from pipeline.events.bus import dedicated_client
from pipeline.config import load_config
from pipeline.events.outbox import Entry, Outbox
from pipeline.runner import Pipeline
from tests.redis_servers import RedisProcess, validate_streams
from tests.waiting import wait_for


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server on a TCP port, not started yet."""
    proc = RedisProcess(tmp_path / "redis")
    yield proc
    proc.__exit__()


def make_outbox(url: str, **kwargs: object) -> tuple[Outbox, dict[str, list[object]]]:
    seen: dict[str, list[object]] = {"delivered": [], "dropped": []}

    def delivered(entries: list[Entry]) -> None:
        seen["delivered"] += [e.tag for e in entries]

    def dropped(entries: list[Entry], reason: str) -> None:
        seen["dropped"] += [(e.tag, reason) for e in entries]

    client = dedicated_client(redis.Redis.from_url(url, decode_responses=True), socket_timeout=1.0)
    options: dict[str, object] = {"retry_initial_s": 0.05, "retry_max_s": 0.2, **kwargs}
    outbox = Outbox(client, on_delivered=delivered, on_dropped=dropped, where=url, **options)  # type: ignore[arg-type]
    outbox.start()
    return outbox, seen


def fields(i: int) -> dict[str, str]:
    return {"n": str(i), "pad": "x" * 50}


def numbers(client: redis.Redis, key: str) -> list[int]:
    return [int(f["n"]) for _, f in client.xrange(key)]


def test_entries_arrive_in_order_with_explicit_increasing_ids(redis_url: str, rclient: redis.Redis) -> None:
    prefix = f"raw{uuid.uuid4().hex[:8]}"  # not the `prefix` fixture: these entries are not the event contract's
    outbox, seen = make_outbox(redis_url)
    ids = []

    def produce(key: str) -> None:
        for i in range(600):
            ids.append((key, outbox.put(key, fields(i), tag=(key, i))))

    threads = [threading.Thread(target=produce, args=(f"{prefix}:k{t}",)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outbox.wait_idle(10)
    for t in range(2):
        key = f"{prefix}:k{t}"
        stored = rclient.xrange(key)
        assert [int(f["n"]) for _, f in stored] == list(range(600))
        assert [i for i, _ in stored] == [i for k, i in ids if k == key]  # the ids `put` gave
    stats = outbox.stats()
    assert (stats.delivered_entries, stats.dropped_entries, stats.buffered_entries, stats.connected) == (
        1200, 0, 0, True)
    assert len(seen["delivered"]) == 1200 and not seen["dropped"]
    assert outbox.close(1) == 0


def test_redis_down_at_start_buffers_then_delivers_in_order(server: RedisProcess,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.events.outbox")
    outbox, seen = make_outbox(server.url)
    for i in range(50):
        outbox.put("s:a", fields(i), tag=i)
    wait_for(lambda: outbox.stats().errors >= 1, 60, "a failed attempt")
    stats = outbox.stats()
    assert not stats.connected and stats.buffered_entries == 50 and stats.errors >= 1
    assert stats.buffered_bytes == 50 * (len("s:a") + len("n") + len("pad") + 50) + sum(len(str(i)) for i in range(50))
    server.start()
    assert outbox.wait_idle(60)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    assert numbers(client, "s:a") == list(range(50))
    assert seen["delivered"] == list(range(50)) and outbox.stats().connected
    outbox.close(1)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Redis unavailable at" in m for m in messages) == 1
    assert sum("delivered 50 buffered entries, dropped 0" in m for m in messages) == 1


def test_beyond_the_bound_the_oldest_are_dropped_and_counted(server: RedisProcess,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.events.outbox")
    by_count, seen = make_outbox(server.url, max_entries=20)
    by_bytes, seen_bytes = make_outbox(server.url, max_bytes=1000)  # about 9 entries of ~110 bytes
    for i in range(50):
        by_count.put("s:count", fields(i), tag=i)
        by_bytes.put("s:bytes", fields(i), tag=i)
    wait_for(lambda: by_count.stats().errors > 0 and by_bytes.stats().errors > 0, 5, "the writers to find Redis down")
    assert [tag for tag, _ in seen["dropped"]] == list(range(30))  # exactly the 30 oldest
    assert {reason for _, reason in seen["dropped"]} == {"redis buffer full"}
    assert by_count.stats().dropped_entries == 30 and by_count.stats().buffered_entries == 20
    kept = by_bytes.stats()
    assert kept.buffered_bytes <= 1000 and kept.dropped_entries == 50 - kept.buffered_entries
    assert [tag for tag, _ in seen_bytes["dropped"]] == list(range(kept.dropped_entries))
    server.start()
    assert by_count.wait_idle(10) and by_bytes.wait_idle(10)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    assert numbers(client, "s:count") == list(range(30, 50))
    assert numbers(client, "s:bytes") == list(range(kept.dropped_entries, 50))
    for outbox in (by_count, by_bytes):
        outbox.close(1)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("buffer full" in m for m in messages) == 2  # once per outage and outbox, not once per entry
    assert any("delivered 20 buffered entries, dropped 30" in m for m in messages)


def test_put_never_waits_on_a_hung_redis_and_resending_creates_no_duplicates(server: RedisProcess) -> None:
    server.start()
    outbox, seen = make_outbox(server.url)
    outbox.put("s:h", fields(-1), tag=-1)
    assert outbox.wait_idle(5)
    server.pause()  # SIGSTOP: connections stay open, nothing answers; the writer's socket times out (1 s)
    try:
        # 300 puts all return while Redis still hangs. Had a put waited on Redis it would take the writer's socket
        # timeout (1 s) each, 300 s in all: a generous deadline tells them apart without timing each call.
        done = threading.Event()

        def producer() -> None:
            for i in range(300):
                outbox.put("s:h", fields(i), tag=i)
                time.sleep(0.005)
            done.set()

        threading.Thread(target=producer, daemon=True).start()
        assert done.wait(60), "put() waited on a hung Redis"
        assert server.proc is not None and server.proc.poll() is None  # still paused, not gone
        wait_for(lambda: not outbox.stats().connected, 30, "the writer to notice")
    finally:
        server.resume()  # the paused server now executes what was sent before the timeout: those ids exist
    assert outbox.wait_idle(15)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    assert numbers(client, "s:h") == list(range(-1, 300))  # each exactly once, in order
    assert sorted(seen["delivered"]) == list(range(-1, 300)) and outbox.stats().dropped_entries == 0  # type: ignore[type-var]
    assert outbox.confirmed_on_resend > 0  # the hung server executed a chunk whose reply we never got
    outbox.close(1)


def test_a_stream_ahead_of_our_ids_gets_the_next_ones(server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    ahead = int(time.time() * 1000) + 86_400_000  # a writer whose clock is a day ahead
    client.xadd("s:ahead", {"n": "-1", "pad": ""}, id=f"{ahead}-5")
    outbox, seen = make_outbox(server.url)
    for i in range(10):
        outbox.put("s:ahead", fields(i), tag=i)
    assert outbox.wait_idle(5)
    stored = client.xrange("s:ahead")
    assert [int(f["n"]) for _, f in stored] == list(range(-1, 10))
    assert stored[1][0] == f"{ahead}-6"
    assert outbox.stats().delivered_entries == 10 and any("ahead of this publisher" in r.getMessage()
                                                          for r in caplog.records)
    outbox.close(1)


def test_a_server_restarted_empty_between_two_writes_is_reported(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """No write fails when Redis restarts between two of them (redis-py reconnects by itself), so nothing looked like an
    outage and the lost data went unreported. The check now follows every new connection."""
    caplog.set_level(logging.INFO, logger="pipeline.events.outbox")
    with RedisProcess(tmp_path / "redis", persist=False) as server:
        outbox, seen = make_outbox(server.url)
        for i in range(5):
            outbox.put("s:a", fields(i), tag=i)
        assert outbox.wait_idle(10)
        server.kill()
        server.start()  # no persistence: back without its data, before the next write
        for i in range(5, 8):
            outbox.put("s:a", fields(i), tag=i)
        assert outbox.wait_idle(10)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert numbers(client, "s:a") == [5, 6, 7]  # the new entries only, after the old ids
        assert seen["delivered"] == list(range(8)) and outbox.went_backwards == 1
        lost = [r.getMessage() for r in caplog.records if "went backwards" in r.getMessage()]
        assert len(lost) == 1 and "s:a" in lost[0] and "the stream is gone" in lost[0]
        outbox.close(1)


def test_entries_redis_rejects_are_dropped_and_counted(server: RedisProcess) -> None:
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.set("s:string", "not a stream")
    outbox, seen = make_outbox(server.url)
    outbox.put("s:string", fields(0), tag="bad")
    outbox.put("s:ok", fields(1), tag="good")
    with pytest.raises(TypeError, match="must be strings"):  # a caller's bug surfaces in the caller
        outbox.put("s:ok", {"n": 2}, tag="not a string")  # type: ignore[dict-item]
    assert outbox.wait_idle(5)
    assert seen["delivered"] == ["good"] and seen["dropped"] == [("bad", "rejected by Redis")]
    stats = outbox.stats()
    assert (stats.delivered_entries, stats.dropped_entries, stats.errors) == (1, 1, 1)
    outbox.close(1)


def test_close_with_redis_down_reports_what_was_not_delivered(server: RedisProcess) -> None:
    outbox, seen = make_outbox(server.url)
    for i in range(5):
        outbox.put("s:c", fields(i), tag=i)
    assert outbox.close(timeout=0.3) == 5  # returns after its timeout, with what it could not deliver
    assert [tag for tag, _ in seen["dropped"]] == list(range(5))
    assert seen["dropped"][0][1] == "undelivered at shutdown (Redis unavailable)"
    assert outbox.put("s:c", fields(5), tag=5) is None and outbox.stats().dropped_entries == 6


def test_pipeline_runs_without_redis_and_delivers_once_it_is_up(
    server: RedisProcess, make_video: Callable[..., Path], detector: Detector
) -> None:
    config = load_config(data={
        "cameras": [{"name": "cam", "url": str(make_video(25, seed=41)), "realtime": True}],
        "redis": {"prefix": "late", "retry_initial_s": 0.05, "retry_max_s": 0.2},
    })
    pipeline = Pipeline(config, detector, redis.Redis.from_url(server.url, decode_responses=True))
    pipeline.start()
    wait_for(lambda: pipeline.publisher_stats().buffered_entries >= 5, 120, "frames to wait in the buffer")
    stats = pipeline.publisher_stats()
    assert not stats.connected and stats.delivered_entries == 0 and stats.max_entries == 100_000
    server.start()
    assert pipeline.wait(timeout=120)
    report = pipeline.report()
    s = report.streams["cam"]
    # Nothing lost to Redis being away; a paced file is live, so on a busy machine the engine may skip a frame.
    assert s["decoded"] == 25 == s["published"] + s["dropped"] and report.ok
    assert set(s["drop_reasons"]) <= {"engine busy: oldest frame dropped"}, s["drop_reasons"]
    assert report.publisher["dropped_entries"] == 0
    client = redis.Redis.from_url(server.url, decode_responses=True)
    frames = [int(f["frame"]) for _, f in client.xrange("late:detections:cam")]
    assert frames == sorted(set(frames)) and len(frames) == s["published"] >= 5
    assert validate_streams(client, "late") >= len(frames)
    assert report.publisher["connected"] and report.publisher["buffered_entries"] == 0
