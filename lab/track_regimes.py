"""Regime matrix for tracker evaluation: simulated detectors applied to ground-truth trajectories.

A *regime* is one condition users meet -- a detector's score level and spread, box jitter, miss and false-positive
rates, frame size, frame rate, dropped frames, crowd density, motion speed -- applied to ground-truth boxes:

* **Synthetic trajectories** from :mod:`lab.synth`'s scene simulation (the same object population and dynamics as
  the rendered clips; nothing is rendered: boxes are all the tracker sees). The simulation steps at
  :data:`BASE_FPS`; lower frame rates keep every k-th step, so objects move at the same speed per *second*.
* **Real pedestrian trajectories**: the TUD-Campus and TUD-Stadtmitte ground truth (MOTChallenge ``gt.txt``, 25 fps,
  640x480) shipped in PyPI ``motmetrics``' wheel. People stop, turn, walk in groups and occlude each other.
  ``make tud-data`` fetches the wheel to ``$RPN_TUD_DIR`` (default ``~/.cache/rpn-pipeline/tud``) and unpacks the two
  files; they are never committed. (Only the files are read: motmetrics' code breaks on NumPy 2.)

* **Real pedestrian trajectories for tuning** (optional local data, never committed or fetched: their licence is
  non-commercial): the MOT15 training sequences but TUD (``$RPN_MOT15_DIR``) and the seven MOT17 training sequences
  (``$RPN_MOT17_DIR``), MOTChallenge layout ``<SEQ>/gt/gt.txt`` + ``<SEQ>/seqinfo.ini`` (docs/tracking.md).

Visibility of each ground-truth box is computed from box geometry: the part of the box inside the frame, minus the
parts covered by boxes in front (synthetic: the scene's depth order; TUD and MOT15: the box whose bottom edge is
lower is nearer the camera); MOT17 annotates its own, occluding objects included. Boxes less than 20 % visible are
"ignored" in scoring (MOTChallenge distractors).

**The split** (:data:`REGIMES`, ``split``): trackers -- ours and the peers' grid search -- are tuned on the
``tune`` regimes only; every ``held-out`` regime, and all real-motion (TUD) sequences, are only ever reported.
Held-out regimes use other seeds and move each noise axis outside the tuning range (docs/tracking.md).
"""
from __future__ import annotations

import configparser
import contextlib
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lab.track_clips import Clip

__all__ = ["BASE_FPS", "MOT15_SEQUENCES", "MOT17_SEQUENCES", "MOT_SEQUENCES", "REGIMES", "Detector", "Regime",
           "Truth", "mot_dir", "mot_truth", "motchallenge_truth", "simulate", "synth_truth", "tud_dir", "tud_truth"]

BASE_FPS = 30.0  # the synthetic simulation's step rate; lower frame rates keep every k-th step
TUD_SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
#: The MOT15 (2D MOT 2015) training sequences of the real-motion tuning set: all but TUD-Campus and TUD-Stadtmitte,
#: which are held out (the TUD regimes) and never read from the MOT15 directory.
MOT15_SEQUENCES = ("ADL-Rundle-6", "ADL-Rundle-8", "ETH-Bahnhof", "ETH-Pedcross2", "ETH-Sunnyday", "KITTI-13",
                   "KITTI-17", "PETS09-S2L1", "Venice-2")
#: The MOT17 training sequences (one ground truth per sequence: MOT17-02-FRCNN, -DPM and -SDP share it).
MOT17_SEQUENCES = ("MOT17-02", "MOT17-04", "MOT17-05", "MOT17-09", "MOT17-10", "MOT17-11", "MOT17-13")
#: The optional MOTChallenge tuning sets and their sequences.
MOT_SEQUENCES = {"MOT15": MOT15_SEQUENCES, "MOT17": MOT17_SEQUENCES}
#: MOT16/17 ground-truth classes a person detector fires on: pedestrian (1, the one scored), person on a vehicle (2),
#: static person (7), distractor (8), reflection (12) -- scored as distractors. Vehicles and occluders are left out.
MOT17_PERSON_CLASSES = (1, 2, 7, 8, 12)
IGNORE_VISIBILITY = 0.2


