"""Short versions of the fault loops of `make chaos` (tests/chaos/): a few Redis kill -9 / SIGSTOP hangs / an empty
restart at random moments of a paced two-camera RTSP run. The long loops and their figures: docs/reliability.md."""
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
