"""Training of the detectors (`python run_pipeline.py train`).

Data: synthetic scenes rendered on the fly (default; scene seeds < 1000, the held-out ones being >= 1000) or a
COCO JSON of video frames / images. Optimiser: AdamW with linear warm-up and cosine decay (default) or SGD with
momentum, both on a schedule that is a pure function of the step, so ``--resume`` continues exactly: the
checkpoint carries the model, the optimiser state, the step, the torch RNG state and the whole config, and the
data streams are deterministic functions of ``(seed, sample index)``.

Files in ``--out``:

* ``last.pt``: ``{"model", "optimizer", "step", "label_names", "arch", "config", "rng"}`` -- every
  ``--checkpoint-every`` steps, at the end and on Ctrl-C. Resume with ``--resume OUT/last.pt``.
* ``model.pt``: ``{"model", "label_names", "arch"}`` -- float32 weights for ``--weights`` of `run` / `eval`.

Every checkpoint holds only tensors, dicts, lists, tuples, str, int, float, bool and None, so
``torch.load(..., weights_only=True)`` reads it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engines import ARCHS, DEFAULT_ARCH
from engines.base import EngineError
from lab.dataset import (
    HELD_OUT_SEED,
    SYNTH_LABEL_NAMES,
    CocoVideoFrames,
    Sample,
    ShuffledStream,
    SynthConfig,
    SynthFrames,
    collate_detection,
    parse_seeds,
)

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in checkpoints (as a JSON-able dict) and restored on resume."""

    arch: str = DEFAULT_ARCH
    # data: synthetic scenes (default) or a COCO file
    seeds: str = f"0-{HELD_OUT_SEED - 1}"
    width: int = 640
    height: int = 360
    frames: int = 250
    every: int = 5
    videos_per_chunk: int = 8
    coco: str | None = None
    images: str | None = None
    flip_prob: float = 0.5
    # schedule
    steps: int | None = None  # total optimiser steps; None -> from epochs
    epochs: float | None = None  # passes over the data; used when steps is None
    batch_size: int = 8
    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # None -> 1e-3 (adamw) / 0.02 (sgd)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup: int = 100
    min_lr_frac: float = 0.02
    grad_clip: float = 10.0
    seed: int = 0
    # model input size (None -> the arch's own, which is what `run`/`eval` use); train_sizes = multi-scale
    # training shorter sides, the run-time size is always used for evaluation
    min_size: int | None = None
    max_size: int | None = None
    train_sizes: list[int] | None = None
    roi_batch: int | None = 64  # RoIs sampled per image for the box-head loss (None: the arch's own)
    matmul_roi_align: bool = True  # training-time RoIAlign as two matmuls (same numbers, faster backward on CPU)
    init: str | None = None  # initial weights (tensors of matching shape are loaded)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.optimizer == "adamw" else 0.02

    def synth(self) -> SynthConfig:
        return SynthConfig(seeds=tuple(parse_seeds(self.seeds)), width=self.width, height=self.height,
                           frames=self.frames, every=self.every, videos_per_chunk=self.videos_per_chunk,
                           flip_prob=self.flip_prob)


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per step taken in this call
    interrupted: bool = False
    eval: dict[str, Any] | None = None


# --------------------------------------------------------------------------- model / optimiser / schedule


