"""The event contract from the subscriber's side: JSON Schema, redis-cli, the Python client and `subscribe`."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import redis

from engines import Detector
from engines.base import Detections
from pipeline.events.subscriber import Subscriber, parse_since, since_id
from pipeline.config import load_config
from pipeline.events.contract import (
    camera_state_event, detections_key, events_key, frame_entry, parse_entry, schema, validate_entry,
)
from pipeline.frame import Frame, FrameResult
from pipeline.runner import Pipeline
from tests.conftest import ROOT, run_cli
from tests.redis_servers import redis_cli

DOCS = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")


def publish_frames(client: redis.Redis, prefix: str, camera: str, n: int, start: int = 0) -> list[str]:
    """XADD `n` well-formed frame entries, as the publisher writes them; returns their ids."""
    ids = []
    for i in range(start, start + n):
        frame = Frame(camera, i, i / 25, time.time(), None, 64, 48)
        det = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.9], np.float32), np.array([0]))
        fields = frame_entry(FrameResult(frame, det, np.array([i + 1])), ["person"], time.time())
        ids.append(client.xadd(detections_key(prefix, camera), fields))  # type: ignore[arg-type]
    return ids


def pending(client: redis.Redis, key: str, group: str) -> int:
    return int(client.xpending(key, group)["pending"])


# --- the contract -------------------------------------------------------------------------------------------------
def test_schema_ships_with_the_package_and_every_field_is_documented() -> None:
    root = schema()
    jsonschema.Draft202012Validator.check_schema(root)
    assert "schema/*.json" in (ROOT / "setup.py").read_text()  # package data: installed with the package
    defs = root["$defs"]
    for kind in ("frame", "camera_state", "track_started", "track_ended"):
        for name in defs[kind]["properties"]:
            assert f"`{name}`" in DOCS, f"{kind}.{name} is not documented in docs/events.md"
    for name in defs["object"]["properties"]:
        assert f"`{name}`" in DOCS
    assert set(defs["frame"]["required"]) == set(defs["frame"]["properties"])


def test_the_schema_rejects_what_breaks_the_contract() -> None:
    frame = Frame("cam", 3, 0.12, time.time(), None, 320, 240)
    det = Detections(np.array([[1, 2, 30, 40.26]], np.float32), np.array([0.91234], np.float32), np.array([1]))
    good = frame_entry(FrameResult(frame, det, np.array([5])), ["person", "car"], time.time())
    validate_entry(good)
    validate_entry({**good, "added_later": "x"})  # fields may be added within a version
    state = camera_state_event("cam", "offline", "online", "stream ended", "rtsp://u:***@h/x", time.time())
    validate_entry(state)
    bad = [
        {**good, "v": "2"},
        {**good, "frame": "-1"},
        {k: v for k, v in good.items() if k != "latency_ms"},
        {**good, "objects": '[{"track_id":0,"label":"car","score":0.5,"box":[1,2,3,4]}]'},
        {**good, "objects": '[{"track_id":1,"label":"car","score":1.5,"box":[1,2,3,4]}]'},
        {**good, "objects": '[{"track_id":1,"label":"car","score":0.5,"box":[1,2,3]}]'},
        {**state, "url": "rtsp://u:secret@h/x"},  # a password must never reach an event
        {**state, "state": "sleeping"},
        {**state, "type": "camera_moved"},
    ]
    for fields in bad:
        with pytest.raises(jsonschema.ValidationError):
            validate_entry(fields)


def test_redis_cli_xread_reads_the_documented_entries(make_video: Callable[..., Path], detector: Detector,
                                                     redis_server: str, rclient: redis.Redis, prefix: str) -> None:
    config = load_config(data={"cameras": [{"name": "door", "url": str(make_video(6, seed=51))}],
                               "redis": {"prefix": prefix}})
    pipeline = Pipeline(config, detector, rclient)
    pipeline.start()
    assert pipeline.wait(60)
    key = detections_key(prefix, "door")
    socket_path = redis_server.removeprefix("unix://")
    # As in docs/events.md: a client we did not write, raw output (one value per line when not on a terminal).
    lines = redis_cli("-s", socket_path, "XREAD", "COUNT", "6", "STREAMS", key, "0").splitlines()
    assert lines[0] == key
    expected = rclient.xrange(key)
    flat = [x for entry_id, fields in expected for x in (entry_id, *[y for kv in fields.items() for y in kv])]
    assert lines[1:] == flat
    documented = [m for m in re.findall(r"^\| `(\w+)`", DOCS, re.M)]
    for entry_id, fields in expected:
        assert list(fields) == ["v", "camera", "frame", "pts", "capture_ts", "publish_ts", "latency_ms", "width",
                                "height", "objects"]
        assert set(fields) <= set(documented)
        assert re.fullmatch(r"\d{13}-\d+", entry_id)
        latency = float(fields["latency_ms"])
        assert latency == pytest.approx((float(fields["publish_ts"]) - float(fields["capture_ts"])) * 1000, abs=0.1)
        assert int(entry_id.split("-")[0]) / 1000 <= float(fields["publish_ts"]) + 0.001  # id: put time, ms


# --- the Python client --------------------------------------------------------------------------------------------
def test_parse_since_accepts_iso_durations_and_epoch() -> None:
    now = 1_800_000_000.0
    assert parse_since("10m", now) == now - 600
    assert parse_since("1h30m", now) == now - 5400
    assert parse_since("2d", now) == now - 2 * 86400
    assert parse_since("90s", now) == now - 90
    assert parse_since("2027-01-15T08:00:00Z") == datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp()
    assert parse_since("2027-01-15T09:00:00+01:00") == datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp()
    assert parse_since("2027-01-15T08:00:00") == datetime(2027, 1, 15, 8).timestamp()  # local time
    assert parse_since("1795472042.5") == 1795472042.5
    for bad in ("yesterday", "10", "10x", "", "2027-13-01"):
        with pytest.raises(ValueError, match="not a time"):
            parse_since(bad)
    assert since_id(1795472042.5) == "1795472042499-18446744073709551615"


def test_since_replays_from_a_point_in_time(rclient: redis.Redis, prefix: str) -> None:
    publish_frames(rclient, prefix, "cam", 10)
    time.sleep(0.05)
    cut = time.time()
    later = publish_frames(rclient, prefix, "cam", 10, start=10)
    for since in (cut, datetime.fromtimestamp(cut, timezone.utc)):
        got = list(Subscriber(rclient, prefix, ["cam"], since=since).iter(timeout_s=0.3))
        assert [e["id"] for e in got] == later and [e["frame"] for e in got] == list(range(10, 20))
    from_start = list(Subscriber(rclient, prefix, from_start=True).iter(timeout_s=0.3))  # cameras discovered
    assert len(from_start) == 20 and all(e["stream"] == detections_key(prefix, "cam") for e in from_start)


def test_blocking_iterator_waits_for_new_entries_and_times_out(rclient: redis.Redis, prefix: str) -> None:
    publish_frames(rclient, prefix, "cam", 3)
    sub = Subscriber(rclient, prefix, ["cam"])  # from the end: the 3 stored entries are not new
    started = time.monotonic()
    assert list(sub.iter(timeout_s=0.6)) == []
    assert time.monotonic() - started >= 0.6  # it waited its timeout for new entries before giving up
    publish_frames(rclient, prefix, "cam", 2, start=3)
    assert [e["frame"] for e in sub.iter(timeout_s=0.3)] == [3, 4]


def test_consumer_group_redelivers_unacknowledged_entries_after_a_restart(rclient: redis.Redis, prefix: str) -> None:
    ids = publish_frames(rclient, prefix, "cam", 10)
    key = detections_key(prefix, "cam")
    first = Subscriber(rclient, prefix, ["cam"], from_start=True, group="g", consumer="c1")
    got = first.read(count=4)
    assert [e["id"] for e in got] == ids[:4]
    first.ack(*got[:2])  # handled two, then "crashed"
    assert pending(rclient, key, "g") == 2
    again = Subscriber(rclient, prefix, ["cam"], group="g", consumer="c1")  # the restart: same names
    replay = [e["id"] for e in again.iter(timeout_s=0.3)]  # auto_ack: each acknowledged when the next is asked
    assert replay == ids[2:]  # its own 2 pending entries first, then the ones never delivered; no gap
    assert pending(rclient, key, "g") == 0
    assert list(Subscriber(rclient, prefix, ["cam"], group="g", consumer="c1").iter(timeout_s=0.3)) == []


def test_consumers_of_a_group_share_entries_and_ack_on_next(rclient: redis.Redis, prefix: str) -> None:
    key = detections_key(prefix, "cam")
    a = Subscriber(rclient, prefix, ["cam"], from_start=True, group="workers", consumer="a")
    b = Subscriber(rclient, prefix, ["cam"], from_start=True, group="workers", consumer="b")
    a.read(block_ms=10)
    b.read(block_ms=10)  # both joined: the group exists
    ids = publish_frames(rclient, prefix, "cam", 6)
    got_a = [e["id"] for e in a.read(count=3, block_ms=100)]
    got_b = [e["id"] for e in b.read(count=10, block_ms=100)]
    assert sorted(got_a + got_b) == ids and not set(got_a) & set(got_b)
    assert a.ack(*[{"stream": key, "id": i} for i in got_a]) == 3
    more = publish_frames(rclient, prefix, "cam", 3, start=6)
    seen = []
    for entry in b.iter(timeout_s=0.3):
        seen.append(entry["id"])
        if len(seen) == 2:
            break  # the loop body finished entry 1 (acknowledged on asking for entry 2), not entry 2
    assert seen == more[:2]
    info = rclient.xpending_range(key, "workers", "-", "+", 100, consumername="b")
    # Pending for b: its first read (never acknowledged), entry 2, and entry 3 (read in the same batch, not handled)
    assert sorted(p["message_id"] for p in info) == sorted(got_b + more[1:])


def test_events_stream_filtered_by_camera(rclient: redis.Redis, prefix: str) -> None:
    for camera, previous, state in (("lobby", "starting", "connecting"), ("yard", "starting", "connecting"),
                                    ("lobby", "connecting", "online")):
        rclient.xadd(events_key(prefix), camera_state_event(camera, state, previous, None, "rtsp://h/s", time.time()))
    alone = list(Subscriber(rclient, prefix, ["lobby"], from_start=True, events=True).iter(timeout_s=0.3))
    assert [(e["type"], e["camera"], e["state"]) for e in alone] == [
        ("camera_state", "lobby", "connecting"), ("camera_state", "lobby", "online")]
    assert isinstance(alone[0]["ts"], float) and alone[0]["stream"] == events_key(prefix)
    group = Subscriber(rclient, prefix, ["lobby"], from_start=True, events=True, group="g", consumer="c")
    assert len(list(group.iter(timeout_s=0.3))) == 2
    assert pending(rclient, events_key(prefix), "g") == 0  # the yard event was filtered out and acknowledged


def test_pubsub_mirror_sends_each_entry_as_json(make_video: Callable[..., Path], detector: Detector,
                                                rclient: redis.Redis, prefix: str) -> None:
    listener = rclient.pubsub()
    listener.psubscribe(f"{prefix}:*")
    assert listener.get_message(timeout=1)["type"] == "psubscribe"  # type: ignore[index]
    config = load_config(data={"cameras": [{"name": "door", "url": str(make_video(5, seed=52))}],
                               "redis": {"prefix": prefix, "pubsub": True}})
    pipeline = Pipeline(config, detector, rclient)
    pipeline.start()
    assert pipeline.wait(60)
    messages = []
    while (message := listener.get_message(timeout=0.5)) is not None:
        messages.append(message)
    listener.close()
    frames = [json.loads(m["data"]) for m in messages if m["channel"] == detections_key(prefix, "door")]
    stored = rclient.xrange(detections_key(prefix, "door"))
    assert [f["id"] for f in frames] == [i for i, _ in stored]
    assert frames[0] == {"stream": detections_key(prefix, "door"), **parse_entry(*stored[0])}
    assert any(m["channel"] == events_key(prefix) for m in messages)


# --- the CLI ------------------------------------------------------------------------------------------------------
def test_subscribe_usage_errors_exit_2(redis_url: str) -> None:
    cases = {
        ("--group", "g"): "--group needs --consumer",
        ("--consumer", "c"): "--consumer needs --group",
        ("--since", "last tuesday"): "--since 'last tuesday' is not a time",
        ("--since", "10m", "--from-start"): "exclude each other",
        ("--redis-ca-file", "/no/such/ca.pem"): "no such file",
    }
    for args, message in cases.items():
        result = run_cli("subscribe", "--redis-url", redis_url, *args, timeout=60)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    unset = run_cli("subscribe", "--redis-url", "redis://:${NO_SUCH_PASSWORD_VAR}@127.0.0.1:9/0")
    assert unset.returncode == 2 and "environment variable NO_SUCH_PASSWORD_VAR is not set" in unset.stderr
    plain = run_cli("run", "--source", "x.mp4", "--redis-url", "redis://127.0.0.1:9/0", "--redis-ca-file",
                    str(ROOT / "setup.py"))
    assert plain.returncode == 2 and "ca_file: only for a rediss:// url" in plain.stderr


def test_subscribe_events_since_and_group(redis_url: str, rclient: redis.Redis, prefix: str) -> None:
    old = publish_frames(rclient, prefix, "cam", 3)
    rclient.xadd(events_key(prefix), camera_state_event("cam", "online", "connecting", None, "rtsp://h/s", time.time()))
    common = ("--redis-url", redis_url, "--prefix", prefix, "--timeout", "0.5")
    events = run_cli("subscribe", *common, "--events", "--from-start")
    assert [json.loads(line)["state"] for line in events.stdout.splitlines()] == ["online"]
    recent = run_cli("subscribe", *common, "--since", "10m", "--camera", "cam")
    assert [json.loads(line)["id"] for line in recent.stdout.splitlines()] == old
    future = run_cli("subscribe", *common, "--since", "2099-01-01T00:00:00Z")
    assert future.returncode == 0 and future.stdout == ""
    grouped = run_cli("subscribe", *common, "--group", "g", "--consumer", "c", "--from-start", "--count", "2")
    assert [json.loads(line)["id"] for line in grouped.stdout.splitlines()] == old[:2]
    assert pending(rclient, detections_key(prefix, "cam"), "g") == 0  # printed lines are acknowledged
    rest = run_cli("subscribe", *common, "--group", "g", "--consumer", "c")
    assert [json.loads(line)["id"] for line in rest.stdout.splitlines()] == old[2:]