# --------------------------------------------------------------------------- ground truth


@dataclass
class Truth:
    """Ground-truth boxes of one sequence, concatenated over frames (``frame`` = frame index of each row)."""

    name: str
    fps: float
    frames: int
    width: int
    height: int
    frame: np.ndarray  # int64 [G]
    ids: np.ndarray  # int64 [G]
    boxes: np.ndarray  # float64 [G, 4] x1 y1 x2 y2, clipped to the frame
    labels: np.ndarray  # int64 [G]
    visibility: np.ndarray  # float64 [G]
    ignored: np.ndarray | None = None  # bool [G]: marked to be ignored in the source (scored as distractors)


def _visibility(full: np.ndarray, clipped: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Visible fraction of each box of one frame: inside the frame and not covered by a nearer box (``depth``
    larger = nearer). Coverage by several boxes is rasterised on a 16x16 grid per box."""
    n = len(full)
    area = np.maximum((full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1]), 1e-9)
    vis = np.zeros(n)
    g = (np.arange(16) + 0.5) / 16
    for i in range(n):
        x1, y1, x2, y2 = clipped[i]
        if x2 <= x1 or y2 <= y1:
            continue
        xs, ys = x1 + g * (x2 - x1), y1 + g * (y2 - y1)
        covered = np.zeros((16, 16), bool)
        for j in np.flatnonzero(depth > depth[i]):
            b = full[j]
            covered |= ((ys[:, None] >= b[1]) & (ys[:, None] < b[3])) & ((xs[None, :] >= b[0]) & (xs[None, :] < b[2]))
        inside = (x2 - x1) * (y2 - y1) / area[i]
        vis[i] = inside * (1.0 - covered.mean())
    return vis


@contextlib.contextmanager
def _no_sprites() -> Iterator[None]:
    """The scene simulation draws a sprite per object at spawn; boxes need none (1080p sprites cost seconds)."""
    from lab import synth

    original = synth._make_sprite
    synth._make_sprite = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        synth._make_sprite = original  # type: ignore[assignment]


def synth_truth(seed: int, *, width: int = 640, height: int = 360, seconds: float = 10.0,
                max_objects: int = 8, speed: float = 1.0) -> Truth:
    """Trajectories of :mod:`lab.synth`'s scene simulation at :data:`BASE_FPS` (no rendering).

    ``speed`` scales every object's velocity (fast / slow motion); ``max_objects`` is the crowd density.
    """
    from lab.synth import SceneSpec, _Scene

    frames = int(round(seconds * BASE_FPS))
    spec = SceneSpec(width=width, height=height, fps=BASE_FPS, frames=frames, max_objects=max_objects)
    rows: list[tuple[int, int, int, float, float, float, float, float]] = []
    vis_all: list[np.ndarray] = []
    with _no_sprites():
        scene = _Scene(spec, np.random.default_rng(seed))
        scaled: set[int] = set()

        def scale_new() -> None:
            for o in scene.objs:
                if o.track_id not in scaled:
                    scaled.add(o.track_id)
                    o.vx, o.vy, o.v0x, o.v0y = o.vx * speed, o.vy * speed, o.v0x * speed, o.v0y * speed

        scene.populate()
        scale_new()
        for t in range(frames):
            objs = [o for o in scene.objs if scene.in_view(o)]
            if objs:
                full = np.array([[o.x, o.y, o.x + o.w, o.y + o.h] for o in objs], np.float64)
                clipped = np.clip(full, 0, [width, height, width, height])
                vis_all.append(_visibility(full, clipped, np.array([o.depth for o in objs])))
                rows.extend((t, o.track_id, o.label, *map(float, clipped[k])) for k, o in enumerate(objs))
            scene.step(t + 1)
            scale_new()
    arr = np.array(rows, np.float64).reshape(-1, 7)
    return Truth(f"synth{seed}", BASE_FPS, frames, width, height, arr[:, 0].astype(np.int64),
                 arr[:, 1].astype(np.int64), arr[:, 3:7], arr[:, 2].astype(np.int64),
                 np.concatenate(vis_all) if vis_all else np.zeros(0))


def tud_dir() -> Path:
    """Where ``make tud-data`` unpacked the TUD ground truth (``$RPN_TUD_DIR``, default ~/.cache/rpn-pipeline/tud)."""
    return Path(os.environ.get("RPN_TUD_DIR", Path.home() / ".cache" / "rpn-pipeline" / "tud"))


def mot_dir(dataset: str, roots: Mapping[str, Path] | None = None) -> Path:
    """Where an optional MOTChallenge tuning set lies (``dataset`` "MOT15" or "MOT17"): ``roots[dataset]`` when
    given, else ``$RPN_MOT15_DIR`` / ``$RPN_MOT17_DIR``, default ~/.cache/rpn-pipeline/mot15 or mot17;
    ``<SEQ>/gt/gt.txt`` and ``<SEQ>/seqinfo.ini`` per sequence, MOTChallenge layout (docs/tracking.md)."""
    if roots and roots.get(dataset):
        return Path(roots[dataset])
    return Path(os.environ.get(f"RPN_{dataset}_DIR", Path.home() / ".cache" / "rpn-pipeline" / dataset.lower()))


def mot_truth(gt_path: Path, name: str, *, fps: float, width: int, height: int, frames: int | None = None,
              classes: bool = False) -> Truth:
    """Ground truth of one sequence from a MOTChallenge 2D ``gt.txt`` (frame, id, x, y, w, h, conf, ...; frames
    from 1), all label 1 = person. Boxes are clipped to the frame; visibility from geometry (the box whose bottom
    edge is lower is nearer the camera). Rows with conf 0 (MOTChallenge: to be ignored) are scored as distractors
    (``Truth.ignored``); the simulated detector still sees them. ``frames``: the sequence's length, when trailing
    frames have no ground truth (default: up to the last frame with some). ``classes``: MOT16/17 rows (..., conf,
    class, visibility): only :data:`MOT17_PERSON_CLASSES` are kept, all but pedestrians scored as distractors, and
    the file's visibility is used."""
    if not gt_path.is_file():
        raise FileNotFoundError(f"{gt_path}: ground truth not found")
    raw = np.loadtxt(gt_path, delimiter=",", ndmin=2)
    if raw.shape[0] == 0 or raw.shape[1] < (9 if classes else 6):
        raise ValueError(f"{gt_path}: not MOTChallenge gt rows (frame, id, x, y, w, h, "
                         f"{'conf, class, visibility' if classes else '...'})")
    if classes:
        raw = raw[np.isin(raw[:, 7].astype(np.int64), MOT17_PERSON_CLASSES)]
    frame = raw[:, 0].astype(np.int64) - 1
    full = np.column_stack([raw[:, 2], raw[:, 3], raw[:, 2] + raw[:, 4], raw[:, 3] + raw[:, 5]])
    clipped = np.clip(full, 0, [width, height, width, height])
    if classes:
        vis = np.clip(raw[:, 8], 0.0, 1.0)
    else:
        vis = np.zeros(len(raw))
        for t in np.unique(frame):
            sel = np.flatnonzero(frame == t)
            vis[sel] = _visibility(full[sel], clipped[sel], full[sel, 3])  # lower bottom edge = nearer
    ignored = raw[:, 6] == 0 if raw.shape[1] > 6 else np.zeros(len(raw), bool)
    if classes:
        ignored |= raw[:, 7] != 1
    order = np.lexsort((raw[:, 1], frame))
    return Truth(name, fps, max(frames or 0, int(frame.max()) + 1), width, height, frame[order],
                 raw[order, 1].astype(np.int64), clipped[order], np.ones(len(raw), np.int64), vis[order],
                 ignored[order])


def tud_truth(name: str, root: Path | None = None) -> Truth:
    """Real pedestrian trajectories of TUD-Campus or TUD-Stadtmitte (640x480, 25 fps, all label 1 = person)."""
    path = (root or tud_dir()) / "motmetrics" / "data" / name / "gt.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TUD ground truth not found; run `make tud-data` (or set RPN_TUD_DIR)")
    return mot_truth(path, name, fps=25.0, width=640, height=480)


