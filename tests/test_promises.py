"""Promises of the README and docs that no other test checked, each through the real CLI: the embedded Redis path and
`demo`'s summary, a run started with Redis down (flush_timeout_s, counted undelivered entries, exit 1), SIGINT and a
second Ctrl-C, SIGHUP with an invalid file, which backend `auto` picks, every metric family documented and served,
and `--help` of every subcommand."""
from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
import torch
from prometheus_client.parser import text_string_to_metric_families

from engines import create_detector
from pipeline.events.contract import detections_key
from tests.cli_process import CliProcess
from tests.conftest import ROOT, run_cli
from tests.redis_servers import free_port


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


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
    head = re.search(r"(\d+) frames published from 1 source\(s\) at [\d.]+ fps, (\d+) objects detected", demo.stdout)
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
        assert result.returncode == 0 and result.stdout.startswith(f"usage: "), (command, result.stderr)
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
