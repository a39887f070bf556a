#!/usr/bin/env python3
"""The GPU check (run through benchmarks/gpu_check.sh): TensorRT engines built, checked against the torch reference
on the GPU, and timed per batch size and precision, with mAP@0.5 per precision on held-out scenes.

    python benchmarks/gpu_check.py [--max-batch 8] [--frames 64] [--eval-frames 100]

Exit status: 0 all checks passed, 1 a parity or accuracy check failed, 2 no usable GPU/TensorRT here.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.base import Detections, EngineError  # noqa: E402
from engines.export import export_onnx  # noqa: E402
from engines.models import build_model, default_weights  # noqa: E402
from engines.split import SplitDetector  # noqa: E402
from engines.tensorrt_backend import (  # noqa: E402
    INT8_CACHE_FILE,
    Int8Calibration,
    create_tensorrt_detector,
    require_tensorrt,
)
from engines.torch_backend import TorchDetector  # noqa: E402
from lab.evaluate import evaluate_synth  # noqa: E402
from lab.synth import SceneSpec, render_frames  # noqa: E402

log = logging.getLogger("gpu_check")


def frames(n: int, seed: int) -> list[np.ndarray]:
    return [rgb for rgb, _ in render_frames(SceneSpec(width=640, height=360, frames=n), seed=seed)]


def mismatches(got: list[Detections], want: list[Detections], box_px: float, score: float) -> list[str]:
    """Reference detections with no match (same label, box within box_px, score within `score`)."""
    problems = []
    for i, (g, w) in enumerate(zip(got, want)):
        if len(g) != len(w):
            problems.append(f"frame {i}: {len(g)} detections, reference {len(w)}")
            continue
        free = np.ones(len(g), bool)
        for j in range(len(w)):
            err = np.abs(g.boxes - w.boxes[j]).max(axis=1) if len(g) else np.zeros(0)
            fits = free & (g.labels == w.labels[j]) & (err <= box_px) & (np.abs(g.scores - w.scores[j]) <= score)
            if not fits.any():
                problems.append(f"frame {i}: reference detection {j} unmatched (closest box {err.min():.2f} px off)")
                break
            free[np.flatnonzero(fits)[np.argmin(err[fits])]] = False
    return problems


def fps(detector: SplitDetector, images: list[np.ndarray], batch: int) -> float:
    detector.detect(images[:batch])
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, len(images), batch):
            detector.detect(images[i : i + batch])
        best = min(best, time.perf_counter() - started)
    return len(images) / best


class _DetectOnly:
    def __init__(self, detector: SplitDetector) -> None:
        self._detector, self.label_names = detector, detector.label_names

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        return self._detector.detect(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=64, help="frames timed per batch size")
    parser.add_argument("--eval-frames", type=int, default=100, help="frames of each held-out scene for mAP")
    parser.add_argument("--seeds", default="1000,1001")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        trt = require_tensorrt()
    except EngineError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    print(f"GPU {gpu}, TensorRT {trt.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="rpn-gpu-check-"))
    loaded = build_model("fasterrcnn_lite", default_weights("fasterrcnn_lite"))
    exported = export_onnx(loaded, workdir / "export")
    held_out, timed = frames(8, 1100), frames(args.frames, 1101)
    failures: list[str] = []

    # 1. Parity with the torch reference on the GPU (fp32 engines: strict FP32, no TF32).
    started = time.monotonic()
    fp32 = create_tensorrt_detector(loaded, exported, 0.05, max_batch=args.max_batch, cache_dir=workdir, fp16=False)
    print(f"fp32 engines built in {time.monotonic() - started:.0f} s", flush=True)
    # A copy of the model for the reference: TorchDetector moves its model to the GPU, the engines' glue stays on the CPU.
    torch_model = build_model("fasterrcnn_lite", default_weights("fasterrcnn_lite"))
    reference = TorchDetector(torch_model, score_threshold=0.05, device="cuda").detect(held_out)
    problems = mismatches(fp32.detect(held_out), reference, box_px=0.5, score=1e-3)
    print(f"parity TensorRT fp32 vs torch (cuda), {len(held_out)} frames, "
          f"{sum(len(d) for d in reference)} detections: {'OK' if not problems else 'FAILED'}")
    failures += [f"parity: {p}" for p in problems[:5]]

    # 2. Other precisions: fp16, and int8 calibrated on training-range synthetic frames (cache kept with the export).
    detectors: dict[str, SplitDetector] = {"fp32": fp32}
    started = time.monotonic()
    detectors["fp16"] = create_tensorrt_detector(loaded, exported, 0.05, max_batch=args.max_batch, cache_dir=workdir)
    print(f"fp16 engines built in {time.monotonic() - started:.0f} s", flush=True)
    calibration = frames(32, 500)
    batches = [fp32.preprocess(calibration[i : i + 8])[0] for i in range(0, len(calibration), 8)]
    started = time.monotonic()
    detectors["int8"] = create_tensorrt_detector(
        loaded, exported, 0.05, max_batch=args.max_batch, cache_dir=workdir,
        int8=Int8Calibration(batches, exported.directory / INT8_CACHE_FILE))
    print(f"int8 engines calibrated and built in {time.monotonic() - started:.0f} s", flush=True)

    # 3. Accuracy (mAP@0.5 on held-out scenes) and speed per precision and batch size.
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {name: evaluate_synth(_DetectOnly(d), seeds, width=640, height=360, frames=args.eval_frames)
              for name, d in detectors.items()}
    batch_sizes = [b for b in (1, 2, 4, 8, 16) if b <= args.max_batch]
    print(f"\nfasterrcnn_lite on {gpu}, frames 640x360, {args.frames} frames timed (best of 3, glue on the CPU); "
          f"mAP@0.5 on held-out seeds {args.seeds} ({args.eval_frames} frames each).\n")
    print("| precision | " + " | ".join(f"fps batch {b}" for b in batch_sizes) + " | mAP@0.5 | drop vs fp32 |")
    print("|---|" + "---:|" * (len(batch_sizes) + 2))
    for name, detector in detectors.items():
        cells = " | ".join(f"{fps(detector, timed, b):.1f}" for b in batch_sizes)
        drop = scores["fp32"].map50 - scores[name].map50
        print(f"| {name} | {cells} | {scores[name].map50:.4f} | {drop:+.4f} |", flush=True)
    if scores["fp32"].map50 - scores["int8"].map50 > 0.005:
        failures.append(f"int8 loses {scores['fp32'].map50 - scores['int8'].map50:.4f} mAP@0.5 (> 0.005): "
                        "engine.precision int8 should not be used with this calibration")
    for failure in failures:
        print(f"FAILED: {failure}")
    print(f"\nengines and the INT8 calibration cache are in {workdir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