def motchallenge_truth(dataset: str, name: str, root: Path | None = None) -> Truth:
    """One training sequence of an optional MOTChallenge tuning set (``dataset`` "MOT15" or "MOT17") from ``root``
    (default :func:`mot_dir`); MOT17's may also lie under a detector's name (``MOT17-02-FRCNN``: same ground
    truth). Frame size and rate from its ``seqinfo.ini``. TUD sequences are refused: they are held out, and come
    from motmetrics (:func:`tud_truth`)."""
    if name.upper().startswith("TUD"):
        raise ValueError(f"{name}: TUD sequences are held out and never read from the {dataset} tuning set")
    root = root or mot_dir(dataset)
    seq = next((root / n for n in (name, f"{name}-FRCNN", f"{name}-SDP", f"{name}-DPM") if (root / n).is_dir()),
               root / name)
    ini = configparser.ConfigParser()
    if not ini.read(seq / "seqinfo.ini") or "Sequence" not in ini:
        raise FileNotFoundError(f"{seq / 'seqinfo.ini'}: {dataset} sequence info not found (set RPN_{dataset}_DIR)")
    info = ini["Sequence"]
    try:
        fps, width, height = float(info["frameRate"]), int(info["imWidth"]), int(info["imHeight"])
        frames = int(info["seqLength"]) if "seqLength" in info else None
    except (KeyError, ValueError) as e:
        raise ValueError(f"{seq / 'seqinfo.ini'}: needs frameRate, imWidth and imHeight ({e})") from e
    return mot_truth(seq / "gt" / "gt.txt", name, fps=fps, width=width, height=height, frames=frames,
                     classes=dataset != "MOT15")