def build_train_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The arch with `num_classes` outputs, freshly initialised (from torch's current RNG state)."""
    from engines.models import _TORCHVISION_BUILDERS, fasterrcnn_lite, freeze_batchnorm, is_weights_name
    from engines.models import torchvision_model

    size_kw = {k: v for k, v in (("min_size", config.min_size), ("max_size", config.max_size)) if v is not None}
    if config.arch == DEFAULT_ARCH:
        model = fasterrcnn_lite(num_classes=num_classes, **size_kw)
    elif config.arch in _TORCHVISION_BUILDERS:
        model = torchvision_model(config.arch, num_classes, **size_kw)
        if is_weights_name(config.init):
            # Fine-tuning torchvision's COCO weights: its BatchNorm statistics stay fixed, as torchvision builds
            # every pretrained detector (small batches would otherwise wreck them).
            freeze_batchnorm(model)
    else:
        raise EngineError(f"unknown arch {config.arch!r}; choose one of: {', '.join(ARCHS)}")
    if config.train_sizes:
        # GeneralizedRCNNTransform picks a random min_size per batch in training and min_size[-1] in eval.
        run_size = model.transform.min_size[-1]
        model.transform.min_size = (*config.train_sizes, run_size)
    if config.matmul_roi_align:
        _use_matmul_roi_align(model)
    if config.roi_batch:
        # training-time sampling only (no weights depend on it): fewer RoIs = cheaper RoIAlign backward on CPU
        model.roi_heads.fg_bg_sampler.batch_size_per_image = int(config.roi_batch)
    return model


# --------------------------------------------------------------------------- RoIAlign for training on CPU


def _axis_weights(start: torch.Tensor, length: torch.Tensor, bins: int, g: int, size: int) -> torch.Tensor:
    """[K, bins, size]: for each RoI and output bin, the mean over the bin's g sample points of their bilinear
    interpolation weights on each feature row (or column) -- torchvision's roi_align sampling, axis by axis."""
    k = start.shape[0]
    s = torch.arange(bins * g, dtype=start.dtype, device=start.device)
    c = start[:, None] + (length / bins)[:, None] * ((s // g) + ((s % g) + 0.5) / g)[None, :]  # [K, bins*g]
    valid = ((c >= -1.0) & (c <= size)).to(c.dtype)  # samples beyond a pixel outside the map count as 0
    c = c.clamp(min=0.0)
    low = c.floor()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    c = torch.where(edge, low, c)
    frac = c - low
    low_i = low.long()
    high_i = torch.where(edge, low_i, low_i + 1)
    m = torch.zeros(k, bins * g, size, dtype=start.dtype, device=start.device)
    m.scatter_add_(2, low_i[..., None], ((1.0 - frac) * valid)[..., None])
    m.scatter_add_(2, high_i[..., None], (frac * valid)[..., None])
    return m.view(k, bins, g, size).mean(dim=2)


def roi_align_matmul(feat: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float,
                     sampling_ratio: int, aligned: bool = False) -> torch.Tensor:
    """``torchvision.ops.roi_align`` for a fixed ``sampling_ratio > 0``, written as out = Ay @ F @ Ax^T.

    The bilinear sampling of RoIAlign is separable, so each RoI's output is a product of two small interpolation
    matrices with its image's feature map. Same values (to float rounding) and gradients as torchvision's kernel,
    but the backward pass is two multithreaded matmuls instead of torchvision's single-threaded CPU scatter loop,
    which dominates a training step of a small model on CPU.
    """
    B, C, H, W = feat.shape
    ph, pw = output_size
    off = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - off
    y1 = rois[:, 2] * spatial_scale - off
    rw = rois[:, 3] * spatial_scale - off - x1
    rh = rois[:, 4] * spatial_scale - off - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    ay = _axis_weights(y1, rh, ph, sampling_ratio, H)  # [K, ph, H]
    ax = _axis_weights(x1, rw, pw, sampling_ratio, W)  # [K, pw, W]
    out = feat.new_zeros(rois.shape[0], C, ph, pw)
    image_of = rois[:, 0].long()
    for i in range(B):
        sel = (image_of == i).nonzero().squeeze(1)
        k = sel.numel()
        if k == 0:
            continue
        rows = ay[sel].reshape(k * ph, H) @ feat[i].permute(1, 0, 2).reshape(H, C * W)  # [(k, ph), (C, W)]
        o = torch.bmm(rows.view(k, ph * C, W), ax[sel].transpose(1, 2))  # [k, (ph, C), pw]
        out = out.index_copy(0, sel, o.view(k, ph, C, pw).permute(0, 2, 1, 3))
    return out


class _MatmulRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign that uses :func:`roi_align_matmul` in training mode on a single feature level."""

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        x_filtered = [v for k, v in x.items() if k in self.featmap_names]
        if not self.training or len(x_filtered) != 1 or self.sampling_ratio <= 0:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(x_filtered, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        return roi_align_matmul(x_filtered[0], _convert_to_roi_format(boxes), self.output_size, self.scales[0],
                                self.sampling_ratio)


def _use_matmul_roi_align(model: nn.Module) -> None:
    pool = getattr(getattr(model, "roi_heads", None), "box_roi_pool", None)
    if type(pool) is MultiScaleRoIAlign:  # no parameters or buffers: swapping the class changes no weights
        pool.__class__ = _MatmulRoIAlign


def _load_init(model: nn.Module, path: str, arch: str) -> None:
    """Load the tensors of `path` that fit `model`: a file, or torchvision's weights of `arch` by name (DEFAULT,
    COCO_V1: from the torch hub cache, downloaded once); a box predictor for other classes starts afresh."""
    from engines.models import is_weights_name, load_torchvision_state, torchvision_weights

    if is_weights_name(path):
        state = load_torchvision_state(torchvision_weights(arch, path))
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fit, strict=False)
    log.info("init from %s: %d/%d tensors loaded (%d skipped: missing or other shape)", path, len(fit), len(own),
             len(own) - len(fit))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(0.9, 0.999), eps=1e-8)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.peak_lr, momentum=config.momentum, nesterov=False)
    raise ValueError(f"unknown optimizer {config.optimizer!r} (adamw or sgd)")


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Learning rate of 0-based step `step`: linear warm-up from 1 % of peak (over at most a quarter of the run),
    then cosine decay to ``min_lr_frac`` of peak at the last step."""
    peak = config.peak_lr
    warmup = min(config.warmup, max(1, total // 4))
    if step < warmup:
        return peak * (0.01 + 0.99 * (step + 1) / warmup)
    span = max(1, total - 1 - warmup)
    t = min(1.0, (step - warmup) / span)
    return peak * (config.min_lr_frac + (1 - config.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------------- data


def _data(config: TrainConfig, start_sample: int) -> tuple[Iterator[Sample], tuple[str, ...], int]:
    """(sample stream from `start_sample`, label names, samples per epoch)."""
    if config.coco:
        data = CocoVideoFrames(config.coco, config.images, include_ignored=False)
        stream = ShuffledStream(data, seed=config.seed, start=start_sample, flip_prob=config.flip_prob)
        return iter(stream), data.label_names, len(data)
    synth = config.synth()
    low = [s for s in synth.seeds if s >= HELD_OUT_SEED]
    if low:
        log.warning("training on scene seeds >= %d (%s...), which are reserved for held-out evaluation",
                    HELD_OUT_SEED, low[:3])
    stream = SynthFrames(synth, seed=config.seed, start=start_sample)
    return iter(stream), SYNTH_LABEL_NAMES, synth.epoch_len


def _batches(stream: Iterator[Sample], batch_size: int) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
    while True:
        batch = [next(stream) for _ in range(batch_size)]
        yield collate_detection(batch)


DEFAULT_SYNTH_STEPS = 3000
DEFAULT_COCO_EPOCHS = 12.0


def total_steps(config: TrainConfig, epoch_len: int) -> int:
    """--steps, else --epochs over the data, else 3000 steps (synthetic) / 12 epochs (COCO)."""
    if config.steps is not None:
        return int(config.steps)
    if config.epochs is None and not config.coco:
        return DEFAULT_SYNTH_STEPS
    epochs = config.epochs if config.epochs is not None else DEFAULT_COCO_EPOCHS
    return max(1, math.ceil(epochs * epoch_len / config.batch_size))


# --------------------------------------------------------------------------- checkpoints


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    label_names: tuple[str, ...], config: TrainConfig) -> None:
    _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": int(step),
           "label_names": list(label_names), "arch": config.arch, "config": config.to_dict(),
           "rng": {"torch": torch.get_rng_state()}}, path)


def save_weights(path: Path, model: nn.Module, label_names: tuple[str, ...], arch: str) -> None:
    """Weights-only file for `--weights`: float32 tensors, label names, arch."""
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).clone()
             for k, v in model.state_dict().items()}
    _save({"model": state, "label_names": list(label_names), "arch": arch}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not {"model", "optimizer", "step", "config"} <= obj.keys():
        raise EngineError(f"{path} is not a training checkpoint (last.pt): model.pt files cannot be resumed; "
                          "use --init to start from their weights")
    return obj


# --------------------------------------------------------------------------- training loop


def train(
    config: TrainConfig | None = None,
    out_dir: str | Path = "runs/train",
    resume: str | Path | None = None,
    checkpoint_every: int = 500,
    log_every: int = 50,
    stop_at: int | None = None,
    eval_seeds: list[int] | None = None,
    eval_every: int = 0,
    eval_frames: int = 250,
    eval_every_frame: int = 5,
    progress: bool | None = None,
    threads: int = 2,
) -> TrainResult:
    """Train (or resume training) a detector; write `last.pt` and `model.pt` to `out_dir`.

    With `resume`, the checkpoint's config replaces `config` (the run continues on the same data, schedule and
    optimiser state from the saved step). `stop_at` ends the call after that many steps in total, leaving the
    schedule as if the run would go on (for tests and chunked runs). `eval_seeds`: held-out synthetic scenes
    scored every `eval_every` steps (0: only at the end). `progress`: tqdm bar (None: only on a terminal).
    """
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        saved = TrainConfig.from_dict(ckpt["config"])
        if config is not None and config != saved and config != TrainConfig():
            log.warning("resuming: the run's saved config replaces the given one")
        config = saved
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    start = int(ckpt["step"]) if ckpt is not None else 0
    stream, label_names, epoch_len = _data(config, start * config.batch_size)
    if ckpt is not None and ckpt.get("label_names") and tuple(ckpt["label_names"]) != tuple(label_names):
        raise EngineError(f"checkpoint labels {ckpt['label_names']} differ from the data's {list(label_names)}")
    total = total_steps(config, epoch_len)
    model = build_train_model(config, len(label_names))
    if config.init and ckpt is None:
        _load_init(model, config.init, config.arch)
    optimizer = build_optimizer(model, config)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "rng" in ckpt:
            torch.set_rng_state(ckpt["rng"]["torch"])
        log.info("resumed from %s at step %d/%d", resume, start, total)
    end = total if stop_at is None else min(total, int(stop_at))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training %s (%.2fM params, %d classes) for steps %d..%d of %d: batch %d, %s lr %.2g, %s",
             config.arch, n_params / 1e6, len(label_names) - 1, start, end, total, config.batch_size,
             config.optimizer, config.peak_lr,
             f"COCO {config.coco}" if config.coco else f"synthetic seeds {config.seeds} {config.width}x"
             f"{config.height} every {config.every}th frame ({epoch_len} frames/epoch)")
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    model.train()
    result = TrainResult(step=start, out_dir=out)
    batches = _batches(stream, config.batch_size)
    if progress is None:
        progress = sys.stderr.isatty()
    window: dict[str, list[float]] = {k: [] for k in ("loss", *LOSS_KEYS)}
    ema: dict[str, float] = {}
    t_window = time.perf_counter()
    step = start
    try:
        with logging_redirect_tqdm(), tqdm(total=total, initial=start, desc="train", unit="step",
                                           disable=not progress, dynamic_ncols=True) as bar:
            while step < end:
                images, targets = next(batches)
                lr = lr_at(step, total, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                losses = model(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {float(loss)} at step {step}: lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                record = {"step": step, "lr": lr, "loss": float(loss.detach()),
                          **{k: float(losses[k].detach()) for k in LOSS_KEYS if k in losses}}
                result.history.append(record)
                result.step = step
                for k in window:
                    if k in record:
                        window[k].append(record[k])
                        ema[k] = record[k] if k not in ema else 0.9 * ema[k] + 0.1 * record[k]
                bar.update(1)
                bar.set_postfix({"loss": f"{ema['loss']:.3f}", "obj": f"{ema.get('loss_objectness', 0):.3f}",
                                 "rpn_box": f"{ema.get('loss_rpn_box_reg', 0):.3f}",
                                 "cls": f"{ema.get('loss_classifier', 0):.3f}",
                                 "box": f"{ema.get('loss_box_reg', 0):.3f}", "lr": f"{lr:.2g}"}, refresh=False)
                if log_every and (step % log_every == 0 or step == end):
                    n = len(window["loss"])
                    dt = (time.perf_counter() - t_window) / max(1, n)
                    log.info("step %d/%d  loss %.4f  (%s)  lr %.3g  %.2f s/step", step, total,
                             sum(window["loss"]) / max(1, n),
                             "  ".join(f"{k[5:]} {sum(v) / len(v):.4f}" for k, v in window.items()
                                       if k != "loss" and v), lr, dt)
                    window = {k: [] for k in window}
                    t_window = time.perf_counter()
                if checkpoint_every and step % checkpoint_every == 0 and step < end:
                    save_checkpoint(out / "last.pt", model, optimizer, step, label_names, config)
                if eval_seeds and eval_every and step % eval_every == 0 and step < end:
                    _evaluate(model, eval_seeds, config, eval_frames, eval_every_frame, step)
                    model.train()
    except KeyboardInterrupt:
        result.interrupted = True
        log.warning("interrupted at step %d: saving %s; continue with --resume %s", step, out / "last.pt",
                    out / "last.pt")
    save_checkpoint(out / "last.pt", model, optimizer, step, label_names, config)
    save_weights(out / "model.pt", model, label_names, config.arch)
    log.info("step %d/%d: wrote %s and %s (%.1f MB)", step, total, out / "last.pt", out / "model.pt",
             (out / "model.pt").stat().st_size / 1e6)
    if eval_seeds and not result.interrupted:
        res = _evaluate(model, eval_seeds, config, eval_frames, eval_every_frame, step)
        result.eval = res.to_dict()
        (out / "eval.json").write_text(json.dumps({"step": step, **result.eval}, indent=2))
    return result


def _evaluate(model: nn.Module, seeds: list[int], config: TrainConfig, frames: int, every: int, step: int) -> Any:
    from lab.evaluate import evaluate_synth

    res = evaluate_synth(model, seeds, config.width, config.height, frames, every, encode=True)
    log.info("step %d eval on seeds %s (%d frames, %.0f s): mAP@0.5 %.3f  mAP@[.5:.95] %.3f  AR@100 %.3f  %s",
             step, f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else seeds[0], res.frames, res.seconds, res.map50,
             res.map, res.ar100_50, " ".join(f"{k} {v:.3f}" for k, v in res.per_class_ap50.items()))
    return res


# --------------------------------------------------------------------------- CLI hooks


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python run_pipeline.py train`."""
    d = TrainConfig()
    parser.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR",
                        help="output folder for last.pt (resumable) and model.pt (weights) (default runs/train)")
    parser.add_argument("--resume", type=Path, metavar="CKPT",
                        help="continue a run from its last.pt (its saved config is used; data/schedule args ignored)")
    parser.add_argument("--arch", choices=ARCHS, default=d.arch, help=f"architecture (default {d.arch})")
    parser.add_argument("--init", type=Path, metavar="FILE|NAME",
                        help="start from these weights (the tensors that fit): a file, or torchvision's COCO weights "
                        "of --arch by name (DEFAULT, COCO_V1), downloaded once into the torch hub cache")
    data = parser.add_argument_group("data (default: synthetic scenes rendered on the fly)")
    data.add_argument("--seeds", default=d.seeds, metavar="A-B",
                      help=f"synthetic scene seeds to train on (default {d.seeds}; seeds >= {HELD_OUT_SEED} are "
                      "held out for `eval`)")
    data.add_argument("--width", type=int, default=d.width, metavar="W",
                      help=f"synthetic frame width (default {d.width})")
    data.add_argument("--height", type=int, default=d.height, metavar="H",
                      help=f"synthetic frame height (default {d.height})")
    data.add_argument("--frames", type=int, default=d.frames, metavar="N", help=f"frames per scene (default {d.frames})")
    data.add_argument("--every", type=int, default=d.every, metavar="K",
                      help=f"train on every K-th frame of a scene (default {d.every})")
    data.add_argument("--coco", type=Path, metavar="FILE", help="train on this COCO JSON (video frames or images)")
    data.add_argument("--images", type=Path, metavar="ROOT", help="folder the COCO names are relative to")
    data.add_argument("--flip-prob", type=float, default=d.flip_prob, metavar="P",
                      help=f"horizontal flip probability (default {d.flip_prob})")
    sched = parser.add_argument_group("schedule")
    how_long = sched.add_mutually_exclusive_group()
    how_long.add_argument("--steps", type=int, metavar="N", help=f"optimiser steps in total (default "
                          f"{DEFAULT_SYNTH_STEPS} on synthetic data, about 0.65 s each on 2 CPU cores)")
    how_long.add_argument("--epochs", type=float, metavar="E",
                          help=f"passes over the data instead (default {DEFAULT_COCO_EPOCHS:g} with --coco)")
    sched.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N", help=f"(default {d.batch_size})")
    sched.add_argument("--optimizer", choices=["adamw", "sgd"], default=d.optimizer, help="(default adamw)")
    sched.add_argument("--lr", type=float, help="peak learning rate (default 1e-3 adamw, 0.02 sgd)")
    sched.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="W",
                       help=f"(default {d.weight_decay:g}; none on norms and biases)")
    sched.add_argument("--warmup", type=int, default=d.warmup, metavar="N",
                       help=f"linear warm-up steps before the cosine decay (default {d.warmup})")
    sched.add_argument("--seed", type=int, default=d.seed, help="RNG seed: same seed, same run")
    sched.add_argument("--roi-batch", type=int, default=d.roi_batch, metavar="N",
                       help=f"RoIs sampled per image for the box-head loss (default {d.roi_batch})")
    sched.add_argument("--torchvision-roi-align", action="store_true",
                       help="train with torchvision's RoIAlign kernel instead of the (equal, faster) matmul form")
    sched.add_argument("--train-sizes", default=None, metavar="S1,S2",
                       help="multi-scale training: random shorter-side sizes (the run-time size is added)")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="write last.pt every N steps")
    run.add_argument("--log-every", type=int, default=50, metavar="N", help="log mean losses every N steps")
    run.add_argument("--eval-seeds", default=None, metavar="A-B",
                     help="held-out synthetic seeds to score at the end (and every --eval-every steps)")
    run.add_argument("--eval-every", type=int, default=0, metavar="N",
                     help="also score --eval-seeds every N steps (every 5th frame; default: only at the end)")
    run.add_argument("--threads", type=int, default=2, metavar="N", help="torch CPU threads (default 2)")


def train_from_args(args: argparse.Namespace) -> int:
    """`python run_pipeline.py train ...`; exit 0 (130 when interrupted)."""
    config = TrainConfig(
        arch=args.arch, seeds=args.seeds, width=args.width, height=args.height, frames=args.frames,
        every=args.every, coco=str(args.coco) if args.coco else None, images=str(args.images) if args.images else None,
        flip_prob=args.flip_prob, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, seed=args.seed,
        train_sizes=[int(s) for s in args.train_sizes.split(",")] if args.train_sizes else None,
        roi_batch=args.roi_batch, matmul_roi_align=not args.torchvision_roi_align,
        init=str(args.init) if args.init else None,
    )
    result = train(config, args.out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                   log_every=args.log_every, threads=args.threads,
                   eval_seeds=parse_seeds(args.eval_seeds) if args.eval_seeds else None, eval_every=args.eval_every)
    log.info("%s at step %d: weights %s, resumable checkpoint %s", "interrupted" if result.interrupted else "finished",
             result.step, result.out_dir / "model.pt", result.out_dir / "last.pt")
    return 130 if result.interrupted else 0
