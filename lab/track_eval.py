"""Tracker evaluation on held-out synthetic clips: MOTA, IDF1 and HOTA of our ByteTracker and of the `trackers`
package's ByteTrack and OC-SORT, all fed the very same detections (``python run_pipeline.py eval-tracking``).

* Clips are rendered by :mod:`lab.synth` (seeds >= 1000 are never used in training); ordinary scenes plus
  crowded ones (``SceneSpec(max_objects=...)``), with per-object identity ground truth.
* The detector (default: the shipped weights in ONNX Runtime) runs once per clip at a low score threshold (0.1),
  so that the trackers' second, low-score association stage has something to work with; the detections are
  cached on disk (keyed by weights, clip and threshold) and every tracker and condition reuses them.
* Dropped-frame conditions keep only every k-th frame: the trackers get the kept frames with their timestamps
  (``t / fps``) and are scored on the kept frames only.
* Metrics: ``trackers.eval`` (a port of TrackEval's CLEAR, Identity and HOTA), per clip, aggregated over clips the
  TrackEval way. Matching is class-aware (a box of another label never matches), with IoU >= 0.5 for CLEAR and
  Identity. Ground-truth boxes marked ignored (< 20 % visible) are MOTChallenge "distractors": a tracker box matched
  to one (IoU >= 0.5) is dropped before scoring, so it is neither a false nor a true positive, and missing one costs
  nothing.

``trackers`` (Apache-2.0, pulls in supervision, opencv-python and matplotlib) is needed for the metrics and the
baselines: ``pip install trackers``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from lab.track_clips import Clip
from pipeline.tracker.bytetrack import ByteTracker, iou_matrix

log = logging.getLogger(__name__)

DEFAULT_SEEDS = "1000-1002"
DEFAULT_CROWD_SEEDS = "1003-1004"
DEFAULT_CROWD_OBJECTS = 24
DEFAULT_TRACKERS = ("ours", "bytetrack", "bytetrack-tuned", "ocsort", "ocsort-tuned")
#: Peers at their best setting on the ``tune`` regimes of the regime matrix (lab/track_regimes.py: the 20 synthetic
#: ones at 5 s per sequence and the 10 real-motion ones, MOT15 and MOT17; issue 14's twelfth attempt), found by
#: ``eval-tracking --tune-peers --seconds 5`` over :data:`PEER_GRID` (best mean of MOTA and IDF1; ByteTrack 76.53 at
#: activation 0.2 and high 0.1 against 76.52 at 0.3 / 0.1 and 0.2 / 0.2; OC-SORT 74.19 at high 0.1 against 74.17 at
#: 0.2; BoT-SORT 74.34 at activation 0.5 and high 0.2 against 74.25 at 0.5 / 0.1). The same settings won on the 24
#: and the 28 tuning regimes before (sixth and ninth attempts). ``bytetrack``, ``ocsort`` and ``botsort`` are the
#: package defaults.
TUNED_PARAMS: dict[str, dict[str, Any]] = {
    "bytetrack-tuned": {"track_activation_threshold": 0.2, "high_conf_det_threshold": 0.1,
                        "minimum_consecutive_frames": 1},
    "ocsort-tuned": {"high_conf_det_threshold": 0.1, "minimum_iou_threshold": 0.1, "minimum_consecutive_frames": 1},
    "botsort-tuned": {"track_activation_threshold": 0.5, "high_conf_det_threshold": 0.2,
                      "minimum_consecutive_frames": 1},
}
MATCH_IOU = 0.5


# --------------------------------------------------------------------------- data


def weights_path(weights: str | Path | None) -> Path:
    """The weights file to evaluate: `weights`, else the shipped default weights (refusing to run untrained)."""
    if weights is not None:
        return Path(weights)
    from engines import DEFAULT_ARCH
    from engines.models import default_weights

    shipped = default_weights(DEFAULT_ARCH)
    if shipped is None:
        raise SystemExit("no shipped detector weights found (engines/weights/); pass --weights FILE")
    return shipped


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def build_clips(
    seeds: Sequence[int],
    crowd_seeds: Sequence[int],
    *,
    weights: str | Path | None = None,
    frames: int = 150,
    width: int = 640,
    height: int = 360,
    crowd_objects: int = DEFAULT_CROWD_OBJECTS,
    score_threshold: float = 0.1,
    cache_dir: Path | None = None,
    threads: int | None = None,
    batch: int = 4,
) -> list[Clip]:
    """Render each clip, run the detector over it once and cache the result (reused when present)."""
    from engines import state_dir
    from lab.synth import SceneSpec, render_frames

    wpath = weights_path(weights)
    cache = cache_dir or state_dir() / "track-eval"
    digest = _file_digest(wpath)
    detector = None
    clips = []
    for seed, crowded in [(s, False) for s in seeds] + [(s, True) for s in crowd_seeds]:
        spec = SceneSpec(width=width, height=height, frames=frames,
                         **({"max_objects": crowd_objects} if crowded else {}))
        name = f"s{seed}{'-crowd' + str(crowd_objects) if crowded else ''}"
        path = cache / f"{digest}-{name}-{width}x{height}-{frames}f-thr{score_threshold:g}.npz"
        if path.is_file():
            clips.append(Clip.load(path))
            clips[-1].frame_size = (width, height)  # the detector's boxes are in the rendered frame's pixels
            continue
        if detector is None:
            from engines import create_detector

            detector = create_detector("onnxruntime", weights=wpath, score_threshold=score_threshold,
                                       threads=threads, frame_size=(width, height))
        t0 = time.perf_counter()
        dets: list[tuple[int, Any]] = []
        gts = []
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            out = detector.detect([img for _, img in pending])  # type: ignore[union-attr]
            dets.extend((t, d) for (t, _), d in zip(pending, out, strict=True))
            pending.clear()

        for t, (rgb, truths) in enumerate(render_frames(spec, int(seed))):
            gts.extend((t, o) for o in truths)
            pending.append((t, rgb))
            if len(pending) == batch:
                flush()
        if pending:
            flush()
        clip = Clip(
            name=name, fps=spec.fps, frames=frames, crowded=crowded,
            det_frame=np.concatenate([np.full(len(d), t, np.int64) for t, d in dets]),
            det_boxes=np.concatenate([d.boxes for _, d in dets]).astype(np.float32).reshape(-1, 4),
            det_scores=np.concatenate([d.scores for _, d in dets]).astype(np.float32),
            det_labels=np.concatenate([d.labels for _, d in dets]).astype(np.int64),
            gt_frame=np.array([t for t, _ in gts], np.int64),
            gt_ids=np.array([o.track_id for _, o in gts], np.int64),
            gt_boxes=np.array([o.box for _, o in gts], np.float64).reshape(-1, 4),
            gt_labels=np.array([o.label for _, o in gts], np.int64),
            gt_ignored=np.array([o.ignored for _, o in gts], bool), frame_size=(width, height),
        )
        clip.save(path)
        log.info("%s: %d frames detected in %.1f s (%d detections) -> %s", name, frames,
                 time.perf_counter() - t0, len(clip.det_scores), path)
        clips.append(clip)
    if detector is not None:
        detector.close()
    return clips


# --------------------------------------------------------------------------- trackers

# A tracker run: called per kept frame with (boxes, scores, labels, timestamp); returns (boxes, labels, ids) of the
# boxes it reports on confirmed tracks.
TrackFn = Callable[[np.ndarray, np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray, np.ndarray]]


def make_tracker(name: str, fps: float, params: dict[str, Any] | None = None,
                 frame_size: tuple[int, int] | None = None) -> TrackFn:
    """A fresh tracker for one clip: ``ours``, ``ours-agnostic`` (class_aware=False), ``ours-detections`` (only the
    detector's boxes, none predicted for missed objects: ``coast_s=0``, as the peers report), ``bytetrack``, ``ocsort``
    (the `trackers` package's, default settings) and ``bytetrack-tuned``, ``ocsort-tuned`` (:data:`TUNED_PARAMS`).
    ``frame_size`` (width, height) of the clip's frames goes to ours (the peers take none)."""
    params = {**TUNED_PARAMS.get(name, {}), **(params or {})}
    name = name.removesuffix("-tuned")
    if name in ("ours", "ours-agnostic", "ours-detections"):
        if name == "ours-agnostic":
            params["class_aware"] = False
        if name == "ours-detections":
            params["coast_s"] = 0.0
        ours = ByteTracker(frame_rate=fps, **params)

        def run_ours(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                     ts: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            ids = ours.update(boxes, scores, labels, timestamp=ts, frame_size=frame_size)
            keep = ids > 0
            p = ours.predicted  # objects the detector missed, where ours reports them (coast_s)
            return (np.concatenate([boxes[keep], p.boxes]), np.concatenate([labels[keep], p.labels]),
                    np.concatenate([ids[keep], p.track_ids]))

        return run_ours
    import supervision as sv
    from trackers import BoTSORTTracker, ByteTrackTracker, OCSORTTracker

    cls = {"bytetrack": ByteTrackTracker, "ocsort": OCSORTTracker, "botsort": BoTSORTTracker}.get(name)
    if cls is None:
        raise ValueError(f"unknown tracker {name!r}")
    if name == "botsort":
        params = {"enable_cmc": False, **params}  # no frames here: no camera-motion compensation, no appearance
    other = cls(frame_rate=fps, **params)

    def run_other(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                  ts: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        det = sv.Detections(xyxy=boxes.astype(np.float32).reshape(-1, 4), confidence=scores.astype(np.float32),
                            class_id=labels.astype(int))
        out = other.update(det, timestamp=ts)
        if len(out) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        tid = np.asarray(out.tracker_id, np.int64)
        keep = tid >= 0
        return out.xyxy[keep], np.asarray(out.class_id, np.int64)[keep], tid[keep]

    return run_other


# --------------------------------------------------------------------------- scoring


@dataclass
class SequenceData:
    """Per-frame ids and similarities of one clip under one condition, ready for the metric functions."""

    gt_ids: list[np.ndarray] = field(default_factory=list)
    tracker_ids: list[np.ndarray] = field(default_factory=list)
    similarity: list[np.ndarray] = field(default_factory=list)


def _class_iou(a: np.ndarray, la: np.ndarray, b: np.ndarray, lb: np.ndarray) -> np.ndarray:
    iou = iou_matrix(a, b)
    return np.where(la[:, None] == lb[None, :], iou, 0.0) if iou.size else iou


def frame_similarity(
    gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_ignored: np.ndarray,
    trk_boxes: np.ndarray, trk_labels: np.ndarray, trk_ids: np.ndarray, class_aware: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt ids mask, kept tracker ids, similarity [valid gt, kept trk]) of one frame.

    Tracker boxes matched (Hungarian, IoU >= 0.5) to an ignored ground-truth box are dropped (TrackEval's
    distractor handling); ignored ground truth is left out.
    """
    if not class_aware:
        gt_labels = np.zeros_like(gt_labels)
        trk_labels = np.zeros_like(trk_labels)
    sim_all = _class_iou(gt_boxes, gt_labels, trk_boxes, trk_labels)
    keep = np.ones(len(trk_ids), bool)
    if gt_ignored.any() and len(trk_ids):
        s = np.where(sim_all >= MATCH_IOU - 1e-10, sim_all, 0.0)
        r, c = linear_sum_assignment(-s)
        ok = s[r, c] > 1e-10
        r, c = r[ok], c[ok]
        keep[c[gt_ignored[r]]] = False
    valid = ~gt_ignored
    return valid, keep, sim_all[np.ix_(valid, keep)]


def run_condition(
    clip: Clip, tracker: str, stride: int, params: dict[str, Any] | None = None, class_aware_eval: bool = True,
) -> tuple[SequenceData, float]:
    """Track one clip keeping every `stride`-th frame; returns the scoring data and tracker seconds per frame."""
    track = make_tracker(tracker, clip.fps, params, clip.frame_size)
    seq = SequenceData()
    gt_id_map: dict[int, int] = {}
    trk_id_map: dict[int, int] = {}
    spent = 0.0
    kept = range(0, clip.frames, stride)
    for t in kept:
        boxes, scores, labels = clip.detections(t)
        t0 = time.perf_counter()
        tb, tl, tid = track(boxes, scores, labels, clip.time(t))
        spent += time.perf_counter() - t0
        g = clip.gt_frame == t
        valid, keep, sim = frame_similarity(clip.gt_boxes[g], clip.gt_labels[g], clip.gt_ignored[g],
                                            np.asarray(tb, np.float64).reshape(-1, 4), np.asarray(tl), np.asarray(tid),
                                            class_aware_eval)
        gids = clip.gt_ids[g][valid]
        seq.gt_ids.append(np.array([gt_id_map.setdefault(int(i), len(gt_id_map)) for i in gids], np.intp))
        seq.tracker_ids.append(np.array([trk_id_map.setdefault(int(i), len(trk_id_map)) for i in tid[keep]], np.intp))
        seq.similarity.append(sim)
    return seq, spent / max(1, len(kept))


def idf1(seq: SequenceData, threshold: float = MATCH_IOU) -> float:
    """IDF1 of one sequence without the `trackers` package (same definition as TrackEval's Identity metric).

    Each (ground-truth id, tracker id) pair scores the frames where their boxes overlap by IoU >= threshold; the
    one-to-one id assignment maximising that total gives IDTP, and IDF1 = 2 IDTP / (GT boxes + tracker boxes).
    """
    n_gt = sum(len(g) for g in seq.gt_ids)
    n_trk = sum(len(t) for t in seq.tracker_ids)
    if n_gt + n_trk == 0:
        return 1.0
    if n_gt == 0 or n_trk == 0:
        return 0.0
    counts = np.zeros((max(int(g.max()) for g in seq.gt_ids if len(g)) + 1,
                       max(int(t.max()) for t in seq.tracker_ids if len(t)) + 1))
    for g, t, sim in zip(seq.gt_ids, seq.tracker_ids, seq.similarity, strict=True):
        gi, ti = np.nonzero(sim >= threshold - 1e-10)
        np.add.at(counts, (g[gi], t[ti]), 1.0)
    r, c = linear_sum_assignment(-counts)
    return float(2.0 * counts[r, c].sum() / (n_gt + n_trk))


@dataclass
class Score:
    tracker: str
    condition: str
    MOTA: float
    IDF1: float
    HOTA: float
    IDSW: int
    FP: int
    FN: int
    ms_per_frame: float
    #: (MOTA, IDF1) of each simulated detector draw over all sequences, where a regime has several (TUD): the spread
    #: of a difference between trackers across draws gives its standard error (``regime_report``)
    per_draw: list[tuple[float, float]] = field(default_factory=list)

    def row(self) -> str:
        return (f"| {self.tracker} | {self.condition} | {100 * self.MOTA:.1f} | {100 * self.IDF1:.1f} | "
                f"{100 * self.HOTA:.1f} | {self.IDSW} | {self.FP} | {self.FN} | {self.ms_per_frame:.2f} |")


TABLE_HEADER = ("| tracker | condition | MOTA | IDF1 | HOTA | ID switches | FP | FN | ms/frame |\n"
                "|---|---|---:|---:|---:|---:|---:|---:|---:|")


def score(
    clips: Sequence[Clip], tracker: str, stride: int, condition: str, params: dict[str, Any] | None = None,
    class_aware_eval: bool = True, draws: int = 1,
) -> Score:
    """Run `tracker` on every clip at `stride` and aggregate CLEAR / Identity / HOTA over the clips. With ``draws`` >
    1 the clips are ``draws`` detector runs per sequence, sequence by sequence (lab/track_regimes.simulate's order),
    and each run is also scored on its own over all sequences (``Score.per_draw``)."""
    from trackers.eval import (
        aggregate_clear_metrics,
        aggregate_hota_metrics,
        aggregate_identity_metrics,
        compute_clear_metrics,
        compute_hota_metrics,
        compute_identity_metrics,
    )

    clear, ident, hota, ms = [], [], [], []
    for clip in clips:
        seq, spf = run_condition(clip, tracker, stride, params, class_aware_eval)
        clear.append(compute_clear_metrics(seq.gt_ids, seq.tracker_ids, seq.similarity, threshold=MATCH_IOU))
        ident.append(compute_identity_metrics(seq.gt_ids, seq.tracker_ids, seq.similarity, threshold=MATCH_IOU))
        hota.append(compute_hota_metrics(seq.gt_ids, seq.tracker_ids, seq.similarity))
        ms.append(spf * 1e3)
    c = aggregate_clear_metrics(clear)
    i = aggregate_identity_metrics(ident)
    h = aggregate_hota_metrics(hota)
    per_draw = [] if draws < 2 else [(float(aggregate_clear_metrics(clear[d::draws])["MOTA"]),
                                       float(aggregate_identity_metrics(ident[d::draws])["IDF1"])) for d in range(draws)]
    return Score(tracker, condition, float(c["MOTA"]), float(i["IDF1"]), float(h["HOTA"]), int(c["IDSW"]),
                 int(c["CLR_FP"]), int(c["CLR_FN"]), float(np.mean(ms)), per_draw)


def evaluate(
    clips: Sequence[Clip], trackers: Sequence[str] = DEFAULT_TRACKERS, strides: Sequence[int] = (1, 2, 3),
    crowd_strides: Sequence[int] = (1,), params: dict[str, dict[str, Any]] | None = None,
    class_aware_eval: bool = True,
) -> list[Score]:
    """Scores of each tracker x condition: ordinary clips at each stride, crowded clips at each crowd stride."""
    params = params or {}
    normal = [c for c in clips if not c.crowded]
    crowded = [c for c in clips if c.crowded]
    conditions: list[tuple[str, list[Clip], int]] = []
    for k in strides:
        if normal:
            conditions.append(("all frames" if k == 1 else f"1 in {k} frames", normal, k))
    for k in crowd_strides:
        if crowded:
            conditions.append(("crowded" if k == 1 else f"crowded, 1 in {k} frames", crowded, k))
    out = []
    for cond, cl, k in conditions:
        for name in trackers:
            out.append(score(cl, name, k, cond, params.get(name), class_aware_eval))
    return out


def table(scores: Sequence[Score]) -> str:
    return "\n".join([TABLE_HEADER, *(s.row() for s in scores)])


# --------------------------------------------------------------------------- regime matrix

# ours-detections: ours reporting only the detector's boxes, as the peers do (no predicted boxes for missed objects)
REGIME_TRACKERS = ("ours", "ours-detections", "bytetrack", "bytetrack-tuned", "ocsort", "ocsort-tuned", "botsort",
                   "botsort-tuned")
#: The peers' grid: each peer at its defaults plus these settings, scored on the ``tune`` regimes only
#: (``eval-tracking --tune-peers``); the best mean of MOTA and IDF1 becomes its ``-tuned`` entry in TUNED_PARAMS.
PEER_GRID: dict[str, list[dict[str, Any]]] = {
    # minimum_consecutive_frames=1 won for every peer in a first grid (1-3); the thresholds go down to 0.1-0.2 so the
    # best setting is not on the grid's edge (on the 16 tuning regimes of issue 14, 0.3 / 0.2 was the lowest corner
    # of the earlier 0.3-0.7 / 0.2-0.6 grid for every peer)
    "bytetrack": [{"track_activation_threshold": a, "high_conf_det_threshold": h, "minimum_consecutive_frames": 1}
                  for a in (0.2, 0.3, 0.5, 0.7) for h in (0.1, 0.2, 0.4, 0.6)],
    "ocsort": [{"high_conf_det_threshold": h, "minimum_iou_threshold": m, "minimum_consecutive_frames": 1}
               for h in (0.1, 0.2, 0.4, 0.6) for m in (0.1, 0.3)],
    "botsort": [{"track_activation_threshold": a, "high_conf_det_threshold": h, "minimum_consecutive_frames": 1}
                for a in (0.2, 0.3, 0.5, 0.7) for h in (0.1, 0.2, 0.4, 0.6)],
}


def regime_clips(regime: Any, *, seconds: float | None = None, tud_root: Path | None = None,
                 mot_roots: Mapping[str, Path] | None = None) -> list[Clip]:
    """A regime's simulated sequences (lab/track_regimes.py) as clips."""
    from lab.track_regimes import simulate

    return simulate(regime, seconds=seconds, tud_root=tud_root, mot_roots=mot_roots)


def available_regimes(regimes: Sequence[Any], mot_roots: Mapping[str, Path] | None = None) -> list[Any]:
    """`regimes` without the MOT15 / MOT17 tuning regimes whose optional ground truth is absent (said in one log
    line per set: the project cannot download it, docs/tracking.md)."""
    from lab.track_regimes import mot_dir

    out = list(regimes)
    for dataset in dict.fromkeys(r.mot for r in regimes if r.mot):
        root = mot_dir(dataset, mot_roots)
        if root.is_dir():
            continue
        n = sum(r.mot == dataset for r in out)
        log.warning("%s not found: the %d %s real-motion tuning regimes are left out (set RPN_%s_DIR; "
                    "docs/tracking.md)", root, n, dataset, dataset)
        out = [r for r in out if r.mot != dataset]
    return out


def regime_scores(
    regimes: Sequence[Any], trackers: Sequence[str] = REGIME_TRACKERS, *, seconds: float | None = None,
    params: dict[str, dict[str, Any]] | None = None, tud_root: Path | None = None,
    mot_roots: Mapping[str, Path] | None = None,
) -> list[Score]:
    """Every tracker on every regime (all on the very same simulated detections); Score.condition = regime name."""
    params = params or {}
    out = []
    for regime in regimes:
        clips = regime_clips(regime, seconds=seconds, tud_root=tud_root, mot_roots=mot_roots)
        for name in trackers:
            out.append(score(clips, name, 1, regime.name, params.get(name), draws=regime.draws))
        log.info("%s: %s", regime.name, "  ".join(f"{s.tracker} {100 * s.MOTA:.1f}/{100 * s.IDF1:.1f}"
                                                     for s in out[-len(trackers):]))
    return out


def tune_peers(regimes: Sequence[Any], *, seconds: float | None = None,
               mot_roots: Mapping[str, Path] | None = None) -> dict[str, dict[str, Any]]:
    """Grid search (:data:`PEER_GRID`) of each peer on the given regimes -- pass the ``tune`` ones only."""
    clips = [(r.name, regime_clips(r, seconds=seconds, mot_roots=mot_roots)) for r in regimes if r.split == "tune"]
    best: dict[str, dict[str, Any]] = {}
    for peer, grid in PEER_GRID.items():
        results = []
        for setting in [{}, *grid]:
            # params passed explicitly replace the recorded tuned ones: score the peer's own name
            vals = [score(c, peer, 1, name, setting) for name, c in clips]
            results.append((float(np.mean([(v.MOTA + v.IDF1) / 2 for v in vals])), setting))
            log.info("%s %s: %.2f", peer, setting, 100 * results[-1][0])
        best[f"{peer}-tuned"] = max(results, key=lambda r: r[0])[1]
    return best


def _mean_score(scores: Sequence[Score], tracker: str, condition: str) -> Score:
    return Score(tracker, condition, float(np.mean([s.MOTA for s in scores])), float(np.mean([s.IDF1 for s in scores])),
                 float(np.mean([s.HOTA for s in scores])), int(sum(s.IDSW for s in scores)),
                 int(sum(s.FP for s in scores)), int(sum(s.FN for s in scores)),
                 float(np.mean([s.ms_per_frame for s in scores])))


def _gap_error(ours: Score, best_mota: Score, best_idf1: Score) -> str:
    """Ours minus the best peers with the standard error of each difference across detector draws (paired: the same
    draw for both), or nothing where a regime has one draw. It says whether a gap is the trackers or the draw."""
    if len(ours.per_draw) < 2 or len(best_mota.per_draw) != len(ours.per_draw) or \
            len(best_idf1.per_draw) != len(ours.per_draw):
        return ""
    o = np.array(ours.per_draw)
    gaps = [o[:, 0] - np.array(best_mota.per_draw)[:, 0], o[:, 1] - np.array(best_idf1.per_draw)[:, 1]]
    mean = [100 * (ours.MOTA - best_mota.MOTA), 100 * (ours.IDF1 - best_idf1.IDF1)]
    se = [100 * g.std(ddof=1) / np.sqrt(len(g)) for g in gaps]
    return f"{mean[0]:+.1f} ± {se[0]:.1f} / {mean[1]:+.1f} ± {se[1]:.1f} ({len(o)} draws)"


def regime_report(scores: Sequence[Score], regimes: Sequence[Any], tie: float = 0.005) -> tuple[str, bool]:
    """Markdown report: per regime and averaged (tuning, held-out, real motion), each tracker's MOTA / IDF1 / HOTA /
    ID switches, and per held-out regime ours against the best peer. Returns (report, ours >= best peer on MOTA and
    IDF1 in every held-out regime within `tie`, and ahead on both averages)."""
    by = {(s.condition, s.tracker): s for s in scores}
    names = list(dict.fromkeys(s.tracker for s in scores))
    peers = [n for n in names if not n.startswith("ours")]
    groups = [("tuning", [r for r in regimes if r.split == "tune"]),
              ("tuning real motion (MOT15)", [r for r in regimes if r.split == "tune" and r.mot == "MOT15"]),
              ("tuning real motion (MOT17)", [r for r in regimes if r.split == "tune" and r.mot == "MOT17"]),
              ("held-out", [r for r in regimes if r.split != "tune"]),
              ("held-out real motion (TUD)", [r for r in regimes if r.split != "tune" and r.tud])]
    lines = ["| regime | split | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    verdict_lines = ["| held-out regime | ours MOTA | best peer MOTA | ours IDF1 | best peer IDF1 | ours | "
                     "ours - best peer, MOTA / IDF1 (standard error over detector draws) |",
                     "|---|---:|---:|---:|---:|---|---|"]
    ok = True

    def cell(s: Score) -> str:
        return f"{100 * s.MOTA:.1f} / {100 * s.IDF1:.1f} / {100 * s.HOTA:.1f} / {s.IDSW}"

    def verdict(cond: str, get: Callable[[str], Score]) -> bool:
        if "ours" not in names or not peers:
            return True
        o = get("ours")
        pm = max(peers, key=lambda p: get(p).MOTA)
        pi = max(peers, key=lambda p: get(p).IDF1)
        bm, bi = get(pm).MOTA, get(pi).IDF1
        good = o.MOTA >= bm - tie and o.IDF1 >= bi - tie
        label = ("ahead" if o.MOTA > bm + tie and o.IDF1 > bi + tie else "tie or ahead") if good else "BEHIND"
        verdict_lines.append(f"| {cond} | {100 * o.MOTA:.1f} | {100 * bm:.1f} | {100 * o.IDF1:.1f} | "
                             f"{100 * bi:.1f} | {label} | {_gap_error(o, get(pm), get(pi))} |")
        return good

    for r in regimes:
        if any((r.name, n) in by for n in names):
            lines.append(f"| {r.name} | {r.split} | " + " | ".join(cell(by[r.name, n]) for n in names) + " |")
            if r.split != "tune":
                ok &= verdict(r.name, lambda n, r=r: by[r.name, n])
    for title, group in groups:
        present = [r for r in group if all((r.name, n) in by for n in names)]
        if not present:
            continue
        means = {n: _mean_score([by[r.name, n] for r in present], n, title) for n in names}
        lines.append(f"| **average, {title}** ({len(present)}) | | " +
                     " | ".join(cell(means[n]) for n in names) + " |")
        if not title.startswith("tuning") and "ours" in names and peers:
            good = verdict(f"**average, {title}**", means.__getitem__)
            o = means["ours"]
            ahead = all(o.MOTA > means[p].MOTA and o.IDF1 > means[p].IDF1 for p in peers)
            ok &= good and (ahead or title != "held-out")
    text = ("Each cell: MOTA / IDF1 / HOTA in % / ID switches.\n\n" + "\n".join(lines) +
            "\n\nOurs against the best peer per held-out regime (within 0.5 points = tie):\n\n" +
            "\n".join(verdict_lines))
    return text, ok


# --------------------------------------------------------------------------- CLI


def _seeds(text: str) -> list[int]:
    from lab.dataset import parse_seeds

    return parse_seeds(text) if text.strip() else []


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `eval-tracking`."""
    p.add_argument("--source", choices=("regimes", "detector"), default="regimes",
                   help="regimes (default): the regime matrix of simulated detectors on synthetic and real (TUD) "
                        "trajectories (lab/track_regimes.py); detector: the shipped detector on rendered clips")
    p.add_argument("--regimes", default="all",
                   help="regime matrix: all, tune, held-out, or comma-separated substrings of regime names")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each synthetic sequence in seconds (default: the regime's, 10 s)")
    p.add_argument("--tud-dir", type=Path, default=None,
                   help="where `make tud-data` put the TUD ground truth (default $RPN_TUD_DIR or "
                        "~/.cache/rpn-pipeline/tud)")
    p.add_argument("--mot15-dir", type=Path, default=None,
                   help="the optional MOT15 tuning ground truth, <SEQ>/gt/gt.txt + seqinfo.ini (default "
                        "$RPN_MOT15_DIR or ~/.cache/rpn-pipeline/mot15; absent: its tuning regimes are left out)")
    p.add_argument("--mot17-dir", type=Path, default=None,
                   help="the optional MOT17 tuning ground truth, <SEQ>/gt/gt.txt + seqinfo.ini (default "
                        "$RPN_MOT17_DIR or ~/.cache/rpn-pipeline/mot17; absent: its tuning regimes are left out)")
    p.add_argument("--tune-peers", action="store_true",
                   help="grid-search the peers (PEER_GRID) on the tuning regimes first and use those settings")
    p.add_argument("--seeds", default=DEFAULT_SEEDS,
                   help=f"ordinary held-out scene seeds, e.g. 1000-1002 or 1000,1005 (default {DEFAULT_SEEDS})")
    p.add_argument("--crowd-seeds", default=DEFAULT_CROWD_SEEDS,
                   help=f"crowded scene seeds ('' for none; default {DEFAULT_CROWD_SEEDS})")
    p.add_argument("--crowd-objects", type=int, default=DEFAULT_CROWD_OBJECTS,
                   help=f"objects in view in crowded scenes (SceneSpec.max_objects; default {DEFAULT_CROWD_OBJECTS})")
    p.add_argument("--frames", type=int, default=150, help="frames per clip (default 150, at 25 fps)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="detector weights (default: the shipped fasterrcnn_lite weights)")
    p.add_argument("--score-threshold", type=float, default=0.1,
                   help="detector score threshold (default 0.1: low-score boxes feed the second association)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.add_argument("--strides", default="1,2,3",
                   help="keep every k-th frame of the ordinary clips, for each k (default 1,2,3)")
    p.add_argument("--crowd-strides", default="1", help="same for the crowded clips (default 1)")
    p.add_argument("--trackers", default=None,
                   help="comma-separated: ours, ours-detections, ours-agnostic, bytetrack[-tuned], ocsort[-tuned], "
                        "botsort[-tuned] "
                        f"(default: {','.join(REGIME_TRACKERS)} on regimes, {','.join(DEFAULT_TRACKERS)} on detector)")
    p.add_argument("--class-agnostic-eval", action="store_true",
                   help="match tracker boxes to ground truth regardless of label")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where detections are cached (default: $RPN_STATE_DIR/track-eval)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the scores as JSON")


def _usage_error(message: str) -> None:
    import sys

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def select_regimes(text: str) -> list[Any]:
    """``all``, ``tune``, ``held-out`` or comma-separated substrings of regime names -> regimes."""
    from lab.track_regimes import REGIMES

    text = text.strip()
    if text == "all":
        return list(REGIMES)
    if text in ("tune", "held-out"):
        return [r for r in REGIMES if r.split == text]
    parts = [t.strip().lower() for t in text.split(",") if t.strip()]
    chosen = [r for r in REGIMES if any(t in r.name.lower() for t in parts)]
    if not chosen:
        _usage_error(f"--regimes {text!r} matches no regime; known: {'; '.join(r.name for r in REGIMES)}")
    return chosen


def regimes_from_args(args: argparse.Namespace) -> tuple[str, bool]:
    """The regime matrix run of `eval-tracking`; returns (report, acceptance verdict)."""
    from lab.track_regimes import REGIMES

    mot_roots = {k: v for k, v in (("MOT15", args.mot15_dir), ("MOT17", args.mot17_dir)) if v is not None}
    regimes = available_regimes(select_regimes(args.regimes), mot_roots)
    if not regimes:
        _usage_error(f"--regimes {args.regimes!r}: only MOT15 / MOT17 regimes, and their ground truth is absent "
                     "(set RPN_MOT15_DIR / RPN_MOT17_DIR or --mot15-dir / --mot17-dir)")
    names = [n.strip() for n in (args.trackers or ",".join(REGIME_TRACKERS)).split(",") if n.strip()]
    params: dict[str, dict[str, Any]] = {}
    if args.tune_peers:
        tune = available_regimes([r for r in REGIMES if r.split == "tune"], mot_roots)
        params = tune_peers(tune, seconds=args.seconds, mot_roots=mot_roots)
        log.info("peer settings from the tuning regimes: %s", params)
    try:
        scores = regime_scores(regimes, names, seconds=args.seconds, params=params, tud_root=args.tud_dir,
                               mot_roots=mot_roots)
    except FileNotFoundError as e:  # TUD ground truth not fetched, or a MOT15 / MOT17 sequence missing
        _usage_error(str(e))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in scores], indent=2))
    text, ok = regime_report(scores, regimes)
    tuned = params or {k: v for k, v in TUNED_PARAMS.items() if k in names}
    head = ("Tracking regime matrix (lab/track_regimes.py): simulated detectors on synthetic trajectories and on real "
            "pedestrian trajectories (held out: TUD-Campus, TUD-Stadtmitte; tuning: MOT15 and MOT17 training "
            "sequences, when present); all trackers get the same detections. "
            f"Peers' tuned settings (from the tuning regimes only): {json.dumps(tuned)}\n\n")
    if not any(r.split != "tune" for r in regimes):  # nothing held out was run: nothing to judge
        return head + text + "\n\nAcceptance: not judged (no held-out regime in this run)", False
    return head + text + f"\n\nAcceptance (ours >= best peer in every held-out regime, ahead on average): " \
        f"{'PASS' if ok else 'FAIL'}", ok


def report_from_args(args: argparse.Namespace) -> str:
    """`python run_pipeline.py eval-tracking ...`: run the comparison; returns the report (and writes --json)."""
    if args.source == "regimes":
        return regimes_from_args(args)[0]
    clips = build_clips(
        _seeds(args.seeds), _seeds(args.crowd_seeds), weights=args.weights, frames=args.frames, width=args.width,
        height=args.height, crowd_objects=args.crowd_objects, score_threshold=args.score_threshold,
        cache_dir=args.cache_dir, threads=args.threads,
    )
    names = [n.strip() for n in (args.trackers or ",".join(DEFAULT_TRACKERS)).split(",") if n.strip()]
    scores = evaluate(clips, names, _ints(args.strides), _ints(args.crowd_strides),
                      class_aware_eval=not args.class_agnostic_eval)
    n_normal = sum(not c.crowded for c in clips)
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in scores], indent=2))
    return (f"Tracking on {n_normal} ordinary + {len(clips) - n_normal} crowded held-out clips "
            f"({args.frames} frames, {args.width}x{args.height}, detector score >= {args.score_threshold:g}); "
            f"MOTA / IDF1 / HOTA in %:\n\n{table(scores)}")