# --------------------------------------------------------------------------- simulated detector


@dataclass(frozen=True)
class Detector:
    """A simulated detector: what it does to each ground-truth box, and what it adds.

    Scores are drawn from a normal distribution clipped to [0.01, 0.99]: true detections around ``score`` (minus
    ``occlusion_score`` x the hidden fraction), false positives around ``fp_score``.
    """

    score: float = 0.8  # mean score of a fully visible object
    score_std: float = 0.1
    occlusion_score: float = 0.3  # score lost per unit of hidden fraction
    jitter: float = 0.03  # box noise, std as a fraction of box size (position and size)
    miss: float = 0.05  # random miss rate
    occlusion_miss: float = 1.0  # 0: misses ignore occlusion; 1: a box x % hidden is missed with probability ~x %
    fp_rate: float = 0.5  # false positives per frame (Poisson), half anywhere, half near a true object
    fp_score: float = 0.4
    fp_score_std: float = 0.12
    drop: float = 0.0  # fraction of frames dropped at random (the rest keep their timestamps)
    fps: float | None = None  # subsample to this frame rate (None: the sequence's own)
    subsample: int = 1  # without ``fps``: keep every k-th frame (2: half the sequence's own frame rate)

    def detect(self, truth: Truth, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Detections of every frame -> (frame index, boxes, scores, labels)."""
        rng = np.random.default_rng(seed)
        b, vis = truth.boxes, truth.visibility
        hidden = 1.0 - np.clip(vis, 0.0, 1.0)
        p_det = (1.0 - self.miss) * np.clip(1.0 - self.occlusion_miss * hidden ** 0.7, 0.0, 1.0)
        keep = (rng.random(len(b)) < p_det) & (vis > 0.05)
        wh = np.maximum(b[keep, 2:] - b[keep, :2], 1.0)
        centre = 0.5 * (b[keep, :2] + b[keep, 2:]) + rng.normal(0.0, self.jitter, wh.shape) * wh
        size = wh * np.exp(rng.normal(0.0, self.jitter, wh.shape))
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
        scores = rng.normal(self.score, self.score_std, len(boxes)) - self.occlusion_score * hidden[keep]
        frame, labels = truth.frame[keep], truth.labels[keep]

        # false positives: Poisson per frame; half anywhere (object-sized), half near a true object (a part of it,
        # or a box shifted off it: the detector's typical duplicate)
        n_fp = rng.poisson(self.fp_rate, truth.frames)
        fp_frame = np.repeat(np.arange(truth.frames), n_fp)
        k = len(fp_frame)
        if k and len(b):
            src = rng.integers(0, len(b), k)  # borrow sizes (and, for half, positions) from true boxes
            src_wh = np.maximum(b[src, 2:] - b[src, :2], 2.0)
            near = rng.random(k) < 0.5
            anywhere = rng.uniform([0, 0], [truth.width, truth.height], (k, 2))
            shifted = 0.5 * (b[src, :2] + b[src, 2:]) + rng.uniform(-0.6, 0.6, (k, 2)) * src_wh
            c = np.where(near[:, None], shifted, anywhere)
            s = src_wh * np.where(near[:, None], rng.uniform(0.5, 1.0, (k, 1)), rng.uniform(0.7, 1.3, (k, 1)))
            boxes = np.concatenate([boxes, np.concatenate([c - s / 2, c + s / 2], 1)])
            scores = np.concatenate([scores, rng.normal(self.fp_score, self.fp_score_std, k)])
            frame = np.concatenate([frame, fp_frame])
            labels = np.concatenate([labels, truth.labels[src]])
        boxes = np.clip(boxes, 0, [truth.width, truth.height, truth.width, truth.height])
        ok = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        order = np.argsort(frame[ok], kind="stable")
        return (frame[ok][order], boxes[ok][order], np.clip(scores[ok][order], 0.01, 0.99),
                labels[ok][order])

    def kept_frames(self, truth: Truth, seed: int) -> np.ndarray:
        """Frame indices the tracker gets (frame-rate subsampling, then random drops; the first is always kept)."""
        step = max(1, self.subsample) if self.fps is None else max(1, int(round(truth.fps / self.fps)))
        kept = np.arange(0, truth.frames, step)
        if self.drop > 0:
            rng = np.random.default_rng(seed + 7919)
            mask = rng.random(len(kept)) >= self.drop
            mask[0] = True
            kept = kept[mask]
        return kept


# --------------------------------------------------------------------------- regimes


@dataclass(frozen=True)
class Regime:
    """One evaluation condition: ground-truth sequences and the simulated detector applied to them."""

    name: str
    split: str  # "tune" or "held-out"
    detector: Detector = field(default_factory=Detector)
    seeds: tuple[int, ...] = ()  # synthetic scenes (ignored when `tud`)
    tud: bool = False  # real pedestrian trajectories (always held out)
    mot: str = ""  # "MOT15" / "MOT17": real trajectories of that MOTChallenge training set (tuning; optional data)
    width: int = 640
    height: int = 360
    seconds: float = 10.0  # synthetic sequences' length (real sequences are taken whole)
    max_objects: int = 8
    speed: float = 1.0
    draws: int = 1  # simulated detector runs per sequence (the two TUD sequences are short: TUD_DRAWS each)


#: Simulated detector runs per TUD sequence. TUD is two short sequences (71 and 179 frames): with 3 runs the gap
#: between two trackers' IDF1 moved by 2.1-2.7 points (standard deviation) from one set of runs to the next, four to
#: five times the 0.5-point tie of issue 14's acceptance, so a verdict was mostly the draw (docs/tracking.md,
#: nineteenth attempt). With 30 its standard error is 0.3-1.0 IDF1 points, and the verdict table prints it.
TUD_DRAWS = 30
_TUNE_SEEDS = (2000, 2001, 2002)
_HELD_SEEDS = (3000, 3001, 3002)
_D = Detector()

#: The detector families of the real-motion tuning regimes (the held-out TUD regimes' families at other values).
_REAL_MOTION_TUNING = (
    ("real motion", _D),
    ("under-confident, jitter 4%", replace(_D, score=0.5, score_std=0.1, fp_score=0.25, fp_score_std=0.08,
                                           occlusion_score=0.2, jitter=0.04)),
    ("over-confident, half frame rate", replace(_D, score=0.9, score_std=0.05, fp_score=0.75, fp_score_std=0.1,
                                                occlusion_score=0.15, subsample=2)),
    ("occlusion misses, FPs", replace(_D, occlusion_miss=1.2, occlusion_score=0.4, fp_rate=1.5, fp_score=0.45)),
    # the same family beyond the held-out TUD values (issue 14, twelfth attempt): at 1.2 / 1.5 the MOTChallenge
    # sequences had stopped showing the TUD regime's gap, which reappeared here
    ("heavy occlusion, dense FPs", replace(_D, occlusion_miss=1.8, occlusion_score=0.5, fp_rate=2.5, fp_score=0.55)),
)

#: The regime matrix. ``tune``: the only regimes any tracker's settings were chosen on (ours by hand, the peers by
#: :data:`lab.track_eval.PEER_GRID`). ``held-out``: other seeds, and each noise axis beyond the tuning range.
REGIMES: tuple[Regime, ...] = (
    # -- tuning: calibrated-ish detectors, 640x360 at 30 fps, moderate noise
    Regime("tune: base", "tune", _D, _TUNE_SEEDS),
    Regime("tune: noisy boxes", "tune", replace(_D, jitter=0.05, miss=0.1), _TUNE_SEEDS),
    Regime("tune: crowd", "tune", _D, _TUNE_SEEDS, max_objects=20),
    Regime("tune: 15 fps", "tune", replace(_D, fps=15.0), _TUNE_SEEDS),
    Regime("tune: more false positives", "tune", replace(_D, fp_rate=2.0, fp_score=0.5), _TUNE_SEEDS),
    # -- tuning counterparts of every held-out family, at other values than the held-out ones (and other seeds)
    Regime("tune: score spread", "tune", replace(_D, score=0.65, score_std=0.18, fp_score=0.35, fp_score_std=0.15),
           _TUNE_SEEDS),
    Regime("tune: over-confident", "tune", replace(_D, score=0.9, score_std=0.05, fp_score=0.7, fp_score_std=0.1,
                                                   occlusion_score=0.15, fp_rate=0.8), _TUNE_SEEDS),
    Regime("tune: under-confident", "tune", replace(_D, score=0.55, score_std=0.1, fp_score=0.25, fp_score_std=0.08,
                                                    occlusion_score=0.25), _TUNE_SEEDS),
    Regime("tune: jitter 2%", "tune", replace(_D, jitter=0.02), _TUNE_SEEDS),
    Regime("tune: jitter 6%", "tune", replace(_D, jitter=0.06), _TUNE_SEEDS),
    Regime("tune: random misses 15%", "tune", replace(_D, miss=0.15, occlusion_miss=0.0), _TUNE_SEEDS),
    Regime("tune: occlusion misses", "tune", replace(_D, miss=0.03, occlusion_miss=1.3, occlusion_score=0.4),
           _TUNE_SEEDS, max_objects=12),
    Regime("tune: 720p", "tune", _D, _TUNE_SEEDS, width=1280, height=720),
    Regime("tune: 20 fps, 20% dropped", "tune", replace(_D, fps=20.0, drop=0.2), _TUNE_SEEDS),
    Regime("tune: fast motion", "tune", _D, _TUNE_SEEDS, speed=1.7),
    Regime("tune: slow motion", "tune", _D, _TUNE_SEEDS, speed=0.5),
    # -- added after the held-out diagnosis of issue 14 (docs/tracking.md): families the 16 above lacked, at other
    # values than the held-out ones -- occlusion misses together with frequent false positives (half of them near a
    # true object), denser false positives, a score spread wider than "score spread", an over-confident detector at
    # a low frame rate
    Regime("tune: occlusion misses, near FPs", "tune",
           replace(_D, miss=0.04, occlusion_miss=1.4, occlusion_score=0.45, fp_rate=2.4, fp_score=0.45),
           _TUNE_SEEDS, max_objects=12),
    Regime("tune: dense false positives", "tune", replace(_D, fp_rate=3.5, fp_score=0.5, fp_score_std=0.15),
           _TUNE_SEEDS),
    Regime("tune: wider score spread", "tune", replace(_D, score=0.62, score_std=0.28, fp_score=0.32,
                                                       fp_score_std=0.22), _TUNE_SEEDS),
    Regime("tune: over-confident, 15 fps", "tune", replace(_D, score=0.9, score_std=0.05, fp_score=0.7,
                                                           fp_score_std=0.1, occlusion_score=0.15, fp_rate=0.8,
                                                           fps=15.0), _TUNE_SEEDS),
    # -- tuning, real motion (issue 14, sixth and ninth attempts): the MOT15 training sequences but TUD, and the MOT17
    # training sequences, each with the four detector families of the held-out TUD regimes at other values; present
    # only where $RPN_MOT15_DIR / $RPN_MOT17_DIR hold the data
    *(Regime(f"tune: {mot} {name}", "tune", detector, mot=mot) for mot in MOT_SEQUENCES
      for name, detector in _REAL_MOTION_TUNING),
    # -- held out: scores
    Regime("calibrated", "held-out", replace(_D, score=0.7, score_std=0.15, fp_score=0.35, fp_score_std=0.15),
           _HELD_SEEDS),
    Regime("over-confident", "held-out", replace(_D, score=0.95, score_std=0.03, fp_score=0.8, fp_score_std=0.1,
                                                 occlusion_score=0.1, fp_rate=1.0), _HELD_SEEDS),
    Regime("under-confident", "held-out", replace(_D, score=0.45, score_std=0.12, fp_score=0.2, fp_score_std=0.08,
                                                  occlusion_score=0.2), _HELD_SEEDS),
    Regime("wide score spread", "held-out", replace(_D, score=0.6, score_std=0.25, fp_score=0.35,
                                                    fp_score_std=0.2), _HELD_SEEDS),
    # -- held out: boxes, misses, false positives
    Regime("jitter 1%", "held-out", replace(_D, jitter=0.01), _HELD_SEEDS),
    Regime("jitter 8%", "held-out", replace(_D, jitter=0.08), _HELD_SEEDS),
    Regime("random misses 25%", "held-out", replace(_D, miss=0.25, occlusion_miss=0.0), _HELD_SEEDS),
    Regime("occlusion misses", "held-out", replace(_D, miss=0.02, occlusion_miss=1.6, occlusion_score=0.5),
           _HELD_SEEDS, max_objects=14),
    Regime("many false positives", "held-out", replace(_D, fp_rate=5.0, fp_score=0.55, fp_score_std=0.15),
           _HELD_SEEDS),
    # -- held out: frame size, frame rate, dropped frames
    Regime("360p small objects", "held-out", _D, _HELD_SEEDS, width=480, height=270),
    Regime("1080p", "held-out", _D, _HELD_SEEDS, width=1920, height=1080),
    Regime("10 fps", "held-out", replace(_D, fps=10.0), _HELD_SEEDS),
    Regime("30% frames dropped", "held-out", replace(_D, drop=0.3), _HELD_SEEDS),
    Regime("10 fps, 30% dropped", "held-out", replace(_D, fps=10.0, drop=0.3), _HELD_SEEDS),
    # -- held out: density and motion
    Regime("dense crowd", "held-out", _D, _HELD_SEEDS, max_objects=35),
    Regime("fast motion", "held-out", _D, _HELD_SEEDS, speed=2.5),
    Regime("slow motion", "held-out", _D, _HELD_SEEDS, speed=0.3),
    # -- held out: real human motion (TUD), several detectors
    Regime("TUD real motion", "held-out", _D, tud=True, draws=TUD_DRAWS),
    Regime("TUD under-confident, jitter 5%", "held-out",
           replace(_D, score=0.45, score_std=0.12, fp_score=0.2, fp_score_std=0.08, jitter=0.05), tud=True,
           draws=TUD_DRAWS),
    Regime("TUD over-confident, 12.5 fps", "held-out",
           replace(_D, score=0.95, score_std=0.03, fp_score=0.8, occlusion_score=0.1, fps=12.5), tud=True,
           draws=TUD_DRAWS),
    Regime("TUD occlusion misses, FPs", "held-out",
           replace(_D, occlusion_miss=1.6, occlusion_score=0.5, fp_rate=2.0, fp_score=0.5), tud=True,
           draws=TUD_DRAWS),
)


def regime_truths(regime: Regime, *, seconds: float | None = None, seeds: Sequence[int] | None = None,
                  tud_root: Path | None = None, mot_roots: Mapping[str, Path] | None = None) -> list[Truth]:
    """The ground-truth sequences of a regime."""
    if regime.tud:
        return [tud_truth(n, tud_root) for n in TUD_SEQUENCES]
    if regime.mot:  # whole sequences (3-5 s per tracker per set): `seconds` shortens synthetic ones only
        root = mot_dir(regime.mot, mot_roots)
        return [motchallenge_truth(regime.mot, n, root) for n in MOT_SEQUENCES[regime.mot]]
    return [synth_truth(s, width=regime.width, height=regime.height, seconds=seconds or regime.seconds,
                        max_objects=regime.max_objects, speed=regime.speed)
            for s in (regime.seeds if seeds is None else seeds)]


def _ignored(truth: Truth) -> np.ndarray:
    """Ground-truth boxes scored as distractors: under 20 % visible, or marked so in the source."""
    low = truth.visibility < IGNORE_VISIBILITY
    return low if truth.ignored is None else low | truth.ignored


def simulate(regime: Regime, *, seconds: float | None = None, seeds: Sequence[int] | None = None,
             tud_root: Path | None = None, mot_roots: Mapping[str, Path] | None = None) -> list[Clip]:
    """A regime's sequences with its simulated detector applied (``draws`` times each)."""
    out = []
    truths = regime_truths(regime, seconds=seconds, seeds=seeds, tud_root=tud_root, mot_roots=mot_roots)
    for i, truth in enumerate(t for t in truths for _ in range(regime.draws)):
        # the whole name seeds the detector: regimes sharing a prefix ("tune: ...", "jitter ...") get their own draws
        seed = zlib.crc32(regime.name.encode()) % 100_000 * 100 + i
        kept = regime.detector.kept_frames(truth, seed)
        det_frame, det_boxes, det_scores, det_labels = regime.detector.detect(truth, seed)
        remap = np.full(truth.frames, -1, np.int64)
        remap[kept] = np.arange(len(kept))
        d, g = remap[det_frame] >= 0, remap[truth.frame] >= 0
        out.append(Clip(
            name=truth.name if regime.draws == 1 else f"{truth.name}-{i % regime.draws}",
            fps=regime.detector.fps or truth.fps / max(1, regime.detector.subsample), frames=len(kept), crowded=False,
            times=kept / truth.fps,
            det_frame=remap[det_frame[d]], det_boxes=det_boxes[d].astype(np.float32),
            det_scores=det_scores[d].astype(np.float32), det_labels=det_labels[d],
            gt_frame=remap[truth.frame[g]], gt_ids=truth.ids[g], gt_boxes=truth.boxes[g], gt_labels=truth.labels[g],
            gt_ignored=_ignored(truth)[g], frame_size=(truth.width, truth.height),
        ))
    return out
