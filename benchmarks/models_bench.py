#!/usr/bin/env python3
"""Every supported architecture through our engine (ONNX Runtime) at 640x360: frames/s, GFLOPs, COCO box mAP.

    python benchmarks/models_bench.py [--frames 16] [--threads 2] [--archs a,b]

For each arch: frames/s of our onnxruntime engine at batch 1 on synthetic 640x360 frames (speed does not depend on
the weights: the torchvision archs run randomly initialised, the default one its shipped weights), the ratio to
the default `fasterrcnn_lite` in the same run, GFLOPs per frame at the size our engine feeds it (counted by torch's
FlopCounterMode), and torchvision's published figures read from the installed weights' meta: COCO val2017 box mAP,
GFLOPS at torchvision's own eval size, parameters and file size. Prints a markdown table (docs/model.md).
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
from torchvision.models import get_model_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import gflops_per_frame  # noqa: E402
from engines.base import ARCHS, DEFAULT_ARCH, Detector  # noqa: E402
from engines.export import export_onnx  # noqa: E402
from engines.models import build_model, default_weights  # noqa: E402
from engines.onnx_backend import create_onnxruntime_detector  # noqa: E402
from engines.split import input_size_for  # noqa: E402
from lab.synth import SceneSpec, render_frames  # noqa: E402


def frames_per_s(detector: Detector, frames: list[np.ndarray]) -> float:
    detector.detect(frames[:1])  # warm-up
    started = time.perf_counter()
    for frame in frames:
        detector.detect([frame])
    return len(frames) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="frames timed per arch (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the engine (default 2)")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated archs (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    frame_size = (640, 360)
    frames = [rgb for rgb, _ in render_frames(SceneSpec(width=640, height=360, frames=args.frames), seed=1100)]
    rows = []
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        loaded = build_model(arch, default_weights(arch))
        height, width = input_size_for(loaded.model, *frame_size)
        exported = export_onnx(loaded, tempfile.mkdtemp(prefix="rpn-models-bench-"), frame_size)
        detector = create_onnxruntime_detector(loaded, exported, 0.5, threads=args.threads)
        fps = frames_per_s(detector, frames)
        detector.close()
        gflops = gflops_per_frame(arch, frame_size)
        meta = get_model_weights(arch).DEFAULT.meta if arch != DEFAULT_ARCH else {}
        box_map = meta.get("_metrics", {}).get("COCO-val2017", {}).get("box_map")
        params = meta.get("num_params") or sum(p.numel() for p in loaded.model.parameters())
        rows.append((arch, f"{width}x{height}", fps, gflops, box_map, meta.get("_ops"), params,
                     meta.get("_file_size")))
        print(f"{arch}: {fps:.2f} frames/s", file=sys.stderr, flush=True)
    base = next((r[2] for r in rows if r[0] == DEFAULT_ARCH), rows[0][2])
    print(f"\nonnxruntime engine, batch 1, {args.frames} synthetic 640x360 frames, {args.threads} CPU threads, "
          f"torch {torch.__version__}. Noisy (shared machine): compare the ratios.\n")
    print("| arch | COCO box mAP | engine input | GFLOPs/frame here | torchvision GFLOPS | params | frames/s "
          "| vs default |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arch, size, fps, gflops, box_map, ops, params, _ in rows:
        print(f"| {arch} | {'-' if box_map is None else f'{box_map:.1f}'} | {size} | {gflops:.1f} "
              f"| {'-' if ops is None else f'{ops:.1f}'} | {params / 1e6:.1f}M | {fps:.2f} | {fps / base:.2f}x |")


if __name__ == "__main__":
    main()
