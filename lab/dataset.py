"""Training / evaluation data in torchvision's detection format.

Every sample is ``(image, target)``: ``image`` a float32 tensor ``[3, H, W]`` in 0..1 (the same input the
detector gets at run time, see :mod:`engines.torch_backend`), ``target`` a dict with ``boxes`` float32 ``[N, 4]``
(x1, y1, x2, y2 in pixels) and ``labels`` int64 ``[N]`` (1..K; 0 is background).  With ``include_ignored=True``
(evaluation) the target also holds ignored boxes, flagged by ``iscrowd`` int64 ``[N]`` = 1, the COCO way.

* :class:`SynthFrames` renders frames of synthetic scenes on the fly (no disk), as a deterministic, resumable
  stream: sample ``i`` of the stream depends only on ``(seed, i)`` and the constructor arguments.
* :class:`CocoVideoFrames` reads a COCO detection JSON whose images are either frames of video files
  (``video`` + ``frame_index``, the format :func:`lab.synth.write_coco` writes) or plain image files.

Seed convention for synthetic data: training uses scene seeds ``< 1000`` (:data:`HELD_OUT_SEED`); evaluation uses
seeds ``>= 1000``, never seen in training.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from lab.synth import CLASSES, ObjectTruth, SceneSpec, render_frames

log = logging.getLogger(__name__)

#: Synthetic scene seeds >= this are held out for evaluation; training seeds are below it.
HELD_OUT_SEED = 1000
#: Boxes narrower or shorter than this (pixels, after clipping) are dropped from training targets.
MIN_BOX_SIZE = 2.0
#: Label names of synthetic data: index = label id.
SYNTH_LABEL_NAMES: tuple[str, ...] = ("__background__", *CLASSES)

Sample = tuple[torch.Tensor, dict[str, torch.Tensor]]


def parse_seeds(text: str) -> list[int]:
    """``"0-99"`` -> 0..99 (inclusive); ``"1,5,7-9"`` -> [1, 5, 7, 8, 9]."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep:
            a, b = int(lo), int(hi)
            if b < a:
                raise ValueError(f"bad seed range {part!r}: end before start")
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"no seeds in {text!r}")
    return out


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 [3, H, W] in 0..1 (what the detector feeds the model)."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def make_target(
    boxes: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    ignored: Sequence[bool] | np.ndarray | None = None,
    include_ignored: bool = False,
    min_box_size: float = MIN_BOX_SIZE,
) -> dict[str, torch.Tensor]:
    """Build a torchvision detection target.

    Training targets (``include_ignored=False``) lose ignored boxes and boxes under ``min_box_size`` px; evaluation
    targets keep every box of positive size, ignored ones flagged ``iscrowd`` = 1.
    """
    b = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    lab = torch.as_tensor(np.asarray(labels, np.int64).reshape(-1))
    ign = torch.zeros(len(lab), dtype=torch.bool) if ignored is None else torch.as_tensor(
        np.asarray(ignored, bool).reshape(-1))
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if include_ignored:
        keep = (w > 0) & (h > 0)
    else:
        keep = (w >= min_box_size) & (h >= min_box_size) & ~ign
    target = {"boxes": b[keep].contiguous(), "labels": lab[keep].contiguous()}
    if include_ignored:
        target["iscrowd"] = ign[keep].to(torch.int64)
    return target


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> Sample:
    """Mirror an image and its boxes left-right."""
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def truths_to_target(truths: Sequence[ObjectTruth], include_ignored: bool = False) -> dict[str, torch.Tensor]:
    return make_target([o.box for o in truths], [o.label for o in truths], [o.ignored for o in truths],
                       include_ignored=include_ignored)


