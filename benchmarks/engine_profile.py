#!/usr/bin/env python3
"""Where the engine's time goes: per-part milliseconds per frame of the ONNX Runtime engine, at batch 1 and 4.

    python benchmarks/engine_profile.py [--frames 48] [--repeats 3] [--threads 2] [--seed 1100] [--crowd 20]

Parts: preprocess (pixels into the input batch; plus the resize for frames the decoder did not scale), dense
(normalisation, backbone, RPN head graph), proposals, roi_heads (RoIAlign, box head, softmax and box decoding graph,
one run per batch), postprocess. Also the dense graph alone on the same batches, and the ratio engine fps / dense-alone fps (the share of
the time the network itself takes); and both graphs alone (dense + RoI heads on the same RoIs, no glue), the bound
for that ratio; and the RoIs per frame that reach the second stage. The decoder-scaled rows repeat at batch 4 on a
crowded scene (--crowd objects in view). Each figure in wall-clock ms per frame and in CPU ms per frame (process CPU time,
all threads: on a shared machine it depends far less on others' load). Figures are the best of --repeats passes;
only ratios within one run are comparable. About 1-2 minutes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.export import export_onnx  # noqa: E402
from engines.models import build_model  # noqa: E402
from engines.onnx_backend import create_onnxruntime_detector  # noqa: E402
from engines.split import PARTS, SplitDetector, rois_of  # noqa: E402
from lab.synth import SceneSpec, render_frames  # noqa: E402

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "engines" / "weights" / "fasterrcnn_lite.pt"


def profile(detector: SplitDetector, frames: list[np.ndarray], batch: int, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` ms per frame for each part, the total, the dense graph alone and both graphs alone (wall;
    CPU as '<x>_cpu'). The engine and the graphs alone alternate within each repeat, so a burst of load from other
    processes hits them alike."""
    n = len(frames)
    inputs = [detector.preprocess(frames[i : i + batch]) for i in range(0, n, batch)]
    roi_inputs = []  # what the RoI heads graph takes for each batch: the pooled levels and the batch's RoIs
    with torch.inference_mode():
        for x, sizes in inputs:
            out = detector.run_dense(x)
            k = len(detector.feature_names)
            boxes = detector._proposals(x, sizes, out[:k], out[k : 2 * k], out[2 * k : 3 * k])
            roi_inputs.append([*(out[i] for i in detector.pooled_levels), rois_of(boxes)])

    def engine() -> None:
        for i in range(0, n, batch):
            detector.detect(frames[i : i + batch])

    rois_per_frame = sum(int(r[-1].shape[0]) for r in roi_inputs) / n

    def dense_alone() -> None:
        for x, _ in inputs:
            detector.run_dense(x)

    def graphs_alone() -> None:
        for (x, _), roi_input in zip(inputs, roi_inputs):
            detector.run_dense(x)
            detector.run_roi_heads(*roi_input)

    detector.detect(frames[:batch])  # warm-up
    best: dict[str, float] = {}
    for _ in range(repeats):
        detector.timings = defaultdict(float)
        for name, run in (("total", engine), ("dense_alone", dense_alone), ("graphs_alone", graphs_alone)):
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            wall, cpu = (time.perf_counter() - started) * 1000 / n, (time.process_time() - cpu_started) * 1000 / n
            if name == "total" and wall < best.get("total", float("inf")):
                timings = detector.timings
                best.update({part: timings[part] * 1000 / n for part in PARTS})
                best.update({f"{part}_cpu": timings[f"{part}_cpu"] * 1000 / n for part in PARTS})
            if name == "total":
                detector.timings = None  # the graphs alone are not engine parts
            best[name] = min(wall, best.get(name, float("inf")))
            best[name + "_cpu"] = min(cpu, best.get(name + "_cpu", float("inf")))
    best["rois"] = rois_per_frame
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1100, help="held-out scene seed (training uses < 1000)")
    parser.add_argument("--crowd", type=int, default=20, help="objects in view in the crowded scene's rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    frame_size = (640, 360)
    frames = [rgb for rgb, _ in render_frames(SceneSpec(width=640, height=360, frames=args.frames), seed=args.seed)]
    crowd = [rgb for rgb, _ in render_frames(SceneSpec(width=640, height=360, frames=args.frames,
                                                       max_objects=args.crowd), seed=args.seed)]
    loaded = build_model("fasterrcnn_lite", args.weights if args.weights.is_file() else None)
    exported = export_onnx(loaded, tempfile.mkdtemp(prefix="rpn-profile-"), frame_size)
    detector = create_onnxruntime_detector(loaded, exported, 0.5, threads=args.threads)
    # What the pipeline feeds the engine: frames the decoder scaled to the engine's size (swscale, as in
    # pipeline/sources/scaling.py). The 640x360 rows show an engine that resizes for itself.
    w, h = detector.frame_size_for(*frame_size) or frame_size

    def decoder_scaled(rgb: list[np.ndarray]) -> list[np.ndarray]:
        return [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(w, h, interpolation="AREA").to_ndarray()
                for f in rgb]

    scaled = decoder_scaled(frames)
    rows = [(f"{w}x{h} (decoder-scaled)", batch, profile(detector, scaled, batch, args.repeats)) for batch in (1, 4)]
    rows += [(f"{w}x{h} (decoder-scaled), crowd of {args.crowd}", 4,
              profile(detector, decoder_scaled(crowd), 4, args.repeats))]
    rows += [("640x360 (resized in the engine)", batch, profile(detector, frames, batch, args.repeats))
             for batch in (1, 4)]
    load = os.getloadavg()[0]
    print(f"\nfasterrcnn_lite, onnxruntime, {len(frames)} held-out synthetic frames 640x360, {args.threads} threads, "
          f"best of {args.repeats}; ms per frame, wall clock (CPU ms: process CPU time, all threads). "
          f"Load average {load:.1f} at the end on {os.cpu_count()} cores.\n")
    print("| frames | batch | RoIs per frame | " + " | ".join(PARTS) + " | total | engine fps | dense alone fps "
          "| engine / dense-alone (by CPU) | both graphs alone fps | engine / both graphs alone (by CPU) |")
    print("|---|---:|---:|" + "---:|" * (len(PARTS) + 6))
    for frames_kind, batch, p in rows:
        cells = " | ".join(f"{p[part]:.2f} ({p[part + '_cpu']:.2f})" for part in PARTS)
        print(f"| {frames_kind} | {batch} | {p['rois']:.0f} | {cells} | {p['total']:.2f} ({p['total_cpu']:.2f}) "
              f"| {1000 / p['total']:.1f} | {1000 / p['dense_alone']:.1f} | {p['dense_alone'] / p['total']:.2f} "
              f"({p['dense_alone_cpu'] / p['total_cpu']:.2f}) | {1000 / p['graphs_alone']:.1f} "
              f"| {p['graphs_alone'] / p['total']:.2f} ({p['graphs_alone_cpu'] / p['total_cpu']:.2f}) |")
    print("\nboth graphs alone: dense.onnx and roi_heads.onnx on the same batches and RoIs, without the glue between "
          "them (preprocess, proposals, postprocess): the bound for engine / dense-alone. RoIs per frame: the "
          "proposals that reach RoIAlign and the box head (at most rpn_post_nms_top_n_test, fewer when the RPN's "
          "score threshold leaves fewer).")


if __name__ == "__main__":
    main()
