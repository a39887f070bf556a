"""Promises of the README and docs, each through the real CLI or API with real Redis and RTSP servers: the embedded
Redis path and `demo`'s summary, a run started with Redis down, SIGINT and a second Ctrl-C, SIGHUP with an invalid file
and with changed cameras, which backend `auto` picks, every metric family documented and served, `--help` of every
subcommand, `max_fps`, `live_queue_size` and `maxlen` from a config file, `drain_timeout_s` and `flush_timeout_s`,
reconnect backoff (doubling, jitter, reset after `healthy_s`), a subscriber across a Redis outage, and `/readyz` while
buffering and beyond the bound. Waits are on events (log lines, stream lengths) with generous deadlines."""
from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
import torch
from prometheus_client.parser import text_string_to_metric_families

from engines import Detector, create_detector
from lab.synth import SceneSpec, write_video
from pipeline.config import load_config
from pipeline.events.contract import detections_key, events_key
from pipeline.runner import Pipeline
from tests.cli_process import CliProcess
from tests.conftest import ROOT, run_cli
from tests.redis_servers import RedisProcess, free_port
from tests.rtsp import GSTREAMER_MISSING, RtspServer, gstreamer_available, make_camera_file
from tests.system_deps import needs_system
from tests.test_subscribe import publish_frames
from tests.waiting import wait_for


def summary_rows(stdout: str) -> dict[str, dict[str, object]]:
    """The per-camera table of the run summary: name -> state, decoded, published, dropped, objects, reconnects."""
    rows = {}
    for line in stdout.splitlines():
        m = re.match(r"^  (\S+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", line)
        if m and m.group(1) != "camera":
            rows[m.group(1)] = {"state": m.group(2), **{k: int(v) for k, v in zip(
                ("decoded", "published", "dropped", "objects", "reconnects"), m.groups()[2:])}}
    return rows


def test_demo_summary_and_the_embedded_redis_that_subscribe_attaches_to(tmp_path: Path) -> None:
    env = {"RPN_STATE_DIR": str(tmp_path / "state")}
    demo = run_cli("demo", "--no-progress", env=env, timeout=600)
    assert demo.returncode == 0, demo.stderr
    # The printed address is the embedded server's socket, under RPN_STATE_DIR.
    assert re.search(r"Publishing to Redis at unix://\S+redis.socket", demo.stderr), demo.stderr
    assert list((tmp_path / "state").rglob("*.rdb")), "the embedded server keeps its data in RPN_STATE_DIR"
    head = re.search(r"(\d+) frames published from 1 source\(s\) at [\d.]+ fps, (\d+) objects published", demo.stdout)
    assert head, demo.stdout
    published, objects = int(head.group(1)), int(head.group(2))
    sample = summary_rows(demo.stdout)["sample"]
    assert sample == {"state": "finished", "decoded": 250, "published": 250, "dropped": 0,
                      "objects": objects, "reconnects": 0}  # the bundled sample has 250 frames
    assert published == 250 and objects > 0
    # `subscribe` without --redis-url attaches to the same embedded server (its data in RPN_STATE_DIR).
    sub = run_cli("subscribe", "--from-start", "--count", "250", "--timeout", "10", env=env)
    assert sub.returncode == 0, sub.stderr
    entries = [json.loads(line) for line in sub.stdout.splitlines()]
    assert [e["frame"] for e in entries] == list(range(250))
    assert sum(len(e["objects"]) for e in entries) == objects


