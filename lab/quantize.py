"""Calibrate the default engine's INT8 dense graph and judge it by mAP on held-out scenes (issue 17).

    python -m lab.quantize [--weights FILE] [--calibration-video FILE ...] [--seeds 1000-1003]

Calibration frames: the user's own camera clips (--calibration-video, every k-th frame), else synthetic scenes from
the training seed range. The INT8 graph is then scored against fp32 with lab/evaluate.py on held-out scenes
(seeds >= 1000, never used for calibration); INT8 is accepted only if mAP@0.5 drops by at most 0.005. The verdict is
written next to the export (the cache the runtime uses), so `engine.precision: int8` uses it, or refuses and says
why. Exits 1 when INT8 is refused. Prints a table of frames/s and mAP@0.5, fp32 vs int8.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import av
import numpy as np

from engines.base import Detections, default_cache_dir
from engines.export import cached_export
from engines.models import build_model, default_weights
from engines.onnx_backend import create_onnxruntime_detector
from engines.quantize import MAX_MAP50_DROP, quantize_dense, write_verdict
from engines.split import SplitDetector
from lab.dataset import parse_seeds
from lab.evaluate import evaluate_synth
from lab.synth import SceneSpec, render_frames

log = logging.getLogger(__name__)


class _DetectOnly:
    """A detector seen only through detect(): lab.evaluate then scores the backend, not the torch model."""

    def __init__(self, detector: SplitDetector) -> None:
        self._detector = detector
        self.label_names = detector.label_names

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        return self._detector.detect(images)


def calibration_frames(videos: list[Path], frames: int, frame_size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """RGB frames at the engine's frame size: spread over the user's clips, or from training-range synthetic scenes."""
    out: list[np.ndarray] = []
    width, height = frame_size
    if videos:
        per_video = max(1, frames // len(videos))
        for video in videos:
            with av.open(str(video)) as container:
                stream = container.streams.video[0]
                every = max(1, (stream.frames or 250) // per_video)
                for i, frame in enumerate(container.decode(stream)):
                    if i % every == 0 and len(out) < frames:
                        out.append(frame.reformat(width, height, "rgb24", interpolation="AREA").to_ndarray())
        return out
    scenes = max(1, -(-frames // 25))  # 25 frames from each (every 10th of 250)
    for s in range(scenes):
        for i, (rgb, _) in enumerate(render_frames(SceneSpec(width=width, height=height, frames=250), seed + s)):
            if i % 10 == 0 and len(out) < frames:
                out.append(rgb)
    return out


def fps(detector: SplitDetector, frames: list[np.ndarray], batch: int = 4) -> float:
    detector.detect(frames[:batch])
    started = time.perf_counter()
    for i in range(0, len(frames), batch):
        detector.detect(frames[i : i + batch])
    return len(frames) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped fasterrcnn_lite weights")
    parser.add_argument("--frame-size", default="640x360", help="WxH the engine is built for (as engine.frame_size)")
    parser.add_argument("--calibration-video", type=Path, action="append", default=[])
    parser.add_argument("--calibration-frames", type=int, default=64)
    parser.add_argument("--calibration-seed", type=int, default=500, help="synthetic scenes (training range < 1000)")
    parser.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"))
    parser.add_argument("--seeds", default="1000-1003", help="held-out scenes for the mAP check")
    parser.add_argument("--eval-frames", type=int, default=100, help="frames per held-out scene")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    width, height = (int(v) for v in args.frame_size.lower().split("x"))
    weights = args.weights or default_weights("fasterrcnn_lite")
    loaded = build_model("fasterrcnn_lite", weights)
    exported = cached_export(loaded, Path(weights) if weights else None, (width, height),
                             args.cache_dir or default_cache_dir())
    fp32 = create_onnxruntime_detector(loaded, exported, score_threshold=0.05)
    frames = calibration_frames(args.calibration_video, args.calibration_frames, (width, height),
                                args.calibration_seed)
    batches = [fp32.preprocess(frames[i : i + 4])[0].numpy() for i in range(0, len(frames), 4)]
    quantize_dense(exported, batches, args.method)
    source = ", ".join(map(str, args.calibration_video)) or f"synthetic seeds from {args.calibration_seed}"
    # Score the graph before it is accepted: build the session from the file directly.
    from engines.onnx_backend import _runner, _session

    int8 = SplitDetector(loaded, _runner(_session(str(exported.directory / "dense.int8.onnx"), None)),
                         fp32.run_roi_heads, exported.input_size, "onnxruntime-int8", score_threshold=0.05)
    seeds = parse_seeds(args.seeds)
    scores = {name: evaluate_synth(_DetectOnly(d), seeds, width=width, height=height, frames=args.eval_frames)
              for name, d in (("fp32", fp32), ("int8", int8))}
    accepted = write_verdict(exported, scores["fp32"].map50, scores["int8"].map50,
                             f"{len(frames)} frames: {source} ({args.method})")
    bench = [rgb for rgb, _ in render_frames(SceneSpec(width=width, height=height, frames=48), seeds[0])]
    print(f"\nfasterrcnn_lite, onnxruntime, frames {width}x{height}; mAP@0.5 on held-out seeds {args.seeds} "
          f"({args.eval_frames} frames each); calibration: {len(frames)} frames, {source}, {args.method}.\n")
    print("| precision | fps (batch 4) | mAP@0.5 | mAP@[.5:.95] |")
    print("|---|---:|---:|---:|")
    for name, d in (("fp32", fp32), ("int8", int8)):
        print(f"| {name} | {fps(d, bench):.1f} | {scores[name].map50:.4f} | {scores[name].map:.4f} |")
    drop = scores["fp32"].map50 - scores["int8"].map50
    if not accepted:
        print(f"\nINT8 refused: mAP@0.5 drops by {drop:.4f} (> {MAX_MAP50_DROP}); engine.precision int8 will refuse "
              "to start with this explanation. Calibrate on frames from your own cameras (--calibration-video), "
              "try --method entropy or percentile, or keep fp32.")
        return 1
    print(f"\nINT8 accepted (mAP@0.5 drop {drop:.4f} <= {MAX_MAP50_DROP}): written to {exported.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
