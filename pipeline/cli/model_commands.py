"""Model subcommands of `python run_pipeline.py`: detect, export, build-engine, train, eval."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engines import ARCHS, BACKENDS, DEFAULT_ARCH

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Subcommands whose options need torch imported: their parsers are filled in only when they run.
HEAVY_COMMANDS = ("train", "eval")


def frame_size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x360, got {text!r}") from None
    return width, height


def classes_arg(text: str) -> list[str]:
    """`--classes person,car`: label names, comma-separated."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected label names such as person,car, got {text!r}")
    return names


def add_model_args(p: argparse.ArgumentParser, weights_required: bool = False) -> None:
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help=f"model architecture (default: the one recorded in the weights file, else {DEFAULT_ARCH})")
    p.add_argument("--weights", type=Path, metavar="FILE|NAME", required=weights_required,
                   help="weights: a torchvision state dict (.pth), a checkpoint written by `train`, or the name of "
                   "torchvision's COCO weights of --arch (DEFAULT, COCO_V1), downloaded once into the torch hub cache")
    p.add_argument("--frame-size", type=frame_size_arg, default=(640, 360), metavar="WxH",
                   help="frame size the exported engine is built for (default 640x360)")


def resolved_arch(args: argparse.Namespace) -> str:
    from engines.models import is_weights_name
    from lab.evaluate import checkpoint_arch

    from_file = checkpoint_arch(args.weights) if args.weights and not is_weights_name(args.weights) else None
    return args.arch or from_file or DEFAULT_ARCH


def register(sub: argparse._SubParsersAction, command: str | None) -> None:  # type: ignore[type-arg]
    """Add the model subcommands. The options of train/eval import torch, so they are added only when run."""
    detect = sub.add_parser(
        "detect", help="run the detector alone on an image or video and write its detections as JSON",
        description="Run the detector on every frame of INPUT (an image or a video) and write per-frame boxes "
        "(x1, y1, x2, y2 in source pixels), scores and labels: for trying a model and for parity checks.",
    )
    detect.add_argument("input", type=Path, metavar="INPUT")
    add_model_args(detect)
    detect.add_argument("--backend", choices=BACKENDS, default="auto", help="detector backend (default auto)")
    detect.add_argument("--score-threshold", type=float, default=0.5, metavar="S")
    detect.add_argument("--classes", type=classes_arg, metavar="A,B", help="keep only these labels, e.g. person,car")
    detect.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    detect.add_argument("--json", type=Path, metavar="OUT", help="write detections here (default: stdout)")
    detect.set_defaults(handler=cmd_detect)

    export = sub.add_parser(
        "export", help="export the model to ONNX (dense part + RoI heads) for ONNX Runtime and TensorRT",
        description="Write dense.onnx (backbone + RPN head: static image size, dynamic batch), roi_heads.onnx "
        "(RoIAlign + box head over a batch's RoIs: dynamic RoI count) and manifest.json, and check every op against "
        "TensorRT 10's ONNX parser. Proposal selection and NMS run as torchvision ops between them (docs/model.md).",
    )
    add_model_args(export)
    export.add_argument("--out", type=Path, required=True, metavar="DIR")
    export.set_defaults(handler=cmd_export)

    build = sub.add_parser(
        "build-engine", help="compile the model into TensorRT engines (NVIDIA GPU with TensorRT 10)",
        description="Export the model to ONNX (cached) and compile both graphs with TensorRT: an optimization "
        "profile over the batch (min/opt/max), FP16 unless --fp32, a timing cache; engines are cached under a key "
        "of ONNX hash + TensorRT version + GPU name + precision + profile, and `run` reuses them.",
    )
    add_model_args(build)
    build.add_argument("--min-batch", type=int, default=1)
    build.add_argument("--opt-batch", type=int, default=4)
    build.add_argument("--max-batch", type=int, default=8)
    build.add_argument("--fp32", action="store_true", help="strict FP32 (no FP16, no TF32), e.g. for parity checks")
    build.add_argument("--cache-dir", type=Path, help="where engines are stored (default: the state directory)")
    build.set_defaults(handler=cmd_build_engine)

    train = sub.add_parser("train", help="train a detector (synthetic scenes by default, or COCO data)",
                           description="Train with a progress bar, periodic checkpoints and --resume.")
    evaluate = sub.add_parser("eval", help="COCO mAP and RPN proposal recall (AR@100) of a model",
                              description="Score a model on held-out synthetic videos or a COCO file.")

    if command == "train":
        from lab.train import add_train_args, train_from_args

        add_train_args(train)
        train.set_defaults(handler=train_from_args)
    if command == "eval":
        from lab.evaluate import add_eval_args

        add_eval_args(evaluate)
        evaluate.set_defaults(handler=cmd_eval)


