"""Corrupted video files (tests/chaos/video_fuzz.py): >= 100 variants of synthetic and real files through the real
decoder, in a process with capped memory; then a real run mixing broken files with a good one."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import redis

from pipeline.events.contract import detections_key
from tests.chaos.video_fuzz import mutate
from tests.conftest import ROOT, run_cli


def test_a_hundred_corrupted_files_never_hang_crash_or_grow_memory(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    result = subprocess.run([sys.executable, "-m", "tests.chaos.video_fuzz", "--variants", "100", "--seed", "15",
                             "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    outcomes = report["outcomes"]
    assert len(outcomes) >= 100 and not any(o["defect"] for o in outcomes)
    assert {o["variant"] for o in outcomes} >= {"bitflip", "burst", "truncate", "huge-size", "wrong-ext", "zero"}
    assert any(o["state"] == "failed" for o in outcomes) and any(o["state"] == "finished" for o in outcomes)
    # Bounded, not small: resident peaks measured 109-1899 MiB across runs (decoder threads' malloc arenas);
    # a runaway allocation hits the 4 GiB address-space cap and counts as a defect above.
    assert report["peak_mib"] < 3072, report["peak_mib"]


def test_broken_files_fail_with_their_reason_and_the_good_one_is_published_whole(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    good = make_video(12, seed=95)
    data = good.read_bytes()
    rng = random.Random(5)
    broken = {"empty": b"", "cut": data[: len(data) // 3], "noise": rng.randbytes(50_000),
              "huge": mutate(data, "huge-size", rng)}
    args = ["run", "--redis-url", redis_url, "--prefix", prefix, "--source", f"good={good}"]
    for name, content in broken.items():
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(content)
        args += ["--source", f"{name}={path}"]
    result = run_cli(*args, timeout=300)
    assert result.returncode == 1, result.stderr  # the run says it failed ...
    assert rclient.xlen(detections_key(prefix, "good")) == 12  # ... and the good file is published whole
    for name in ("empty", "cut", "noise"):
        assert f"camera '{name}'" in result.stderr and "Traceback" not in result.stderr
    assert "not a readable video" in result.stderr or "truncated or corrupt" in result.stderr
