"""Detector evaluation: COCO mAP of the detections and recall of the Region Proposal Network's proposals.

* mAP@[.5:.95] and mAP@0.5 come from pycocotools' ``COCOeval`` (bbox, maxDets 100, area "all"). Ground-truth
  boxes flagged ``iscrowd`` (our ignored, < 20 %-visible boxes) are handled the COCO way: a detection matching
  one is neither a true nor a false positive, and missing one costs nothing.
* AR@100 (IoU 0.5) = fraction of non-ignored ground-truth boxes overlapped with IoU >= 0.5 by at least one of
  the image's top-100 RPN proposals (the RPN output after NMS, scored by objectness), in original image pixels.

Held-out synthetic evaluation (``python run_pipeline.py eval --weights FILE --seeds 1000-1004``) renders scenes
with seeds >= 1000 -- training uses seeds < 1000 (see :data:`lab.dataset.HELD_OUT_SEED`) -- encodes them to
H.264 like any camera clip, decodes them with PyAV and scores the detector on every (or every k-th) frame.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou
from tqdm import tqdm

from engines.base import EngineError
from lab.dataset import (
    HELD_OUT_SEED,
    SYNTH_LABEL_NAMES,
    CocoVideoFrames,
    Sample,
    parse_seeds,
    synth_eval_samples,
)

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Scores of one evaluation; NaN where undefined (no ground truth / no proposals available)."""

    map50: float
    map: float
    ar100_50: float
    frames: int
    gt_boxes: int  # non-ignored ground-truth boxes
    ignored_boxes: int
    detections: int
    per_class_ap50: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        def f(v: float) -> str:
            return "   n/a" if v is None or math.isnan(v) else f"{v:6.3f}"

        lines = [
            f"{'mAP@0.5':<22}{f(self.map50)}",
            f"{'mAP@[.5:.95]':<22}{f(self.map)}",
            f"{'AR@100 (IoU .5, RPN)':<22}{f(self.ar100_50)}",
            f"{'frames':<22}{self.frames:>6d}",
            f"{'GT boxes (ignored)':<22}{self.gt_boxes:>6d} ({self.ignored_boxes})",
            f"{'detections':<22}{self.detections:>6d}",
        ]
        for name, ap in self.per_class_ap50.items():
            lines.append(f"{'AP@0.5 ' + name:<22}{f(ap)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- metrics


def coco_scores(
    gts: Sequence[dict[str, torch.Tensor]],
    dets: Sequence[dict[str, torch.Tensor]],
    label_names: Sequence[str],
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[float, float, dict[str, float]]:
    """COCO bbox mAP@[.5:.95], mAP@0.5 and per-class AP@0.5 of per-image detections against ground truth.

    ``gts[i]``: ``boxes`` [N, 4] xyxy, ``labels`` [N], optional ``iscrowd`` [N] (1 = ignored).
    ``dets[i]``: ``boxes`` [M, 4] xyxy, ``scores`` [M], ``labels`` [M] -- in the same label space (1..K, index into
    ``label_names``; 0 is background and never scored). Undefined values (no ground truth) are NaN.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise EngineError("evaluation needs pycocotools: pip install pycocotools") from exc

    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground-truth entries but {len(dets)} detection entries")
    cat_ids = list(range(1, len(label_names)))
    images, anns, results = [], [], []
    for i, (gt, det) in enumerate(zip(gts, dets, strict=True), start=1):
        h, w = image_sizes[i - 1] if image_sizes is not None else (0, 0)
        images.append({"id": i, "width": int(w), "height": int(h)})
        crowd = gt.get("iscrowd")
        for j, (box, label) in enumerate(zip(gt["boxes"].tolist(), gt["labels"].tolist(), strict=True)):
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(crowd[j]) if crowd is not None else 0})
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                     strict=True):
            if int(label) not in cat_ids:
                continue
            x1, y1, x2, y2 = box
            results.append({"image_id": i, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    per_class = {name: math.nan for name in label_names[1:]}
    if not any(not a["iscrowd"] for a in anns):
        return math.nan, math.nan, per_class
    if not results:
        return 0.0, 0.0, {n: 0.0 if _has_gt(anns, k) else math.nan for k, n in enumerate(label_names[1:], 1)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns,
                           "categories": [{"id": k, "name": label_names[k]} for k in cat_ids]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T iou, R recall, K cat, A area, M maxDets]
    for k_idx, cat in enumerate(ev.params.catIds):
        p = precision[0, :, k_idx, 0, -1]
        p = p[p > -1]
        per_class[label_names[cat]] = float(p.mean()) if p.size else math.nan
    stats = [math.nan if s < 0 else float(s) for s in ev.stats[:2]]
    return stats[0], stats[1], per_class


def _has_gt(anns: list[dict[str, Any]], cat: int) -> bool:
    return any(a["category_id"] == cat and not a["iscrowd"] for a in anns)


def proposal_recall(
    proposals: Sequence[torch.Tensor],
    gts: Sequence[dict[str, torch.Tensor]],
    iou: float = 0.5,
    top_k: int = 100,
) -> tuple[int, int]:
    """(matched, total) non-ignored GT boxes covered by one of the top-k proposals (sorted best first) at IoU>=iou."""
    matched = total = 0
    for props, gt in zip(proposals, gts, strict=True):
        boxes = gt["boxes"]
        crowd = gt.get("iscrowd")
        if crowd is not None:
            boxes = boxes[crowd == 0]
        total += len(boxes)
        props = props[:top_k]
        if len(boxes) and len(props):
            matched += int((box_iou(boxes.float(), props.float()).max(dim=1).values >= iou).sum())
    return matched, total


@torch.inference_mode()
def detect_with_proposals(model: nn.Module, images: Sequence[torch.Tensor]) -> tuple[list[dict[str, torch.Tensor]],
                                                                                     list[torch.Tensor]]:
    """Run a torchvision Faster R-CNN in eval mode; return its detections and its RPN proposals (best first),
    both in the input images' pixel coordinates. Same computation as ``GeneralizedRCNN.forward``."""
    was_training = model.training
    model.eval()
    try:
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = model.transform(list(images))
        features = model.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = model.rpn(image_list, features)
        detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
        detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        scaled = [resize_boxes(p, s, o) for p, s, o in zip(proposals, image_list.image_sizes, original_sizes,
                                                           strict=True)]
    finally:
        model.train(was_training)
    return detections, scaled


def _label_map(model_names: Sequence[str], data_names: Sequence[str]) -> dict[int, int]:
    """model label id -> dataset label id, matched by name (identity when the names share nothing)."""
    by_name = {n: i for i, n in enumerate(data_names) if i > 0}
    mapping = {i: by_name[n] for i, n in enumerate(model_names) if i > 0 and n in by_name}
    if not mapping:
        log.warning("model labels %s share no name with the data's %s: comparing label ids as they are",
                    list(model_names[1:4]), list(data_names[1:4]))
        mapping = {i: i for i in range(1, min(len(model_names), len(data_names)))}
    return mapping


def evaluate(
    model: Any,
    samples: Iterable[Sample],
    label_names: Sequence[str] | None = None,
    data_label_names: Sequence[str] = SYNTH_LABEL_NAMES,
    batch_size: int = 4,
    progress: bool = False,
    total: int | None = None,
) -> EvalResult:
    """Score a model (a torchvision Faster R-CNN, or a :class:`engines.base.Detector`) on samples.

    ``samples`` yield ``(image float [3,H,W] 0..1, target)`` with ``iscrowd`` flags for ignored boxes (as
    :class:`lab.dataset.CocoVideoFrames` / ``synth_eval_samples`` give with ``include_ignored=True``).
    ``label_names`` are the model's (default: the Detector's, or the data's); labels are matched by name.
    A Detector with a torch ``.model`` is scored through that model, without the Detector's score threshold (mAP
    wants the low-scoring detections too: the model's own ``box_score_thresh``, 0.05, applies). A Detector without
    one (a non-torch backend) is scored through ``detect()``, threshold included, and its AR is NaN.
    """
    t0 = time.perf_counter()
    net: nn.Module | None = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if label_names is None:
        label_names = getattr(model, "label_names", None) or data_label_names
    mapping = _label_map(label_names, data_label_names)
    gts: list[dict[str, torch.Tensor]] = []
    dets: list[dict[str, torch.Tensor]] = []
    sizes: list[tuple[int, int]] = []
    matched = n_gt = 0
    have_proposals = isinstance(net, nn.Module) and hasattr(net, "rpn")
    bar = tqdm(total=total, desc="eval", unit="frame", disable=not progress, leave=False)

    def run(batch: list[Sample]) -> None:
        nonlocal matched, n_gt
        images = [s[0] for s in batch]
        targets = [s[1] for s in batch]
        if have_proposals:
            outs, props = detect_with_proposals(net, images)  # type: ignore[arg-type]
            m, n = proposal_recall(props, targets)
            matched, n_gt = matched + m, n_gt + n
            outs = [{k: v for k, v in o.items() if k in ("boxes", "scores", "labels")} for o in outs]
        else:
            arrays = [(img.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy() for img in images]
            outs = [{"boxes": torch.from_numpy(d.boxes), "scores": torch.from_numpy(d.scores),
                     "labels": torch.from_numpy(d.labels)} for d in model.detect(arrays)]
        for img, target, out in zip(images, targets, outs, strict=True):
            labels = out["labels"].tolist()
            keep = [i for i, lab in enumerate(labels) if int(lab) in mapping]
            idx = torch.tensor(keep, dtype=torch.long)
            dets.append({"boxes": out["boxes"][idx].float(), "scores": out["scores"][idx].float(),
                         "labels": torch.tensor([mapping[int(labels[i])] for i in keep], dtype=torch.int64)})
            gts.append({k: target[k] for k in ("boxes", "labels", "iscrowd") if k in target})
            sizes.append((int(img.shape[-2]), int(img.shape[-1])))
        bar.update(len(batch))

    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    bar.close()
    mAP, map50, per_class = coco_scores(gts, dets, data_label_names, sizes)
    n_ignored = sum(int(g["iscrowd"].sum()) for g in gts if "iscrowd" in g)
    n_valid = sum(len(g["boxes"]) for g in gts) - n_ignored
    return EvalResult(
        map50=map50, map=mAP,
        ar100_50=(matched / n_gt) if have_proposals and n_gt else math.nan,
        frames=len(gts), gt_boxes=n_valid, ignored_boxes=n_ignored,
        detections=sum(len(d["boxes"]) for d in dets), per_class_ap50=per_class,
        seconds=time.perf_counter() - t0,
    )


def evaluate_synth(
    model: Any,
    seeds: Sequence[int],
    width: int = 320,
    height: int = 240,
    frames: int = 250,
    every: int = 1,
    encode: bool = True,
    workdir: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> EvalResult:
    """Evaluate on held-out synthetic scenes: H.264-encoded and decoded like camera video (``encode=True``),
    or the raw rendered frames. Videos go to ``workdir`` (kept) or a temporary folder (deleted)."""
    from lab.synth import SceneSpec, write_coco, write_video

    low = [s for s in seeds if s < HELD_OUT_SEED]
    if low:
        log.warning("seeds %s are < %d, i.e. in the training range: this is not a held-out evaluation",
                    low[:5], HELD_OUT_SEED)
    n_frames = len(seeds) * len(range(0, frames, every))
    if not encode:
        return evaluate(model, synth_eval_samples(seeds, width, height, frames, every), label_names=label_names,
                        batch_size=batch_size, progress=progress, total=n_frames)
    spec = SceneSpec(width=width, height=height, frames=frames)
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        truths = [write_video(root / f"heldout_{s}.mp4", spec, seed=int(s)) for s in seeds]
        write_coco(truths, root / "heldout.coco.json")
        data = CocoVideoFrames(root / "heldout.coco.json", include_ignored=True, cache_videos=1, every=every)
        return evaluate(model, (data[i] for i in range(len(data))), label_names=label_names,
                        data_label_names=data.label_names, batch_size=batch_size, progress=progress,
                        total=len(data))


# --------------------------------------------------------------------------- CLI hooks


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python run_pipeline.py eval`."""
    from engines import ARCHS

    parser.add_argument("--weights", type=Path, required=True, metavar="FILE",
                        help="model weights (model.pt / last.pt from `train`, or a state dict)")
    parser.add_argument("--arch", choices=ARCHS, help="architecture (default: the one recorded in the weights file, "
                        "else fasterrcnn_lite)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--seeds", default=None, metavar="A-B",
                     help=f"held-out synthetic scene seeds, e.g. 1000-1004 (training uses seeds < {HELD_OUT_SEED}; "
                     "default 1000-1004)")
    src.add_argument("--coco", type=Path, metavar="FILE", help="COCO JSON with ground truth (video frames or images)")
    parser.add_argument("--images", type=Path, metavar="ROOT",
                        help="folder the COCO file's image / video names are relative to (default: its folder)")
    parser.add_argument("--frames", type=int, default=250, help="frames per synthetic scene (default 250)")
    parser.add_argument("--width", type=int, default=640, help="synthetic frame width (default 640)")
    parser.add_argument("--height", type=int, default=360, help="synthetic frame height (default 360)")
    parser.add_argument("--every", type=int, default=1, metavar="K", help="score every K-th frame (default 1)")
    parser.add_argument("--raw", action="store_true",
                        help="score raw rendered frames instead of H.264-encoded-and-decoded video")
    parser.add_argument("--keep-videos", type=Path, metavar="DIR", help="write the held-out videos + COCO JSON here")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per forward pass (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the scores as JSON")


def checkpoint_arch(path: str | Path) -> str | None:
    """The "arch" a checkpoint written by `train` records, if any."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: build_model reports it properly
        return None
    return obj.get("arch") if isinstance(obj, dict) and isinstance(obj.get("arch"), str) else None


def eval_report(args: argparse.Namespace) -> str:
    """`python run_pipeline.py eval ...`: score the model; returns the report (and writes --json)."""
    from engines import DEFAULT_ARCH
    from engines.models import build_model

    torch.set_num_threads(max(1, args.threads))
    arch = args.arch or checkpoint_arch(args.weights) or DEFAULT_ARCH
    loaded = build_model(arch, args.weights)
    if args.coco is not None:
        data = CocoVideoFrames(args.coco, args.images, include_ignored=True, cache_videos=1, every=args.every)
        what = f"{args.coco} ({len(data)} frames)"
        result = evaluate(loaded.model, (data[i] for i in range(len(data))), label_names=loaded.label_names,
                          data_label_names=data.label_names, batch_size=args.batch_size,
                          progress=sys.stderr.isatty(), total=len(data))
    else:
        seeds = parse_seeds(args.seeds or f"{HELD_OUT_SEED}-{HELD_OUT_SEED + 4}")
        what = (f"synthetic seeds {args.seeds or f'{HELD_OUT_SEED}-{HELD_OUT_SEED + 4}'}, {args.width}x{args.height}, "
                f"{'raw frames' if args.raw else 'H.264'}")
        result = evaluate_synth(loaded.model, seeds, args.width, args.height, args.frames, args.every,
                                encode=not args.raw, workdir=args.keep_videos, label_names=loaded.label_names,
                                batch_size=args.batch_size, progress=sys.stderr.isatty())
    if args.json:
        args.json.write_text(json.dumps({"weights": str(args.weights), "arch": arch, "data": what,
                                         **result.to_dict()}, indent=2))
    return f"Evaluation of {args.weights} ({arch}) on {what}, {result.seconds:.1f} s:\n{result.table()}"