def test_run_started_with_redis_down_counts_undelivered_entries_and_exits_1(
    make_video: Callable[..., Path], tmp_path: Path
) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("redis: {flush_timeout_s: 1.0, retry_initial_s: 0.1, retry_max_s: 0.5}\n")
    result = run_cli("run", "--config", str(config), "--source", f"door={make_video(6, seed=97)}",
                     "--redis-url", f"redis://127.0.0.1:{free_port()}/0", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    m = re.search(r"Redis: 0 entries delivered, (\d+) dropped \((\d+) undelivered at shutdown[^)]*\)", result.stdout)
    assert m, result.stdout
    assert int(m.group(1)) == int(m.group(2)) >= 6  # the 6 frames and the camera's events, each counted
    assert summary_rows(result.stdout)["door"]["decoded"] == 6


def test_sigint_drains_and_a_second_ctrl_c_drops_in_flight_frames(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    clip = make_video(200, seed=98)  # realtime: 8 s at 25 fps, longer than the test waits
    config = tmp_path / "p.yaml"
    config.write_text(f"cameras: [{{name: cam, url: '{clip}', realtime: true}}]\nruntime: {{drain_timeout_s: 5}}\n")
    for presses in (1, 2):
        key_prefix = f"{prefix}{presses}"
        with CliProcess("run", "--config", str(config), "--redis-url", redis_url, "--prefix", key_prefix) as proc:
            wait_for(lambda: rclient.xlen(detections_key(key_prefix, "cam")) >= 5, 120, "frames published")
            proc.signal(signal.SIGINT)
            if presses == 2:
                proc.wait_for("stop requested: draining")
                proc.signal(signal.SIGINT)
            rc = proc.wait(120)
            if presses == 2 and "second SIGINT" not in proc.stderr:
                # The drain was already over: Python was exiting, and a Ctrl-C then ends it as any program (-2).
                assert rc in (0, -signal.SIGINT), proc.stderr
                continue
            assert rc == 0, proc.stderr
            row = summary_rows(proc.stdout)["cam"]
            assert "(stopped on request)" in proc.stdout
            assert row["decoded"] == row["published"] + row["dropped"]  # every decoded frame accounted for
            assert rclient.xlen(detections_key(key_prefix, "cam")) == row["published"] < 200
            if presses == 2:
                assert "second SIGINT: dropping in-flight frames now" in proc.stderr


def test_sighup_with_an_invalid_file_keeps_the_running_cameras(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    clip = make_video(200, seed=98)
    config = tmp_path / "p.yaml"
    config.write_text(f"cameras: [{{name: a, url: '{clip}', realtime: true}}]\n")
    key = detections_key(prefix, "a")
    with CliProcess("run", "--config", str(config), "--redis-url", redis_url, "--prefix", prefix,
                    "--keep-running") as proc:
        wait_for(lambda: rclient.xlen(key) >= 3, 120, "camera a publishing")
        config.write_text("cameras: [{name: a, url: 'x', transport: pigeon}]\n")
        proc.signal(signal.SIGHUP)
        proc.wait_for(f"reload failed, keeping the current cameras: {config}: cameras.0.transport:")
        before = rclient.xlen(key)
        wait_for(lambda: rclient.xlen(key) > before + 3, 60, "camera a still publishing after the bad reload")
        config.write_text(f"cameras: [{{name: a, url: '{clip}', realtime: true}}, "
                          f"{{name: b, url: '{clip}', realtime: true}}]\n")
        proc.signal(signal.SIGHUP)
        proc.wait_for("reload: 1 camera(s) added ['b']")
        wait_for(lambda: rclient.xlen(detections_key(prefix, "b")) >= 3, 120, "camera b publishing")
        proc.signal(signal.SIGTERM)
        assert proc.wait(120) == 0, proc.stderr


def test_backend_auto_picks_onnxruntime_on_a_cpu_machine_and_tensorrt_on_a_gpu() -> None:
    detector = create_detector("auto")
    try:
        expected = "tensorrt" if torch.cuda.is_available() else "onnxruntime"
        assert detector.backend == expected
    finally:
        detector.close()


def test_every_documented_metric_family_is_served_and_every_served_one_documented(
    make_video: Callable[..., Path], redis_url: str, prefix: str
) -> None:
    documented = set()
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        names = re.findall(r"`(_?[a-z_]+)`", line.split("|")[1]) if line.startswith("| `rpn_") else []
        for name in names:  # `rpn_stage_frames_in_total`, `_out_total`: the short form replaces as many parts
            if name.startswith("_"):
                parts = name[1:].split("_")
                name = "_".join(names[0].split("_")[:-len(parts)] + parts)
            documented.add(name)
    with CliProcess("run", "--source", f"m={make_video(8, seed=100)}", "--http", "127.0.0.1:0", "--keep-running",
                    "--redis-url", redis_url, "--prefix", prefix, "--save-annotated", "/tmp/rpn-annotated-metrics",
                    env={"RPN_API_TOKEN": ""}) as proc:
        base = proc.http_base()
        with httpx.Client(base_url=base, timeout=30) as http:
            wait_for(lambda: http.get("/api/cameras/m").json()["state"] == "finished", 120, "the file processed")
            text = http.get("/metrics").text
        proc.signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    served = {f.name.removesuffix("_total") if f.type == "counter" else f.name
              for f in text_string_to_metric_families(text)
              if f.name.startswith("rpn_") and not f.name.endswith("_created")}  # prometheus-client's timestamps
    documented = {d.removesuffix("_total") for d in documented}
    assert served == documented, (served - documented, documented - served)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert any(s.value >= 8 for s in families["rpn_camera_frames_decoded"].samples)


def test_help_of_every_subcommand() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    commands = re.findall(r"^    (\w[\w-]*)\s", top.stdout, re.M)
    assert {"run", "demo", "subscribe", "detect", "export", "train", "eval"} <= set(commands), top.stdout
    for command in commands:
        result = run_cli(command, "--help")
        assert result.returncode == 0 and result.stdout.startswith("usage: "), (command, result.stderr)
        assert f" {command}" in result.stdout.splitlines()[0], command


def test_max_fps_from_a_config_file_drops_the_excess_with_its_reason(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(f"cameras: [{{name: slow, url: '{make_video(50, seed=101)}', realtime: true, max_fps: 2}}]\n")
    summary = tmp_path / "summary.json"
    result = run_cli("run", "--config", str(config), "--redis-url", redis_url, "--prefix", prefix,
                     "--summary-json", str(summary), timeout=300)
    assert result.returncode == 0, result.stderr
    s = json.loads(summary.read_text())["streams"]["slow"]
    # 2 s of video at 25 fps, detected at most twice a second: most frames skipped, each counted with the reason.
    assert s["decoded"] == 50 and s["published"] + s["dropped"] == 50
    assert s["drop_reasons"].get("over the camera's max_fps", 0) >= 30, s
    assert rclient.xlen(detections_key(prefix, "slow")) == s["published"]


ENGINE_BUSY = "engine busy: oldest frame dropped"
NOT_PROCESSED = "stopped before processing"


def frames_of(client: redis.Redis, prefix: str, camera: str) -> list[int]:
    return [int(f["frame"]) for _, f in client.xrange(detections_key(prefix, camera))]


def descents(frames: list[int]) -> int:
    """How many times the frame index goes back: each new reader of a file starts again near 0."""
    return sum(b <= a for a, b in zip(frames, frames[1:]))


# --- stopping: drain_timeout_s and flush_timeout_s --------------------------------------------------------------
def test_drain_timeout_s_bounds_the_drain_and_what_is_left_is_counted(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    clip = make_video(200, seed=98)  # files: lossless queues, so a stop finds about a hundred frames in flight
    sources = [arg for i in range(2) for arg in ("--source", f"f{i}={clip}")]
    outcome = {}
    for drain in (0, 120):
        config = tmp_path / f"drain{drain}.yaml"
        config.write_text(f"runtime: {{queue_size: 16, drain_timeout_s: {drain}}}\n")
        summary, key_prefix = tmp_path / f"summary{drain}.json", f"{prefix}d{drain}"
        with CliProcess("run", "--config", str(config), *sources, "--redis-url", redis_url, "--prefix", key_prefix,
                        "--summary-json", str(summary)) as proc:
            wait_for(lambda: rclient.xlen(detections_key(key_prefix, "f0")) >= 5, 120, "frames published")
            proc.signal(signal.SIGTERM)
            assert proc.wait(180) == 0, proc.stderr
        assert f"stop requested: draining in-flight frames (at most {drain:.1f} s)" in proc.stderr
        streams = json.loads(summary.read_text())["streams"]
        for name, s in streams.items():
            assert s["decoded"] == s["published"] + s["dropped"], (name, s)  # every decoded frame accounted for
            assert rclient.xlen(detections_key(key_prefix, name)) == s["published"]
            assert set(s["drop_reasons"]) <= {NOT_PROCESSED}, s["drop_reasons"]
        outcome[drain] = sum(s["drop_reasons"].get(NOT_PROCESSED, 0) for s in streams.values())
        assert sum(s["decoded"] for s in streams.values()) < 2 * 200  # stopped mid-file
    # No time to drain: what was in flight is dropped and counted. Time enough: every frame that reached the
    # pipeline is published; only a file's frame still waiting for room in its full queue is dropped (one per file).
    assert outcome[120] <= 2 < outcome[0], outcome


def test_flush_timeout_s_waits_for_a_redis_that_comes_back_before_it_ends(
    make_video: Callable[..., Path], tmp_path: Path
) -> None:
    # The other side (Redis never comes back: counted undelivered entries, exit 1) is in test_promises.py.
    server = RedisProcess(tmp_path / "redis")  # not started: Redis is down for the whole run
    config = tmp_path / "p.yaml"
    config.write_text("redis: {flush_timeout_s: 300, retry_initial_s: 0.1, retry_max_s: 0.5}\n")
    try:
        with CliProcess("run", "--config", str(config), "--source", f"door={make_video(6, seed=97)}",
                        "--redis-url", server.url, "--summary-json", str(tmp_path / "s.json")) as proc:
            line = proc.wait_for("buffered entries before shutdown (at most 300.0 s)", 180)
            waiting = int(re.search(r"delivering (\d+) buffered", line).group(1))  # type: ignore[union-attr]
            server.start()
            assert proc.wait(180) == 0, proc.stderr
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert frames_of(client, "rpn", "door") == list(range(6))
        assert waiting == 6 + client.xlen(events_key("rpn"))  # every entry waited for the flush, none dropped
        s = json.loads((tmp_path / "s.json").read_text())
        assert s["streams"]["door"]["published"] == 6 and s["publisher"]["dropped_entries"] == 0
        assert "undelivered" not in proc.stdout
        client.close()
    finally:
        server.kill()


# --- cameras: SIGHUP with changes, live_queue_size and drop-oldest ----------------------------------------------
def test_sighup_with_changed_cameras_restarts_only_those_and_keeps_the_unchanged_running(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    clip = make_video(200, seed=98)  # 8 s at 25 fps, paced: longer than the test
    config = tmp_path / "cameras.yaml"

    def cameras(*entries: str) -> str:
        return "cameras:\n" + "".join(f"  - {{{e}, url: '{clip}', realtime: true}}\n" for e in entries)

    config.write_text(cameras("name: a", "name: b", "name: c"))
    with CliProcess("run", "--config", str(config), "--redis-url", redis_url, "--prefix", prefix) as proc:
        for name in "abc":
            wait_for(lambda: rclient.xlen(detections_key(prefix, name)) >= 5, 120, f"camera {name} publishing")
        a_before = rclient.xlen(detections_key(prefix, "a"))
        config.write_text(cameras("name: a", "name: b, max_fps: 100", "name: d"))  # b changed, c gone, d new
        proc.signal(signal.SIGHUP)
        proc.wait_for("reload: 2 camera(s) added ['b', 'd'], 2 removed ['b', 'c']", 60)
        wait_for(lambda: rclient.xlen(detections_key(prefix, "d")) >= 10, 60, "camera d publishing")
        c_after = rclient.xlen(detections_key(prefix, "c"))  # c's frames in flight are out by now
        wait_for(lambda: rclient.xlen(detections_key(prefix, "d")) >= 20, 60, "camera d publishing on")
        assert rclient.xlen(detections_key(prefix, "c")) == c_after, "camera c still publishing after removal"
        wait_for(lambda: descents(frames_of(rclient, prefix, "b")) == 1, 60, "b's new reader publishing")
        proc.signal(signal.SIGTERM)
        assert proc.wait(120) == 0, proc.stderr
    a = frames_of(rclient, prefix, "a")
    assert descents(a) == 0 and len(a) > a_before  # never restarted, and went on through the reload
    b = frames_of(rclient, prefix, "b")
    assert descents(b) == 1  # read once up to the reload, then again from the file's start
    assert descents(frames_of(rclient, prefix, "d")) == 0
    rows = summary_rows(proc.stdout)
    assert rows["c"]["state"] == "stopped" and rows["c"]["published"] == c_after


def test_live_queue_size_and_maxlen_from_a_config_file_and_drop_oldest_end_to_end(
    tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    clip = tmp_path / "fast.mp4"  # a 250 fps camera: several times what the engine detects on this machine
    write_video(clip, SceneSpec(width=320, height=240, fps=250, frames=300), seed=111)
    found = {}
    for size, maxlen in ((1, 10_000), (1000, 20)):
        config = tmp_path / f"q{size}.yaml"
        config.write_text(f"cameras: [{{name: fast, url: '{clip}', realtime: true}}]\n"
                          f"runtime: {{live_queue_size: {size}}}\nredis: {{maxlen: {maxlen}}}\n")
        key_prefix = f"{prefix}q{size}"
        result = run_cli("run", "--config", str(config), "--redis-url", redis_url, "--prefix", key_prefix,
                         "--summary-json", str(tmp_path / f"s{size}.json"), timeout=300)
        assert result.returncode == 0, result.stderr
        s = json.loads((tmp_path / f"s{size}.json").read_text())["streams"]["fast"]
        frames = frames_of(rclient, key_prefix, "fast")
        assert s["decoded"] == s["published"] + s["dropped"] == 300
        assert frames == sorted(set(frames))
        found[size] = (s, frames)
    small, frames = found[1]
    # One frame of room: the engine lags, the oldest frames go, each counted with the reason; the newest is kept.
    assert small["dropped"] > 0 and small["drop_reasons"] == {ENGINE_BUSY: small["dropped"]}, small
    assert len(frames) == small["published"] and frames[-1] == 299
    big, frames = found[1000]
    assert big["dropped"] == 0 and big["published"] == 300  # room for the whole clip: nothing dropped
    # maxlen 20, approximate (MAXLEN ~): Redis trims whole nodes (100 entries by default), never below 20, and
    # what it keeps are the newest entries.
    assert 20 <= len(frames) <= 20 + 100 and frames == list(range(300 - len(frames), 300)), frames


# --- reconnect backoff ------------------------------------------------------------------------------------------
@needs_system(gstreamer_available(), GSTREAMER_MISSING)
def test_reconnect_backoff_doubles_with_jitter_and_resets_after_healthy_s(
    tmp_path: Path, detector: Detector, rclient: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.sources.decoder")
    initial, maximum, jitter = 0.2, 0.8, 0.2
    port = free_port()
    server = RtspServer({"/cam": make_camera_file(tmp_path / "cam.h264", frames=50, seed=112)}, port=port)
    config = load_config(data={
        "cameras": [{"name": "cam", "url": f"rtsp://127.0.0.1:{port}/cam", "read_timeout_s": 3, "open_timeout_s": 3}],
        "redis": {"prefix": prefix},
        "runtime": {"reconnect": {"initial_s": initial, "max_s": maximum, "jitter": jitter, "healthy_s": 0.5}},
    })

    def attempts() -> list[tuple[float, float]]:
        """(when, delay) of every failed attempt of the camera, from its log lines (the delay as computed)."""
        return [(r.created, float(r.args[-1])) for r in caplog.records  # type: ignore[index]
                if r.name == "pipeline.sources.decoder" and "'cam'" in r.getMessage()
                and ("reconnecting in" in r.msg or "next attempt in" in r.msg)]

    pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
    pipeline.start()
    stats = pipeline.ctx.streams
    try:
        wait_for(lambda: len(attempts()) >= 5, 60, "five failed attempts while the server is down")
        down = attempts()[:5]
        bases = [min(maximum, initial * 2**k) for k in range(5)]  # 0.2, 0.4, 0.8 (the cap), 0.8, 0.8
        ratios = [delay / base for (_, delay), base in zip(down, bases)]
        assert all(1 - jitter - 1e-9 <= r <= 1 + jitter + 1e-9 for r in ratios), (down, bases)
        assert len({round(r, 6) for r in ratios}) > 1, "no jitter"
        for (at, delay), (next_at, _) in zip(down, down[1:]):
            assert next_at - at >= delay - 0.01  # each next attempt came only after its delay
        assert stats["cam"].reconnects >= 4

        server.start()  # the camera comes online ...
        wait_for(lambda: stats["cam"].state == "online", 60, "the camera online")
        online_decoded = stats["cam"].decoded
        # ... and stays online longer than healthy_s (50 frames at the server's 25 fps: 2 s)
        wait_for(lambda: stats["cam"].decoded >= online_decoded + 50, 60, "50 frames online")
        before = len(attempts())
        server.kill()
        wait_for(lambda: len(attempts()) >= before + 2, 60, "two failed attempts after the outage")
        (_, first), (_, second) = attempts()[before:before + 2]
        assert attempts()[before - 1][1] >= maximum * (1 - jitter)  # before: at the cap
        assert initial * (1 - jitter) <= first <= initial * (1 + jitter)  # after being healthy: from the start
        assert 2 * initial * (1 - jitter) <= second <= 2 * initial * (1 + jitter)  # and doubling again
    finally:
        pipeline.request_stop()
        assert pipeline.wait(timeout=60)
        server.stop()


# --- Redis: maxlen, a subscriber across an outage, /readyz ------------------------------------------------------
def test_subscriber_keeps_its_position_across_a_redis_outage_and_picks_up_a_later_camera(tmp_path: Path) -> None:
    prefix = "outage"
    with RedisProcess(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        ids = {"a": publish_frames(client, prefix, "a", 5)}
        with CliProcess("subscribe", "--redis-url", server.url, "--prefix", prefix, "--from-start") as sub:
            wait_for(lambda: len(sub.out) >= 5, 60, "the first 5 entries printed")
            server.kill()
            sub.wait_for("Redis unavailable", 60)
            server.start()  # same port, same data (AOF)
            client = redis.Redis.from_url(server.url, decode_responses=True)
            ids["a"] += publish_frames(client, prefix, "a", 5, start=5)
            ids["b"] = publish_frames(client, prefix, "b", 4)  # a camera that appears after the outage
            wait_for(lambda: len(sub.out) >= 14, 60, "the entries after the outage")
            sub.wait_for("Redis back: reading on", 30)
            sub.signal(signal.SIGTERM)
            sub.wait(30)
        client.close()
    printed = [json.loads(line) for line in sub.stdout.splitlines()]
    for camera in "ab":  # every entry exactly once, in order: none replayed, none skipped
        assert [e["id"] for e in printed if e["camera"] == camera] == ids[camera]
    assert len(printed) == 14


def test_readyz_while_buffering_within_the_bound_and_beyond_it(
    make_video: Callable[..., Path], tmp_path: Path
) -> None:
    bound = 15
    config = tmp_path / "p.yaml"
    config.write_text(f"cameras: [{{name: cam, url: '{make_video(200, seed=98)}', realtime: true, max_fps: 5}}]\n"
                      f"redis: {{buffer_max_entries: {bound}, flush_timeout_s: 0.5}}\n")
    seen = []
    with CliProcess("run", "--config", str(config), "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                    "--http", "127.0.0.1:0", env={"RPN_API_TOKEN": ""}) as proc:
        with httpx.Client(base_url=proc.http_base(), timeout=30) as http:
            def full() -> bool:
                r = http.get("/readyz")
                seen.append((r.status_code, r.json()))
                return r.json()["publisher"]["buffered_entries"] >= bound

            wait_for(full, 120, "the buffer at its bound")
            assert http.get("/healthz").status_code == 200  # alive all along
        proc.signal(signal.SIGTERM)
        assert proc.wait(120) == 1  # the buffered entries were never delivered: counted, exit 1
    buffering = [(code, body) for code, body in seen if 0 < body["publisher"]["buffered_entries"] < bound]
    assert buffering, seen  # polled while it was filling
    for code, body in seen:
        assert body["publisher"]["connected"] is False and body["publisher"]["max_entries"] == bound
        if body["publisher"]["buffered_entries"] < bound:  # Redis away, within the bound: still ready
            assert code == 200 and body["ready"] is True, body
        else:  # beyond it: not ready, and why
            assert code == 503 and body["ready"] is False, body
            assert body["reasons"][0].startswith("Redis unreachable and the publisher's buffer is full"), body


# --- the embedded Redis while a run lasts ----------------------------------------------------------------------
def test_the_printed_embedded_address_serves_other_programs_while_the_run_lasts(
    make_video: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {"RPN_STATE_DIR": str(state)}
    with CliProcess("run", "--source", f"door={make_video(6, seed=97)}", "--keep-running", env=env) as proc:
        line = proc.wait_for("Publishing to Redis at unix://", 180)
        url = line.split("Publishing to Redis at ", 1)[1].split()[0]
        client = redis.Redis.from_url(url, decode_responses=True)  # another program, at the printed address
        wait_for(lambda: client.xlen(detections_key("rpn", "door")) == 6, 120, "the file's 6 frames")
        sub = run_cli("subscribe", "--from-start", "--count", "6", "--timeout", "10", env=env)  # attaches to it
        assert sub.returncode == 0, sub.stderr
        assert [json.loads(line)["frame"] for line in sub.stdout.splitlines()] == list(range(6))
        client.close()
        proc.signal(signal.SIGTERM)
        assert proc.wait(120) == 0, proc.stderr
    assert (state / "redis.rdb").is_file()  # $RPN_STATE_DIR/redis.rdb, as the README says
