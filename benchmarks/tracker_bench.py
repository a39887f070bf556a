#!/usr/bin/env python3
"""Cost of one ByteTracker.update with N moving objects, vs the trackers package's ByteTrack on the same boxes.

    python benchmarks/tracker_bench.py [--objects 50] [--frames 500]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.tracker.bytetrack import ByteTracker  # noqa: E402


def scene(objects: int, frames: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1200, (objects, 2))
    vel = rng.uniform(-3, 3, (objects, 2))
    size = rng.uniform(20, 80, (objects, 2))
    out = []
    for t in range(frames):
        centre = pos + vel * t + rng.normal(0, 0.5, (objects, 2))
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
        scores = rng.uniform(0.3, 1.0, objects).astype(np.float32)
        out.append((boxes, scores, np.ones(objects, np.int64)))
    return out


def time_ours(frames: list, fps: float = 25.0, **params: object) -> np.ndarray:
    tracker, times = ByteTracker(frame_rate=fps, **params), []
    for t, (boxes, scores, labels) in enumerate(frames):
        started = time.perf_counter()
        tracker.update(boxes, scores, labels, timestamp=t / fps, frame_size=(1280, 1280))
        times.append(time.perf_counter() - started)
    return np.array(times[10:]) * 1000


def time_baseline(frames: list) -> np.ndarray | None:
    try:
        import supervision as sv
        from trackers import ByteTrackTracker
    except ImportError:
        return None
    tracker, times = ByteTrackTracker(), []
    for boxes, scores, labels in frames:
        detections = sv.Detections(xyxy=boxes, confidence=scores, class_id=labels)
        started = time.perf_counter()
        tracker.update(detections)
        times.append(time.perf_counter() - started)
    return np.array(times[10:]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--frames", type=int, default=500)
    args = parser.parse_args()
    frames = scene(args.objects, args.frames)
    rows = [("ours (ByteTracker)", time_ours(frames)), ("ours, fixed thresholds (adaptive=False)",
                                                         time_ours(frames, adaptive=False)),
            ("ours, size gate (size_gate=13.8)", time_ours(frames, size_gate=13.8)),
            ("trackers ByteTrackTracker", time_baseline(frames))]
    print(f"\nupdate() with {args.objects} objects, {args.frames} frames (first 10 not timed):\n")
    print("| tracker | median ms | p90 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name, ms in rows:
        if ms is None:
            print(f"| {name} | not installed (pip install -e '.[eval]') | | |")
        else:
            print(f"| {name} | {np.median(ms):.3f} | {np.percentile(ms, 90):.3f} | {np.percentile(ms, 99):.3f} |")


if __name__ == "__main__":
    main()
