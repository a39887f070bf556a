"""The command line as a user drives it: exit codes, error messages, signals, subscribing."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from pipeline.events.contract import detections_key, events_key
from tests.conftest import ROOT, run_cli


def _truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_bad_inputs_fail_clearly_while_other_sources_complete(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    good = make_video(25, seed=3)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n" * 100)
    truncated = _truncate(make_video(50, seed=4), tmp_path / "cut.mp4")  # moov atom lost: cannot even open
    cut_mkv = _truncate(make_video(50, seed=4, suffix=".mkv"), tmp_path / "cut.mkv")  # decodes, then ends early
    result = run_cli(
        "run", "--source", f"good={good}", "--source", f"missing={tmp_path / 'nope.mp4'}",
        "--source", f"notvideo={not_video}", "--source", f"truncated={truncated}", "--source", f"cutmkv={cut_mkv}",
        "--redis-url", redis_url, "--prefix", prefix, "--summary-json", str(tmp_path / "summary.json"),
    )
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert f"camera 'missing' ({tmp_path / 'nope.mp4'}): file not found" in err
    assert f"camera 'notvideo' ({not_video}): not a readable video" in err
    assert f"camera 'truncated' ({truncated}): not a readable video" in err
    assert f"camera 'cutmkv' ({cut_mkv}): truncated or corrupt" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    streams = summary["streams"]
    assert streams["good"]["state"] == "finished" and streams["good"]["published"] == 25
    assert {n for n, s in streams.items() if s["state"] == "failed"} == {"missing", "notvideo", "truncated", "cutmkv"}
    assert 0 < streams["cutmkv"]["published"] < 50  # what could be decoded was still processed
    assert rclient.xlen(detections_key(prefix, "good")) == 25
    assert "error: cutmkv" in result.stdout  # the summary repeats each failure


def test_sigterm_mid_file_stops_and_accounts_for_every_frame(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    video = make_video(750, seed=5)  # 30 s of video: far longer than the test lets it run
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_pipeline.py"), "run", "--source", f"long={video}", "--redis-url", redis_url,
         "--prefix", prefix, "--summary-json", str(summary_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    key = detections_key(prefix, "long")
    deadline = time.monotonic() + 90
    while rclient.xlen(key) < 20:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no frames published within 90 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)  # generous: the drain itself is bounded by drain_timeout_s (3 s)
    assert proc.returncode == 0, err
    assert "stop requested: draining in-flight frames (at most 3.0 s)" in err
    s = json.loads(summary_path.read_text())["streams"]["long"]
    assert s["decoded"] < 750, "the file ran to its end: the signal came too late to test anything"
    assert s["decoded"] == s["published"] + s["dropped"]
    assert rclient.xlen(key) == s["published"]
    assert "stopped on request" in out


def test_config_errors_name_file_key_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "cameras.yaml"
    config.write_text("cameras:\n  - name: lobby\n    url: a.mp4\n    fps: 12\nbatching:\n  max_batch: 0\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}: cameras.0.fps: unknown key" in result.stderr
    assert f"{config}: batching.max_batch: Input should be greater than or equal to 1" in result.stderr
    config.write_text("cameras:\n  - {name: a, url: x.mp4}\n  - {name: a, url: y.mp4}\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2 and "camera name 'a' is used twice" in result.stderr
    result = run_cli("run", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and f"{tmp_path / 'absent.yaml'}: cannot read" in result.stderr
    result = run_cli("run")
    assert result.returncode == 2 and "no sources" in result.stderr


def test_credentials_never_printed(tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str,
                                   make_video: Callable[..., Path]) -> None:
    # A camera on a port where nothing listens: refused at once, retried, and its password must not leak.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_pipeline.py"), "run", "--source",
         "cam=rtsp://admin:hunter2secret@127.0.0.1:9/stream", "--source", f"ok={make_video(10, seed=6)}",
         "--redis-url", redis_url, "--prefix", prefix],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while rclient.xlen(detections_key(prefix, "ok")) < 10:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(1.0)  # a few reconnection attempts
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1  # the camera never came online
    assert "hunter2secret" not in out + err + str(rclient.xrange(events_key(prefix)))
    assert "rtsp://admin:***@127.0.0.1:9/stream" in err
    result = run_cli("subscribe", "--redis-url", "redis://user:topsecretpw@127.0.0.1:9/0", "--timeout", "1")
    assert result.returncode == 2
    assert "topsecretpw" not in result.stdout + result.stderr and "redis://user:***@127.0.0.1:9/0" in result.stderr


def test_subscribe_prints_json_lines(make_video: Callable[..., Path], redis_url: str, prefix: str) -> None:
    video = make_video(12, seed=7)
    assert run_cli("run", "--source", f"cam={video}", "--redis-url", redis_url, "--prefix", prefix).returncode == 0
    result = run_cli("subscribe", "--redis-url", redis_url, "--prefix", prefix, "--from-start", "--count", "12",
                     "--timeout", "10")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["camera"], e["frame"]) for e in lines] == [("cam", i) for i in range(12)]


def test_every_subcommand_has_help() -> None:
    for command in ([], ["run"], ["demo"], ["subscribe"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout


def test_detect_writes_per_frame_detections(make_video: Callable[..., Path], tmp_path: Path) -> None:
    video = make_video(8, seed=8, width=640, height=360)
    out = tmp_path / "dets.json"
    result = run_cli("detect", str(video), "--backend", "onnxruntime", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["backend"] == "onnxruntime" and data["arch"] == "fasterrcnn_lite"
    assert [f["frame"] for f in data["frames"]] == list(range(8))
    assert sum(len(f["boxes"]) for f in data["frames"]) > 0
    for f in data["frames"]:
        assert len(f["boxes"]) == len(f["scores"]) == len(f["labels"])
        assert set(f["labels"]) <= {"person", "car", "sign"}
    assert "8 frames" in result.stdout
    missing = run_cli("detect", str(tmp_path / "nope.mp4"))
    assert missing.returncode == 2 and f"{tmp_path / 'nope.mp4'}: file not found" in missing.stderr


def test_export_writes_graphs_tensorrt_can_parse(tmp_path: Path) -> None:
    result = run_cli("export", "--out", str(tmp_path / "onnx"))
    assert result.returncode == 0, result.stderr
    assert "input [batch, 288, 512, 3]" in result.stdout  # RGB pixels, NHWC (engines.split.INPUT_LAYOUT)
    assert (tmp_path / "onnx" / "roi_heads.onnx").is_file()
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["arch"] == "fasterrcnn_lite" and manifest["input_size"] == [288, 512]
    assert manifest["label_names"] == ["__background__", "person", "car", "sign"]
