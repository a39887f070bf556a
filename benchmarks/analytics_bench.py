#!/usr/bin/env python3
"""Cost of zone and line analytics per frame: 20 tracked objects, 5 zones and 5 lines (all with label filters, a
dwell threshold and an overcrowding limit), vs supervision's PolygonZone + LineZone on the same tracks, and vs the
tracker's own update on the same boxes (for scale).

    python benchmarks/analytics_bench.py [--objects 20] [--zones 5] [--lines 5] [--frames 3000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.base import Detections  # noqa: E402
from pipeline.analytics import CameraAnalytics  # noqa: E402
from pipeline.config import AnalyticsConfig  # noqa: E402
from pipeline.frame import Frame, FrameResult  # noqa: E402
from pipeline.tracker.bytetrack import ByteTracker  # noqa: E402

W, H, FPS = 1280, 720, 25.0
LABELS = ("__background__", "person", "car", "sign")


def scene(objects: int, frames: int, seed: int = 0) -> list[FrameResult]:
    """People and cars walking/driving across a 720p picture, wrapping around; boxes jitter like detections."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 150], [W, H], (objects, 2))
    vel = rng.uniform(-4, 4, (objects, 2)) * [1.0, 0.3]
    size = rng.uniform([20, 50], [90, 160], (objects, 2))
    labels = rng.integers(1, 3, objects)
    ids = np.arange(1, objects + 1)
    out = []
    for t in range(frames):
        centre = pos + vel * t + rng.normal(0, 1.0, (objects, 2))
        centre[:, 0] %= W
        centre[:, 1] = 150 + (centre[:, 1] - 150) % (H - 150)
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
        det = Detections(boxes, rng.uniform(0.5, 1.0, objects).astype(np.float32), labels)
        out.append(FrameResult(Frame("cam", t, t / FPS, 1e9 + t / FPS, None, W, H), det, ids))
    return out


def regions(zones: int, lines: int) -> AnalyticsConfig:
    return AnalyticsConfig.model_validate({
        "zones": [{"name": f"z{i}", "labels": ["person", "car"], "dwell_s": 3.0, "max_objects": 4,
                   "points": [[80 + i * 230, 200], [260 + i * 230, 220], [280 + i * 230, 600], [60 + i * 230, 560],
                              [70 + i * 230, 400]]} for i in range(zones)],
        "lines": [{"name": f"l{i}", "labels": ["person", "car"],
                   "points": [[100 + i * 240, 120], [180 + i * 240, 700]]} for i in range(lines)],
    })


def time_ours(frames: list[FrameResult], config: AnalyticsConfig) -> tuple[np.ndarray, int, float]:
    analytics, times, events = CameraAnalytics("cam", config, LABELS), [], 0
    cpu = time.thread_time()
    for result in frames:
        started = time.perf_counter()
        events += len(analytics.update(result))
        times.append(time.perf_counter() - started)
    return np.array(times[50:]) * 1000, events, (time.thread_time() - cpu) / len(frames) * 1000


def time_supervision(frames: list[FrameResult], config: AnalyticsConfig) -> tuple[np.ndarray, float] | None:
    try:
        import supervision as sv
    except ImportError:
        return None
    polys = [sv.PolygonZone(np.array(z.points, np.int32), triggering_anchors=[sv.Position.BOTTOM_CENTER])
             for z in config.zones]
    lines = [sv.LineZone(sv.Point(*l.points[0]), sv.Point(*l.points[1]), triggering_anchors=[sv.Position.BOTTOM_CENTER])
             for l in config.lines]
    times = []
    cpu = time.thread_time()
    for result in frames:
        started = time.perf_counter()
        det = sv.Detections(xyxy=result.detections.boxes, confidence=result.detections.scores,
                            class_id=result.detections.labels, tracker_id=result.track_ids)
        for zone in polys:
            zone.trigger(det)
        for line in lines:
            line.trigger(det)
        times.append(time.perf_counter() - started)
    return np.array(times[50:]) * 1000, (time.thread_time() - cpu) / len(frames) * 1000


def time_tracker(frames: list[FrameResult]) -> tuple[np.ndarray, float]:
    tracker, times = ByteTracker(frame_rate=FPS), []
    cpu = time.thread_time()
    for result in frames:
        d = result.detections
        started = time.perf_counter()
        tracker.update(d.boxes, d.scores, d.labels, timestamp=result.frame.pts)
        times.append(time.perf_counter() - started)
    return np.array(times[50:]) * 1000, (time.thread_time() - cpu) / len(frames) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=20)
    p.add_argument("--zones", type=int, default=5)
    p.add_argument("--lines", type=int, default=5)
    p.add_argument("--frames", type=int, default=3000)
    args = p.parse_args()
    frames = scene(args.objects, args.frames)
    config = regions(args.zones, args.lines)
    ours, events, ours_cpu = time_ours(frames, config)
    rows = [("rpn-pipeline analytics (CameraAnalytics.update)", ours, ours_cpu)]
    theirs = time_supervision(frames, config)
    if theirs is not None:
        rows.append(("supervision PolygonZone + LineZone (trigger)", *theirs))
    rows.append(("for scale: ByteTracker.update, same boxes", *time_tracker(frames)))
    print(f"{args.objects} objects, {args.zones} zones + {args.lines} lines, {args.frames} frames at "
          f"{W}x{H} ({events} events from ours)\n")
    # CPU time of the measuring thread: what a frame costs, without the waits of a shared, busy machine.
    print("| per frame | CPU ms (thread time) | wall p50 ms | wall mean ms | wall p95 ms | CPU vs ours |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t, cpu in rows:
        print(f"| {name} | {cpu:.3f} | {np.percentile(t, 50):.3f} | {t.mean():.3f} | {np.percentile(t, 95):.3f} | "
              f"{cpu / ours_cpu:.2f}x |")

if __name__ == "__main__":
    main()
