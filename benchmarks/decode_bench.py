#!/usr/bin/env python3
"""What one camera costs to decode, per `skip_frames` setting: CPU share of one core per 25 fps camera.

    python benchmarks/decode_bench.py [--size 1920x1080] [--frames 100] [--gop 50]

The same synthetic scene is encoded twice: like most IP cameras (P-frames only, x264 zerolatency) and with
non-reference B-frames (x264 bframes=2, no B-pyramid). Each is decoded with FFmpeg's skip_frame DEFAULT (decode all),
NONREF and NONKEY, counting process CPU time; plus the cost of converting 5 frames/s (max_fps 5) to the engine's
512x288 RGB with swscale, and, for comparison, of converting every frame at full size (what the decoder did before).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.synth import SceneSpec, encode_frames, render_frames, rgb_to_yuv420p  # noqa: E402
from pipeline.sources.scaling import convert  # noqa: E402

FPS = 25


def encode_with_bframes(path: Path, frames: list[np.ndarray], gop: int) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.options = {"preset": "ultrafast", "crf": "23",
                          "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2:b-pyramid=none"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def decode_cost(path: Path, skip: str, convert_every: int | None, full: bool, repeats: int) -> tuple[int, float]:
    """(frames decoded, CPU seconds) for one pass, best of `repeats`."""
    best, n = float("inf"), 0
    for _ in range(repeats):
        started, n = time.process_time(), 0
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.skip_frame = skip
            for frame in container.decode(stream):
                if full:
                    frame.to_ndarray(format="rgb24")
                elif convert_every and n % convert_every == 0:
                    convert(frame, (512, 288))
                n += 1
        best = min(best, time.process_time() - started)
    return n, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--gop", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = [rgb for rgb, _ in render_frames(SceneSpec(width=width, height=height, frames=args.frames), seed=1100)]
    seconds_of_video = args.frames / FPS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        p_only, with_b = Path(tmp) / "p_only.mp4", Path(tmp) / "b_frames.mp4"
        encode_frames(p_only, frames, FPS, gop=args.gop)
        encode_with_bframes(with_b, frames, args.gop)
        for name, path in (("P-frames only (typical IP camera)", p_only), ("non-reference B-frames", with_b)):
            cases = [("DEFAULT, every frame to full-size RGB (before)", "DEFAULT", None, True),
                     ("DEFAULT, decode only", "DEFAULT", None, False),
                     ("DEFAULT + 5 fps scaled to 512x288 (max_fps 5)", "DEFAULT", FPS // 5, False),
                     ("NONREF + 5 fps scaled", "NONREF", FPS // 5, False),
                     ("NONKEY (keyframes only) + scaled", "NONKEY", 1, False)]
            for label, skip, every, full in cases:
                n, cpu = decode_cost(path, skip, every, full, args.repeats)
                rows.append((name, label, n, cpu / seconds_of_video))
    print(f"\n{args.size} synthetic scene, {args.frames} frames at {FPS} fps, GOP {args.gop}; process CPU time, best "
          f"of {args.repeats}; share = CPU seconds per second of video (1.00 = one core per camera).\n")
    print("| stream | setting | frames decoded | CPU share per camera | cameras per core (decoder alone) |")
    print("|---|---|---:|---:|---:|")
    for name, label, n, share in rows:
        print(f"| {name} | {label} | {n}/{args.frames} | {share:.3f} | {1 / share:.1f} |")


if __name__ == "__main__":
    main()