def cmd_detect(args: argparse.Namespace) -> int:
    import av

    from engines import create_detector

    if not args.input.is_file():
        print(f"error: {args.input}: file not found", file=sys.stderr)
        return EXIT_USAGE
    arch = resolved_arch(args)
    detector = create_detector(args.backend, arch, args.weights, args.score_threshold, frame_size=args.frame_size)
    keep = None
    if args.classes:
        from pipeline.config import EngineConfig
        from pipeline.inference.detector import DetectionFilter

        keep = DetectionFilter.from_config(EngineConfig(classes=args.classes), detector.label_names)
    frames_out = []
    started = time.perf_counter()
    try:
        with av.open(str(args.input)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if args.max_frames is not None and index >= args.max_frames:
                    break
                det = detector.detect([frame.to_ndarray(format="rgb24")])[0]
                if keep is not None:
                    det = keep(det)
                frames_out.append({
                    "frame": index,
                    "pts": float(frame.time) if frame.time is not None else None,
                    "boxes": [[round(float(v), 2) for v in box] for box in det.boxes],
                    "scores": [round(float(s), 5) for s in det.scores],
                    "labels": [detector.label_name(int(label)) for label in det.labels],
                })
    except av.FFmpegError as exc:
        print(f"error: {args.input}: cannot decode: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return EXIT_FAILED
    elapsed = time.perf_counter() - started
    result = {"input": str(args.input), "arch": arch, "backend": detector.backend,
              "weights": str(args.weights) if args.weights else None, "score_threshold": args.score_threshold,
              "frames": frames_out}
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
        n = sum(len(f["boxes"]) for f in frames_out)
        print(f"{len(frames_out)} frames, {n} detections in {elapsed:.1f} s "
              f"({len(frames_out) / elapsed:.1f} frames/s, {detector.backend}); wrote {args.json}")
    else:
        print(text)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from lab.evaluate import eval_report

    print(eval_report(args))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    import onnx

    from engines.export import export_onnx
    from engines.models import build_model, default_weights
    from engines.trt_ops import unsupported_ops

    arch = resolved_arch(args)
    weights = args.weights or default_weights(arch)
    loaded = build_model(arch, weights)
    exported = export_onnx(loaded, args.out, args.frame_size, loaded.weights_file)
    problems = []
    for path in (exported.dense_path, exported.roi_heads_path):
        bad = unsupported_ops(onnx.load(str(path)))
        if bad:
            problems.append(f"{path.name}: ops TensorRT 10 cannot parse: {', '.join(bad)}")
    h, w = exported.input_size
    print(f"Exported {arch} to {args.out}: dense.onnx (input [batch, {h}, {w}, 3]), roi_heads.onnx, manifest.json")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK




def cmd_build_engine(args: argparse.Namespace) -> int:
    from engines import default_cache_dir
    from engines.export import cached_export
    from engines.models import build_model, default_weights
    from engines.tensorrt_backend import build_engine, require_tensorrt, roi_heads_profiles

    require_tensorrt()  # before any work: say at once when this machine cannot build engines
    arch = resolved_arch(args)
    weights = args.weights or default_weights(arch)
    cache = args.cache_dir or default_cache_dir()
    loaded = build_model(arch, weights)
    exported = cached_export(loaded, loaded.weights_file, args.frame_size, cache)
    fp16 = not args.fp32
    dense = build_engine(exported.dense_path, cache / "tensorrt", args.min_batch, args.opt_batch, args.max_batch, fp16)
    rois = roi_heads_profiles(exported.roi_heads_path, args.opt_batch, args.max_batch,
                              int(loaded.model.rpn.post_nms_top_n()))
    head = build_engine(exported.roi_heads_path, cache / "tensorrt", args.min_batch, args.opt_batch, args.max_batch,
                        fp16, input_profiles=rois)
    print(f"TensorRT engines for {arch}: {dense} and {head}")
    return EXIT_OK