def collate_detection(batch: Sequence[Sample]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """DataLoader collate for detection: images of different sizes stay a list."""
    images = [s[0] for s in batch]
    targets = [s[1] for s in batch]
    return images, targets


# --------------------------------------------------------------------------- synthetic frames


@dataclass(frozen=True)
class SynthConfig:
    """How the synthetic training stream is made (all plain values: stored in checkpoints as a dict)."""

    seeds: tuple[int, ...] = tuple(range(HELD_OUT_SEED))
    width: int = 320
    height: int = 240
    frames: int = 250  # rendered per scene
    every: int = 5  # keep every k-th frame (random phase per scene)
    videos_per_chunk: int = 8  # scenes rendered together and shuffled frame-wise
    flip_prob: float = 0.5

    @property
    def per_video(self) -> int:
        return max(1, self.frames // self.every)

    @property
    def chunk_len(self) -> int:
        return self.per_video * self.videos_per_chunk

    @property
    def epoch_len(self) -> int:
        """Samples in one pass over every scene seed."""
        return self.per_video * len(self.seeds)


class SynthFrames(IterableDataset):
    """An endless (or ``length``-limited), deterministic stream of rendered training frames.

    The stream is cut into chunks of ``videos_per_chunk`` scenes. Scene seeds are drawn without replacement
    (a fresh permutation per pass over ``seeds``); each scene is rendered once, every ``every``-th frame is kept
    (random phase), and the chunk's frames are shuffled together so a batch mixes scenes. Sample ``i`` depends
    only on ``(seed, i)``, so training resumes exactly with ``start=i`` (only one chunk is re-rendered).
    Ignored (visibility < 0.2) and degenerate (< 2 px) boxes are left out of the targets.
    """

    def __init__(self, config: SynthConfig = SynthConfig(), seed: int = 0, start: int = 0,
                 length: int | None = None, include_ignored: bool = False) -> None:
        super().__init__()
        if config.every < 1 or config.frames < 1 or config.videos_per_chunk < 1 or not config.seeds:
            raise ValueError(f"bad synthetic data config: {config}")
        self.config = config
        self.seed = int(seed)
        self.start = int(start)
        self.length = length
        self.include_ignored = include_ignored
        self.spec = SceneSpec(width=config.width, height=config.height, frames=config.frames)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("endless SynthFrames stream has no length")
        return self.length

    def _scene_seed(self, k: int) -> int:
        """Scene seed of the k-th scene of the stream (a permutation of `seeds` per pass)."""
        seeds = self.config.seeds
        p, j = divmod(k, len(seeds))
        perm = np.random.default_rng([self.seed, 7, p]).permutation(len(seeds))
        return int(seeds[int(perm[j])])

    def chunk(self, c: int) -> list[Sample]:
        """Render chunk c: `chunk_len` samples in their stream order."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, 11, c])
        samples: list[tuple[np.ndarray, list[ObjectTruth]]] = []
        for v in range(cfg.videos_per_chunk):
            scene = self._scene_seed(c * cfg.videos_per_chunk + v)
            n = cfg.per_video
            slack = max(0, cfg.frames - 1 - (n - 1) * cfg.every)
            phase = int(rng.integers(0, min(cfg.every - 1, slack) + 1))
            wanted = {phase + i * cfg.every for i in range(n)}
            for t, (rgb, truths) in enumerate(render_frames(self.spec, scene)):
                if t in wanted:
                    samples.append((rgb, truths))
                if t >= max(wanted):
                    break
        order = rng.permutation(len(samples))
        flips = rng.random(len(samples)) < cfg.flip_prob
        out: list[Sample] = []
        for i, idx in enumerate(order):
            rgb, truths = samples[int(idx)]
            image, target = to_tensor(rgb), truths_to_target(truths, self.include_ignored)
            if flips[i]:
                image, target = hflip(image, target)
            out.append((image, target))
        return out

    def __iter__(self) -> Iterator[Sample]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise RuntimeError("SynthFrames is a single ordered stream: use at most one DataLoader worker")
        L = self.config.chunk_len
        i = self.start
        end = None if self.length is None else self.start + self.length
        c, off = divmod(i, L)
        while end is None or i < end:
            samples = self.chunk(c)
            for s in samples[off:]:
                if end is not None and i >= end:
                    return
                yield s
                i += 1
            c, off = c + 1, 0


def synth_eval_samples(seeds: Sequence[int], width: int = 320, height: int = 240, frames: int = 250,
                       every: int = 1) -> Iterator[Sample]:
    """Raw (unencoded) rendered frames of held-out scenes, with ignored boxes flagged (for evaluation)."""
    spec = SceneSpec(width=width, height=height, frames=frames)
    for s in seeds:
        for t, (rgb, truths) in enumerate(render_frames(spec, int(s))):
            if t % every == 0:
                yield to_tensor(rgb), truths_to_target(truths, include_ignored=True)


# --------------------------------------------------------------------------- COCO (videos or images)


class CocoVideoFrames(Dataset):
    """Samples of a COCO detection JSON; images are video frames or image files.

    An image entry with ``video`` (a file name) and ``frame_index`` (0-based decode order) is a frame of that
    video, looked up as ``<root>/<video>`` (``root`` = ``images_root`` or the JSON's folder), falling back to the
    ``path`` recorded in the top-level ``videos`` list. Each video is decoded once with PyAV and the frames this
    set needs are cached in memory (at most ``cache_videos`` videos at a time; None = all). Other entries are
    image files, ``<root>/<file_name>``, read with Pillow (torchvision deprecated its image codecs in 0.29).

    COCO category ids (any, possibly sparse) map to contiguous labels 1..K in category-id order;
    :attr:`label_names` names them. ``iscrowd`` / ``ignore`` annotations are left out, or kept and flagged
    with ``include_ignored=True`` (evaluation).
    """

    def __init__(self, coco_json: str | Path, images_root: str | Path | None = None, include_ignored: bool = False,
                 cache_videos: int | None = None, every: int = 1) -> None:
        self.path = Path(coco_json)
        doc = json.loads(self.path.read_text())
        self.root = Path(images_root) if images_root is not None else self.path.parent
        self.include_ignored = include_ignored
        self.cache_videos = cache_videos
        cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
        if not cats:
            raise ValueError(f"{self.path}: no categories")
        self.cat_to_label = {int(c["id"]): i + 1 for i, c in enumerate(cats)}
        self.label_names: tuple[str, ...] = ("__background__", *(str(c["name"]) for c in cats))
        self._video_paths = {str(v.get("file_name")): str(v["path"]) for v in doc.get("videos", []) if "path" in v}
        images = sorted(doc["images"], key=lambda im: (str(im.get("video", "")), int(im.get("frame_index", 0)),
                                                       int(im["id"])))
        self.images = images[::max(1, every)]
        by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in self.images}
        for a in doc.get("annotations", []):
            if int(a["image_id"]) in by_image:
                by_image[int(a["image_id"])].append(a)
        self._anns = by_image
        self._needed: dict[str, set[int]] = {}
        for im in self.images:
            if "video" in im and "frame_index" in im:
                self._needed.setdefault(str(im["video"]), set()).add(int(im["frame_index"]))
        self._cache: OrderedDict[str, dict[int, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, index: int) -> int:
        return int(self.images[index]["id"])

    def _video_file(self, name: str) -> Path:
        p = self.root / name
        if p.is_file():
            return p
        alt = self._video_paths.get(name)
        if alt and Path(alt).is_file():
            return Path(alt)
        raise FileNotFoundError(f"video {name!r} of {self.path} not found under {self.root}")

    def _frame(self, video: str, index: int) -> np.ndarray:
        frames = self._cache.get(video)
        if frames is None:
            need = self._needed[video]
            last = max(need)
            frames = {}
            with av.open(str(self._video_file(video))) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in need:
                        frames[i] = frame.to_ndarray(format="rgb24")
                    if i >= last:
                        break
            missing = need - frames.keys()
            if missing:
                raise ValueError(f"video {video!r} has no frame {min(missing)} (it has {i + 1} frames)")
            self._cache[video] = frames
            while self.cache_videos is not None and len(self._cache) > max(1, self.cache_videos):
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(video)
        return frames[index]

    def __getitem__(self, index: int) -> Sample:
        im = self.images[index]
        if "video" in im and "frame_index" in im:
            image = to_tensor(self._frame(str(im["video"]), int(im["frame_index"])))
        else:
            with Image.open(self.root / str(im["file_name"])) as file:
                image = to_tensor(np.array(file.convert("RGB")))  # a writable copy
        boxes, labels, ignored = [], [], []
        for a in self._anns[int(im["id"])]:
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes.append((x, y, x + w, y + h))
            labels.append(self.cat_to_label[int(a["category_id"])])
            ignored.append(bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0)))
        target = make_target(boxes, labels, ignored, include_ignored=self.include_ignored)
        target["image_id"] = torch.tensor(int(im["id"]), dtype=torch.int64)
        return image, target


class ShuffledStream(IterableDataset):
    """Endless, deterministic, resumable training stream over a map-style dataset.

    Sample ``i`` is item ``perm_e[i % N]`` of epoch ``e = i // N`` (a fresh permutation per epoch), mirrored with
    probability ``flip_prob`` -- all a function of ``(seed, i)``, so ``start=i`` resumes exactly.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, start: int = 0, flip_prob: float = 0.5) -> None:
        super().__init__()
        self.dataset = dataset
        self.seed = int(seed)
        self.start = int(start)
        self.flip_prob = flip_prob
        self.n = len(dataset)  # type: ignore[arg-type]
        if self.n == 0:
            raise ValueError("empty dataset")

    def __iter__(self) -> Iterator[Sample]:
        i = self.start
        perm, epoch = None, -1
        while True:
            e, j = divmod(i, self.n)
            if e != epoch:
                perm, epoch = np.random.default_rng([self.seed, 5, e]).permutation(self.n), e
            image, target = self.dataset[int(perm[j])]
            if np.random.default_rng([self.seed, 13, i]).random() < self.flip_prob:
                image, target = hflip(image, target)
            yield image, target
            i += 1
