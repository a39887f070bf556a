#!/usr/bin/env python3
"""Detector engines on the same weights and frames: ONNX Runtime vs torchvision eager, parity and GFLOP/s.

    python benchmarks/engine_bench.py [--weights runs/lite/model.pt] [--frames 48] [--batch 4]

For each model (the default `fasterrcnn_lite` with the shipped weights, and a randomly initialised torchvision
`fasterrcnn_mobilenet_v3_large_320_fpn` -- a COCO architecture as users bring it) it reports frames/s of
torchvision eager and of our onnxruntime engine at batch 1 and --batch, the speed ratio, GFLOPs per frame
(counted by torch's FlopCounterMode) with the GFLOP/s achieved, and the parity of the two backends' detections.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.base import Detector  # noqa: E402
from engines.export import export_onnx  # noqa: E402
from engines.models import build_model  # noqa: E402
from engines.onnx_backend import create_onnxruntime_detector  # noqa: E402
from engines.split import BoxHeadStage, DenseStage, input_size_for, roi_input_shape  # noqa: E402
from lab.synth import SceneSpec, render_frames  # noqa: E402
from engines.torch_backend import TorchDetector  # noqa: E402

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "engines" / "weights" / "fasterrcnn_lite.pt"


def fps(detector: Detector, frames: list[np.ndarray], batch: int, repeats: int = 2) -> float:
    detector.detect(frames[:batch])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(frames), batch):
            detector.detect(frames[i : i + batch])
        best = min(best, time.perf_counter() - started)
    return len(frames) / best


def gflops_per_frame(arch: str, frame_size: tuple[int, int]) -> float:
    """Dense part at the engine's input size + box head on the eval-time number of proposals."""
    model = build_model(arch).model.eval()
    height, width = input_size_for(model, *frame_size)
    rois = model.rpn.post_nms_top_n()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        DenseStage(model)(torch.zeros(1, height, width, 3))
        BoxHeadStage(model)(torch.zeros(rois, *roi_input_shape(model)))
    return counter.get_total_flops() / 1e9


def parity(a: Detector, b: Detector, frames: list[np.ndarray]) -> tuple[str, float, float]:
    same, box_diff, score_diff = 0, 0.0, 0.0
    for da, db in zip(a.detect(frames), b.detect(frames)):
        if len(da) == len(db) and (da.labels == db.labels).all():
            same += 1
            if len(da):
                box_diff = max(box_diff, float(np.abs(da.boxes - db.boxes).max()))
                score_diff = max(score_diff, float(np.abs(da.scores - db.scores).max()))
    return f"{same}/{len(frames)}", box_diff, score_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1100, help="held-out scene seed (training uses < 1000)")
    parser.add_argument("--default-only", action="store_true", help="only the default model (the mobilenet FPN "
                        "in eager PyTorch takes minutes on a busy machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(2)
    frame_size = (640, 360)
    frames = [rgb for rgb, _ in render_frames(SceneSpec(width=640, height=360, frames=args.frames), seed=args.seed)]
    models = [("fasterrcnn_lite", args.weights if args.weights.is_file() else None, 0.5),
              ("fasterrcnn_mobilenet_v3_large_320_fpn", None, 0.0)]
    if args.default_only:
        models = models[:1]
    rows = []
    for arch, weights, threshold in models:
        torch.manual_seed(0)
        loaded = build_model(arch, weights)  # one set of weights for both backends
        eager = TorchDetector(loaded, score_threshold=threshold)
        exported = export_onnx(loaded, tempfile.mkdtemp(prefix="rpn-bench-"), frame_size)
        ort = create_onnxruntime_detector(loaded, exported, threshold, threads=2)
        gflops = gflops_per_frame(arch, frame_size)
        same, box_diff, score_diff = parity(eager, ort, frames[:16])
        for batch in (1, args.batch):
            f_eager, f_ort = fps(eager, frames, batch), fps(ort, frames, batch)
            rows.append((arch + ("" if weights else " (random init)"), batch, f_eager, f_ort, gflops, same, box_diff,
                         score_diff))
    print(f"\n{len(frames)} held-out synthetic frames 640x360 (seed {args.seed}), 2 CPU threads, "
          f"torch {torch.__version__}.\n")
    print("| model | batch | eager fps | onnxruntime fps | speed-up | GFLOPs/frame | ORT GFLOP/s "
          "| same detections | max box diff px | max score diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arch, batch, f_eager, f_ort, gflops, same, box_diff, score_diff in rows:
        print(f"| {arch} | {batch} | {f_eager:.1f} | {f_ort:.1f} | {f_ort / f_eager:.2f}x | {gflops:.2f} "
              f"| {gflops * f_ort:.1f} | {same} | {box_diff:.4f} | {score_diff:.2e} |")


if __name__ == "__main__":
    main()
