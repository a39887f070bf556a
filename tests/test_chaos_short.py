"""Short versions of the fault loops of `make chaos` (tests/chaos/): a few Redis kill -9 / SIGSTOP hangs / an empty
restart at random moments of a paced two-camera RTSP run; `run` itself killed and resumed; RTSP cameras killed, hung
and restarted, several at once. The long loops and their figures: docs/reliability.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.rtsp import GSTREAMER_MISSING, gstreamer_available
from tests.system_deps import needs_system


@needs_system(gstreamer_available(), GSTREAMER_MISSING)
def test_redis_kills_hangs_and_an_empty_restart_lose_nothing_acknowledged(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.chaos.redis_chaos", "--kills", "3", "--hangs", "1", "--empty", "--max-down", "2",
         "--max-up", "2", "--cameras", "2", "--seed", "7", "--json", str(out)],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    found = json.loads(out.read_text())
    assert found["faults"] == {"kill": 3, "hang": 1, "empty": 1}
    assert found["duplicates"] == 0 and found["reordered"] == 0 and found["frames_accounted"]
    assert found["backwards_logged"] >= 1  # the empty restart was noticed and logged, per stream
    assert found["lost_in_empty_restart"] > 0 and found["mixed"] == 0  # the gap is what it lost, nothing mixed
    assert found["in_redis"] + found["lost_in_empty_restart"] == found["delivered"]  # exactly once
    # Drop-oldest, end to end: two live cameras on 2 cores fall behind; what is dropped is counted with its reason.
    assert set(found["frame_drops"]) <= {"engine busy: oldest frame dropped", "stopped before processing"}


def test_run_killed_at_random_moments_then_resumed_publishes_every_frame_once_in_order(tmp_path: Path) -> None:
    out = tmp_path / "resume.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.chaos.resume_chaos", "--kills", "2", "--frames", "200", "--load-cameras", "2",
         "--seed", "5", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    found = json.loads(out.read_text())
    loop = found["kill_loop"]
    assert loop["moments"]["process start"] == 1  # the first kill lands before the run has published anything
    assert loop["complete"] and loop["lost"] == loop["duplicates"] == loop["reordered"] == 0
    assert loop["broken_after_kill"] == 0 and loop["final_exit"] == 0
    term = found["sigterm"]  # SIGTERM under load: drained in time, every frame accounted, then resumed exactly
    assert term["exit"] == 0 and term["frames_accounted"] and term["stream_prefix_exact"]
    assert term["resume_exit"] == 0 and term["resume_complete"]


@needs_system(gstreamer_available(), GSTREAMER_MISSING)
def test_cameras_killed_hung_and_restarted_come_back_with_exact_events_while_others_flow(tmp_path: Path) -> None:
    out = tmp_path / "rtsp.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.chaos.rtsp_chaos", "--rounds", "3", "--cameras", "3", "--max-down", "2",
         "--max-hang", "6", "--seed", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    found = json.loads(out.read_text())
    assert found["faults"] >= 3 and max(int(k) for k, n in found["rounds_by_cameras_at_fault"].items() if n) >= 2
    assert not found["stalls"] and not found["unrecovered"] and not found["beyond_bound"]
    assert not found["inexact_events"] and not found["stray_events"]
    assert found["pairs"] == found["faults"] - found["hangs_unnoticed"]  # one offline/online pair per outage
    assert found["exit"] == 0 and found["frames_accounted"]
