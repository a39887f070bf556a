"""ByteTrack-style multi-object tracker, timed by frame timestamps (our own implementation; numpy + scipy only).

Per update (one frame of one stream):

1. Every track's Kalman filter predicts its box at the frame's timestamp. The motion model is constant velocity on
   ``(cx, cy, w, h)`` in pixels and pixels per *second*, so a frame arriving 3 frame periods after the previous one
   (dropped or skipped frames) is predicted 3 periods ahead, and the process noise grows with the elapsed time.
2. Scores are split into high and low by a threshold that follows the detector (``adaptive``, default): the score
   where detections on confirmed tracks (true objects, mostly) and detections left on no track (false positives,
   mostly) overlap least, from running histograms that forget over about 200 updates. Until 20 detections have been
   on tracks it is the median score seen (at most ``high_thresh``). So an under-confident detector (objects around
   0.45) and an over-confident one (false positives around 0.8) both get a useful split; ``adaptive=False`` keeps
   the fixed ``high_thresh``.
3. High-score detections are matched to all confirmed tracks -- tracked and lost -- by Hungarian assignment
   (``scipy.optimize.linear_sum_assignment``) on ``1 - IoU`` between predicted and detected boxes; pairs costing
   more than ``match_thresh`` are refused, and so are barely overlapping pairs (IoU under ``ambiguous_iou``) among
   neighbours: when the detection is within the gate of another confirmed track too, or the track of another
   detection, such a match is a guess that mixes two objects' identities. And while false positives are frequent
   (step 6's clutter rate), tracks with a known motion refuse pairs under ``clutter_iou`` outright, and so do they
   under ``steady_iou`` a moment (``steady_s``) after their last detection. Among the pairs that pass, the
   assignment prefers those that also overlap vertically (``rank_hmiou``: Hybrid-SORT's height-modulated IoU, the
   IoU times the overlap of the two boxes' vertical extents over their union): two people at different depths
   differ in where their boxes start and end vertically, even when they overlap a lot side to side. A track with a
   few detections takes a detection only from ``settled_hmiou`` of that measure. Optional
   (``size_gate`` > 0, off by default): a pair is also refused when the detection's width and height are too far
   from the track's predicted ones for its Kalman filter (normalised squared innovation of the two sizes above
   ``size_gate``), unless the detection touches the image border (a clipped box says nothing about the object's
   size).
4. Low-score detections (``keep_thresh <= score < high``, ``keep_thresh`` 0 by default: any score) are matched to
   the confirmed tracks left over that were tracked in the previous update or lost at most ``low_lost_s`` ago, gated
   by the stricter ``low_match_thresh``: they keep an occluded object's track alive (and an object whose score dips
   to almost nothing for a frame), and pick it up again as it comes out weakly from behind an occluder, but start a
   track only through the weak tier (step 6), and only from ``low_thresh`` up.
5. Optional (``rescue_buffer`` > 0, off by default): confirmed tracks still unmatched get a second chance at the
   left-over high-score detections, their predicted boxes widened by ``rescue_buffer`` standard deviations of their
   predicted position (which grow with the box size and the time since the last detection): an object that turned
   or sped up while unseen keeps its id instead of a new track starting next to its old one. It helps fast motion
   and low frame rates a lot, but costs IDF1 with small, precise boxes and on real pedestrians walking in groups
   (docs/tracking.md), so it is not the default.
6. Left-over high-score detections are matched to the tentative tracks. A tentative track's velocity is still
   unknown, so its predicted box is widened by ``tentative_buffer`` standard deviations of its predicted position
   (which grow with the box size and the elapsed time): a fast object seen in two frames far apart still pairs up.
   In dense clutter (more than ``clutter_thresh`` tentative tracks dropped unconfirmed per update), weak tentative
   tracks and tentative tracks that missed the previous update use the plain gate ``weak_match_thresh`` instead:
   after an unseen stretch the widened box is large, and with frequent false positives it would chain them.
   Then the weak tier (``weak_confirm_s`` > 0, default): the tentative tracks still unmatched take the left-over
   detections of any score from ``low_thresh`` up, by plain IoU of the predicted box with the strict gate
   ``weak_match_thresh``. The remaining detections start tentative tracks -- strong ones at or above the new-track
   threshold (the split plus ``new_track_thresh - high_thresh``), weak ones below it -- unless one lies inside a box
   already matched in this frame (same label, intersection over its own area > ``duplicate_ioa``: a duplicate
   detection). So an object the detector scores under the split (an under-confident detector, a wide score spread,
   the first frames before the split has adapted) still gets a track, while false positives, which do not repeat
   in place frame after frame, do not.
7. A tentative track is confirmed -- and only then gets an id -- after ``n_init`` hits, at once on a stream's first
   update (as ByteTrack does), and at once when its first detection scores above both the median on-track score
   and all but ``confirm_fp_rate`` off-track detections per frame: a confident new object costs no frame, while a
   detector that often scores false positives that high gets no instant tracks. A tentative track is dropped when
   it goes ``tentative_keep_s`` without a detection. A weak tentative track needs an unbroken run of detections
   spanning ``weak_confirm_s`` (in time, so the same at any frame rate; at least 2 and ``n_init`` detections) and
   is dropped at its first miss. While false positives are frequent (step 6's clutter rate), the streak must also be
   scored like the objects on tracks (``weak_llr``): the summed log-likelihood ratio of its detections' scores --
   under the running histogram of scores on confirmed tracks against that of the tentative tracks dropped
   unconfirmed -- must reach ``weak_llr``; a false positive repeated in place for a frame or two is scored like the
   ones that never lasted. A confirmed track that is not matched becomes lost, and is
   removed ``track_buffer_s`` seconds after its last detection.
8. Optional re-identification by motion (``reid_buffer`` > 0; off by default, 2.5 is what was measured): a new
   tentative track whose first detection lies in the predicted box, widened by ``reid_buffer`` position stds, of a
   confirmed track left unmatched in that update and last seen at most ``reid_lost_s`` ago is never confirmed at
   once. If that box is the only confirmed track's widened box it overlaps, and the detection scores at least the
   new-track threshold (a weak birth is no heir), the tentative track is its heir: when
   the tentative is confirmed (by its next detection) and the lost track has still not been found again, it
   continues the lost track under its id -- no new identity, no :class:`TrackStart` -- instead of fragmenting it
   (an object that turned or was missed for a few frames, or whose low-score detection missed the strict low-score
   gate). Unlike an instant
   rescue (``rescue_buffer``), the tentative must be continued by a second detection first, and a neighbour's gate
   in reach makes it ambiguous. A lost track whose last box lay within ``reid_border`` pixels of the image border
   (``update``'s ``frame_size``) is never re-identified: that object most likely left the view, and a new object
   entering at the same edge is someone else (without the guard, the held-out regimes of issue 14's fourth attempt
   lost IDF1 that way). It cuts ID switches and gains on every tuning regime, but in its held-out runs (issue 14's
   fourth and fifth attempts, docs/tracking.md) more regimes fell behind the best peer, so it is not the default.

With ``class_aware`` (default) a detection is never matched to a track of another label.

The four coordinates are independent in this model (diagonal noise), so each track's 8x8 covariance is
block-diagonal: four 2x2 (value, velocity) blocks, stored as 3 numbers each and updated for all tracks at once with
element-wise numpy. That is what keeps ``update`` well under a millisecond with 50 objects.

Lifecycle for events: after each ``update``, :attr:`ByteTracker.started` lists the tracks confirmed by it
(:class:`TrackStart`) and :attr:`ByteTracker.ended` the confirmed tracks it removed (:class:`TrackEnd`);
:meth:`ByteTracker.finish` ends all remaining tracks (stream end). :attr:`ByteTracker.predicted` holds the confirmed
tracks the detector missed in that update, at their predicted boxes, for at most ``coast_s`` after their last
detection (:class:`Predicted`): a missed frame does not make an object blink out of the output.

Defaults were chosen on the ``tune`` regimes of the tracker regime matrix (lab/track_regimes.py: simulated detectors
on synthetic trajectories) and are reported on the held-out regimes, including real pedestrian motion (TUD):
``python run_pipeline.py eval-tracking`` (lab/track_eval.py, docs/tracking.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["LOW_THRESH", "ByteTracker", "Predicted", "TrackEnd", "TrackStart", "iou_matrix"]

#: ``ByteTracker``'s default ``low_thresh``: detections below it only continue recent tracks (``keep_thresh``).
LOW_THRESH = 0.1

_TENTATIVE, _TRACKED, _LOST = 0, 1, 2
_FORBIDDEN = 1e6  # cost of a pair of different labels
_BINS = 40  # score histogram bins over [0, 1]
_DECAY = 0.995  # per update: the histograms remember about the last 200 frames
_MIN_ON = 20.0  # detections on established tracks needed before the thresholds adapt
_SETTLED_FRAMES = 4  # detections after which a track's velocity is known (`clutter_iou` applies)
_HMIOU_FRAMES = 3  # detections after which a track's box height is known well enough for `settled_hmiou`
# The track table's columns (ByteTracker attributes, one row per track): `_spawn` appends rows, `_keep` selects them.
_COLUMNS = ("_mean", "_cov", "_id", "_label", "_state", "_hits", "_frames", "_first_time", "_last_time", "_first_score",
            "_best_score", "_first_box", "_last_box", "_weak", "_heir", "_near", "_score_sum", "_llr")


@dataclass(frozen=True)
class TrackStart:
    """A track confirmed in this update."""

    track_id: int
    label: int
    box: tuple[float, float, float, float]  # first detection's box, x1 y1 x2 y2
    time: float  # timestamp (s) of the track's first detection
    confirmed_time: float  # timestamp (s) of the update that confirmed it
    score: float  # first detection's score


@dataclass(frozen=True)
class TrackEnd:
    """A confirmed track removed in this update (lost for too long, or the stream ended)."""

    track_id: int
    label: int
    start_time: float  # timestamp (s) of its first detection
    end_time: float  # timestamp (s) of its last detection
    duration: float  # end_time - start_time
    frames: int  # updates in which a detection was assigned to it
    best_score: float
    box: tuple[float, float, float, float]  # last detection's box, x1 y1 x2 y2


@dataclass(frozen=True)
class Predicted:
    """Confirmed tracks whose object the detector missed in this update, at the box the tracker predicts for it."""

    track_ids: np.ndarray  # int64 [K]
    boxes: np.ndarray  # float64 [K, 4]: x1 y1 x2 y2 at the update's timestamp, clipped to the frame (if known)
    labels: np.ndarray  # int64 [K]
    scores: np.ndarray  # float64 [K]: each track's best detection score

    def __len__(self) -> int:
        return int(self.track_ids.shape[0])

    @staticmethod
    def empty() -> Predicted:
        return Predicted(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` [N, 4] and ``b`` [M, 4] (x1, y1, x2, y2) -> [N, M] float64.

    The same formula as torchvision's ``box_iou``, in numpy: called a few times per update, torch's dispatch and
    tensor wrapping cost about 150 us a call here, a third of the tracker's 1 ms budget at 50 objects.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _ioa_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection of each ``a`` box with each ``b`` box over the area of the ``a`` box."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    return inter / np.maximum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 1e-9)[:, None]


def _vertical_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlap of the vertical extents (y1, y2) of boxes ``a`` [N, 4] and ``b`` [M, 4] over their union -> [N, M]."""
    inter = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    union = np.maximum(a[:, None, 3], b[None, :, 3]) - np.minimum(a[:, None, 1], b[None, :, 1])
    return np.clip(inter, 0.0, None) / np.maximum(union, 1e-9)


def _xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    out[:, 2:] = b[:, 2:] - b[:, :2]
    out[:, :2] = b[:, :2] + 0.5 * out[:, 2:]
    return out


def _cxcywh_to_xyxy(s: np.ndarray) -> np.ndarray:
    out = np.empty_like(s)
    out[:, :2] = s[:, :2] - 0.5 * s[:, 2:]
    out[:, 2:] = out[:, :2] + s[:, 2:]
    return out


def _assign(cost: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment on ``cost`` [T, D]; pairs costing more than ``thresh`` are refused."""
    if cost.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] <= thresh
    return rows[keep], cols[keep]


def _others(n: int, taken: np.ndarray) -> np.ndarray:
    """Indices 0..n-1 not in ``taken``."""
    mask = np.ones(n, bool)
    mask[taken] = False
    return np.flatnonzero(mask)


def _associate(
    iou: np.ndarray, rows: np.ndarray, dets: np.ndarray, gate: float, det_track: np.ndarray, matched: np.ndarray,
    accept: np.ndarray | None = None,
) -> np.ndarray:
    """One association step: tracks ``rows`` and detections ``dets`` matched on ``1 - iou`` [rows, dets] up to
    ``gate`` (or, when given, the pairs where ``accept`` is true); the pairs are recorded in ``det_track`` and
    ``matched``. Returns the detections left over."""
    if accept is None:
        r, c = _assign(1.0 - iou, gate)
    else:
        r, c = _assign(1.0 - iou, np.inf)
        keep = accept[r, c]
        r, c = r[keep], c[keep]
    det_track[dets[c]] = rows[r]
    matched[rows[r]] = True
    return dets[_others(len(dets), c)]


class ByteTracker:
    """ByteTrack-style tracker for one stream; see the module docstring.

    Args:
        frame_rate: nominal frames per second, used when ``update`` gets no timestamp (1 / frame_rate elapsed).
        high_thresh: detections scoring at least this take part in the first association and may start tracks
            (with ``adaptive``: the cap of the bootstrap threshold before the score histograms have filled).
        low_thresh: detections below this are ignored; those in [low_thresh, high_thresh) only extend tracks.
        new_track_thresh: a left-over high-score detection starts a track only if it scores at least this
            (default: ``high_thresh``).
        match_thresh: largest ``1 - IoU`` accepted for high-score detections and confirmed tracks (0.9: IoU >= 0.1).
        low_match_thresh: largest ``1 - IoU`` accepted for low-score detections.
        n_init: hits that confirm a tentative track (1 = confirm at once).
        track_buffer_s: seconds a lost track is kept (since its last detection) before it is removed.
        class_aware: never match a detection to a track of another label.
        tentative_buffer: a tentative track's predicted box is widened by this many standard deviations of its
            predicted position on each axis (0: plain IoU).
        duplicate_ioa: a left-over detection lying inside a matched detection of the same label by more than this
            (intersection over its own area) starts no track (0 or >= 1: off).
        std_pos: measurement noise, as a fraction of the box size (width for x and w, height for y and h).
        std_pos_process: process noise on position, fraction of box size per sqrt(second).
        std_vel_process: process noise on velocity, fraction of box size per second per sqrt(second). 0.3:
            walking people keep their velocity (issue 14, ninth attempt: 1.0 before, chosen without real
            trajectories; docs/tracking.md).
        std_vel_init: initial velocity uncertainty, fraction of box size per second.
        adaptive: derive the high / new-track / instant-confirmation thresholds from the observed scores (see the
            module docstring; :meth:`thresholds` gives the current ones).
        low_lost_s: low-score detections may re-attach a track lost at most this many seconds ago.
        confirm_fp_rate: instant confirmation only above scores reached by fewer off-track detections per update
            than this (0: never at once).
        tentative_keep_s: seconds a tentative track survives without a detection (0: dropped at its first miss).
        tentative_match_thresh: largest ``1 - IoU`` accepted between a tentative track's widened box and a detection.
        rescue_buffer: confirmed tracks left unmatched by the first two associations are matched to the left-over
            high-score detections with their predicted boxes widened by this many position stds (0, default: off;
            2.5 is what was measured for fast motion and low frame rates).
        weak_confirm_s: weak track birth: left-over detections scoring in ``[low_thresh, new-track threshold)``
            start weak tentative tracks, confirmed only after an unbroken run of detections (at least 2 and
            ``n_init``) spanning this many seconds, and dropped at their first miss (0: off -- such detections never
            start a track).
        weak_match_thresh: largest ``1 - IoU`` between a tentative track's predicted (not widened) box and a
            left-over detection of any score above ``low_thresh`` (the weak tier's strict gate).
        keep_thresh: detections scoring in ``[keep_thresh, low_thresh)`` take part in the low-score association
            only (step 4: they continue a recent confirmed track through the strict ``low_match_thresh`` gate), never
            start or confirm a track and stay out of the score histograms. Default 0: the detector's own threshold
            is the floor, so an object whose score dips to almost nothing for a frame (a wide score spread) keeps
            its track.
        reid_buffer: re-identification by motion (step 8 of the module docstring): gate of a lost track's predicted
            box, widened by this many position stds (IoU >= ``1 - match_thresh``); 0 (default): off.
        reid_lost_s: only tracks last detected at most this many seconds ago are re-identified.
        reid_border: a lost track whose last box lay within this many pixels of the image border (of the frame size
            passed to ``update``) is never re-identified: the object most likely left the view, and a new object
            entering there is someone else. Without a frame size there is no such guard. Pixels, not a fraction of
            the frame: a box that reaches the border is clipped to it by the detector at any frame size (2, 8 and 16
            px, and 0.5-2 % of the width, measured alike on the tuning regimes; 2 px was best).
        clutter_thresh: while more tentative tracks than this are dropped unconfirmed per update (:meth:`clutter`,
            a running mean: detections that do not repeat in place), weak tentative tracks and tentative tracks that
            missed the previous update take detections only through the plain ``weak_match_thresh`` gate, not
            through their widened box (``inf``: never). 1.2 (1.5 until issue 14's seventh attempt) lies between the
            tuning regimes' 0.4-0.9 with a few false positives and 1.7-3.4 with frequent ones; the lower value also
            catches the real-motion (MOT15) regime with 1.5 false positives per frame, where chains of weak births
            were most of ours' false-positive tracks (docs/tracking.md).
        size_gate: size consistency in the first association: a high-score detection continues a confirmed track
            only if the normalised squared innovation of its width and height under the track's Kalman filter
            (2 degrees of freedom; measurement noise at least a pixel) is at most this -- another object of a
            different size, or a part of this one, does not take over a track whose own detection is missing.
            Detections within ``reid_border`` pixels of the image border (of ``update``'s frame size) are exempt:
            clipped, their size says nothing. 0 (default): off; 13.8 (the chi-square 99.9 % point) is what was
            measured (issue 14's eighth attempt, docs/tracking.md: real-motion IDF1 up, MOTA flat).
        velocity_clip: robust velocity update: once a track has ``velocity_clip_after`` detections, an innovation
            beyond this many of its standard deviations moves the box as usual but changes the velocity only as
            much as one of this many would. A detection that does not fit the motion -- a false positive next to the
            object, a box shifted by an occluder -- then cannot send the track's prediction away from the object,
            which is found again after a miss. 0 (default): off, the plain Kalman update. 2.5 is what was measured
            (issue 14's eighth attempt, docs/tracking.md: it passed the tuning regimes, real-motion IDF1 up, and was
            vetoed by the held-out run).
        velocity_clip_after: detections a track needs before ``velocity_clip`` applies: a young track's velocity is
            still being learnt, from innovations that are large by nature (it starts at zero).
        ambiguous_iou: in the first association a pair overlapping less than this (IoU) is refused when the
            detection is also within the gate of another confirmed track, or the track of another high-score
            detection: a barely overlapping match is a fair guess for an object alone (a small fast one), not among
            neighbours, where it hands a track to the wrong object. 0 turns it off; it acts only above the gate's IoU
            (``1 - match_thresh``). 0.15 was chosen on the tuning regimes (issue 14's eleventh attempt).
        clutter_iou: while false positives are frequent (:meth:`clutter` above ``clutter_thresh``), a pair in the
            first association overlapping less than this (IoU) is refused for a track with at least 4 detections
            (its motion known): among frequent false positives a barely overlapping detection is as likely one of
            them as the object, while with few it is the object turning or speeding up. 0 turns it off. 0.2 was
            chosen on the tuning regimes (issue 14's twelfth attempt, docs/tracking.md).
        steady_iou: a track with at least 4 detections, the last at most ``steady_s`` seconds ago, takes a high-score
            detection in the first association only from this IoU up: over so short a time the object is close to
            its prediction, and a barely overlapping box is another object or a false positive. After a miss, or at
            a frame rate under about 1 / ``steady_s``, the track keeps the wide gate (objects move further between
            detections). 0 turns it off. 0.25 and 0.09 s were chosen on the tuning regimes (issue 14's thirteenth
            attempt; 0.09 s lies between the frame periods of 12.5 and 10 fps, docs/tracking.md).
        steady_s: see ``steady_iou``.
        rank_hmiou: in the first association, rank the pairs that pass the gates by height-modulated IoU (IoU times
            the overlap of the two boxes' vertical extents over their union; Hybrid-SORT's HMIoU) instead of IoU:
            of two people overlapping a track's prediction, the one at the track's depth (whose box starts and ends
            at the same heights) wins, where plain IoU may favour a nearer, larger one. Acceptance is unchanged.
            Chosen on the tuning regimes (issue 14's fourteenth attempt, docs/tracking.md).
        settled_hmiou: a track with at least 3 detections (its box height known) takes a high-score detection in
            the first association only from this height-modulated IoU up; a barely overlapping box at another
            height is another person (or a part of one). 0 turns it off. 0.08 was chosen on the tuning regimes
            (issue 14's fourteenth attempt, docs/tracking.md).
        weak_llr: while false positives are frequent (:meth:`clutter` above ``clutter_thresh``), a weak tentative
            track's streak confirms it only when the sum over its detections of log p(score | on a confirmed track)
            - log p(score | on a tentative track dropped unconfirmed) is at least this (running, add-one smoothed
            score histograms; a detection adds 0 until both hold 20 detections). A weak streak of false positives
            repeated in place is scored like the tentatives that never lasted; a person coming out weakly from
            behind an occluder, like the people on tracks. None turns it off, and so does ``adaptive=False`` (no
            histograms). -2 was chosen on the tuning regimes (issue 14's sixteenth attempt, docs/tracking.md).
        coast_s: a confirmed track whose object the detector missed is reported at its predicted box
            (:attr:`predicted`) for at most this many seconds after its last detection -- a missed frame or two, an
            object half hidden for a moment -- so it does not blink out of the output. 0 turns it off.
        coast_min_frames: only tracks with at least this many detections are reported while missed: their motion
            is known well enough to predict.
    """

    def __init__(
        self,
        frame_rate: float = 25.0,
        *,
        high_thresh: float = 0.7,
        low_thresh: float = LOW_THRESH,
        new_track_thresh: float | None = None,
        match_thresh: float = 0.9,
        low_match_thresh: float = 0.5,
        n_init: int = 2,
        track_buffer_s: float = 1.5,
        class_aware: bool = True,
        tentative_buffer: float = 3.0,
        duplicate_ioa: float = 0.8,
        std_pos: float = 1 / 20,
        std_pos_process: float = 0.27,
        std_vel_process: float = 0.3,
        std_vel_init: float = 2.0,
        adaptive: bool = True,
        low_lost_s: float = 0.5,
        confirm_fp_rate: float = 0.02,
        tentative_keep_s: float = 0.2,
        tentative_match_thresh: float = 0.99,
        rescue_buffer: float = 0.0,
        weak_confirm_s: float = 0.03,
        weak_match_thresh: float = 0.7,
        keep_thresh: float = 0.0,
        clutter_thresh: float = 1.2,
        reid_buffer: float = 0.0,
        reid_lost_s: float = 0.5,
        reid_border: float = 2.0,
        size_gate: float = 0.0,
        velocity_clip: float = 0.0,
        velocity_clip_after: int = 4,
        ambiguous_iou: float = 0.15,
        clutter_iou: float = 0.2,
        steady_iou: float = 0.25,
        steady_s: float = 0.09,
        rank_hmiou: bool = True,
        settled_hmiou: float = 0.08,
        weak_llr: float | None = -2.0,
        coast_s: float = 0.2,
        coast_min_frames: int = 3,
    ) -> None:
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        if not 0.0 <= low_thresh <= high_thresh:
            raise ValueError(f"need 0 <= low_thresh <= high_thresh, got {low_thresh}, {high_thresh}")
        if not 0.0 <= keep_thresh <= low_thresh:
            raise ValueError(f"need 0 <= keep_thresh <= low_thresh, got {keep_thresh}, {low_thresh}")
        if n_init < 1:
            raise ValueError(f"n_init must be >= 1, got {n_init}")
        if weak_confirm_s < 0:
            raise ValueError(f"weak_confirm_s must be >= 0, got {weak_confirm_s}")
        if track_buffer_s < 0:
            raise ValueError(f"track_buffer_s must be >= 0, got {track_buffer_s}")
        if reid_buffer < 0:
            raise ValueError(f"reid_buffer must be >= 0, got {reid_buffer}")
        if reid_border < 0:
            raise ValueError(f"reid_border must be >= 0, got {reid_border}")
        if size_gate < 0:
            raise ValueError(f"size_gate must be >= 0, got {size_gate}")
        if not 0.0 <= ambiguous_iou <= 1.0:
            raise ValueError(f"ambiguous_iou must be an IoU in [0, 1], got {ambiguous_iou}")
        if not 0.0 <= clutter_iou <= 1.0:
            raise ValueError(f"clutter_iou must be an IoU in [0, 1], got {clutter_iou}")
        if not 0.0 <= steady_iou <= 1.0:
            raise ValueError(f"steady_iou must be an IoU in [0, 1], got {steady_iou}")
        if not 0.0 <= settled_hmiou <= 1.0:
            raise ValueError(f"settled_hmiou must be in [0, 1], got {settled_hmiou}")
        if weak_llr is not None and not np.isfinite(weak_llr):
            raise ValueError(f"weak_llr must be a finite log-likelihood ratio or None, got {weak_llr}")
        if coast_s < 0:
            raise ValueError(f"coast_s must be >= 0, got {coast_s}")
        if coast_min_frames < 1:
            raise ValueError(f"coast_min_frames must be >= 1, got {coast_min_frames}")
        if steady_s < 0:
            raise ValueError(f"steady_s must be >= 0, got {steady_s}")
        if velocity_clip < 0:
            raise ValueError(f"velocity_clip must be >= 0, got {velocity_clip}")
        self.frame_rate = float(frame_rate)
        self.high_thresh = float(high_thresh)
        self.low_thresh = float(low_thresh)
        self.new_track_thresh = float(high_thresh if new_track_thresh is None else new_track_thresh)
        self.match_thresh = float(match_thresh)
        self.low_match_thresh = float(low_match_thresh)
        self.n_init = int(n_init)
        self.track_buffer_s = float(track_buffer_s)
        self.class_aware = bool(class_aware)
        self.tentative_buffer = float(tentative_buffer)
        self.duplicate_ioa = float(duplicate_ioa)
        self.std_pos = float(std_pos)
        self.std_pos_process = float(std_pos_process)
        self.std_vel_process = float(std_vel_process)
        self.std_vel_init = float(std_vel_init)
        self.adaptive = bool(adaptive)
        self.low_lost_s = float(low_lost_s)
        self.confirm_fp_rate = float(confirm_fp_rate)
        self.tentative_keep_s = float(tentative_keep_s)
        self.tentative_match_thresh = float(tentative_match_thresh)
        self.rescue_buffer = float(rescue_buffer)
        self.weak_confirm_s = float(weak_confirm_s)
        self.weak_match_thresh = float(weak_match_thresh)
        self.keep_thresh = float(keep_thresh)
        self.clutter_thresh = float(clutter_thresh)
        self.reid_buffer = float(reid_buffer)
        self.reid_lost_s = float(reid_lost_s)
        self.reid_border = float(reid_border)
        self.size_gate = float(size_gate)
        self.velocity_clip = float(velocity_clip)
        self.velocity_clip_after = int(velocity_clip_after)
        self.ambiguous_iou = float(ambiguous_iou)
        self.clutter_iou = float(clutter_iou)
        self.steady_iou = float(steady_iou)
        self.steady_s = float(steady_s)
        self.rank_hmiou = bool(rank_hmiou)
        self.settled_hmiou = float(settled_hmiou)
        self.weak_llr = None if weak_llr is None else float(weak_llr)
        self.coast_s = float(coast_s)
        self.coast_min_frames = int(coast_min_frames)
        # Running score histograms (exponentially forgotten): scores of detections on established tracks (true
        # objects, mostly) and of detections left on no track (false positives, mostly). The adaptive thresholds
        # split them where the fewest detections fall on the wrong side.
        self._on_hist = np.zeros(_BINS)
        self._off_hist = np.zeros(_BINS)
        # Mean scores of tentative tracks dropped unconfirmed, each weighted by its detections: false positives,
        # mostly -- repeated in place for a frame or two, they are what a weak birth in clutter is suspected of.
        self._dropped_hist = np.zeros(_BINS)
        self._all_hist = np.zeros(_BINS)  # every score >= low_thresh: the bootstrap before tracks are established
        # Tentative tracks dropped unconfirmed (clutter) and updates seen, both forgotten like the histograms: their
        # ratio is a rate per update, right from a stream's first frames.
        self._weight = 0.0
        self._dropped = 0.0

        #: Tracks confirmed by the last `update`.
        self.started: list[TrackStart] = []
        #: Confirmed tracks removed by the last `update` (or by `finish`).
        self.ended: list[TrackEnd] = []
        #: Confirmed tracks missed by the detector in the last `update`, at their predicted boxes (``coast_s``).
        self.predicted = Predicted.empty()
        self._next_id = 1
        self._time: float | None = None  # timestamp of the last update
        self._updates = 0
        # The track table, one row per track (struct of arrays).
        self._mean = np.zeros((0, 4, 2))  # per coordinate (cx, cy, w, h): value, velocity per second
        self._cov = np.zeros((0, 4, 3))  # per coordinate: var(value), cov(value, velocity), var(velocity)
        self._id = np.zeros(0, np.int64)  # 0 while tentative
        self._label = np.zeros(0, np.int64)
        self._state = np.zeros(0, np.int8)
        self._hits = np.zeros(0, np.int64)  # consecutive updates with a detection
        self._frames = np.zeros(0, np.int64)  # updates with a detection, in total
        self._first_time = np.zeros(0)
        self._last_time = np.zeros(0)
        self._first_score = np.zeros(0)
        self._best_score = np.zeros(0)
        self._first_box = np.zeros((0, 4))
        self._last_box = np.zeros((0, 4))
        self._weak = np.zeros(0, bool)  # tentative born weak or next to a confirmed track: needs a longer streak
        self._heir = np.zeros(0, np.int64)  # tentative born next to exactly one recently lost track: that track's id
        self._near = np.zeros(0, bool)  # tentative born next to a recently lost track: no instant confirmation
        self._score_sum = np.zeros(0)  # sum of the scores of the detections assigned to each track
        self._llr = np.zeros(0)  # sum over them of log p(score | on a confirmed track) / p(score | dropped tentative)

    # ------------------------------------------------------------------ public

    @property
    def active_tracks(self) -> int:
        """Confirmed tracks currently held (tracked or lost)."""
        return int(np.count_nonzero(self._state != _TENTATIVE))

    def update(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        timestamp: float | None = None,
        frame_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Track one frame's detections.

        ``boxes`` float [N, 4] x1 y1 x2 y2, ``scores`` [N], ``labels`` int [N]; ``timestamp`` in seconds (the frame's
        pts), None for 1 / frame_rate after the previous update; ``frame_size`` (width, height) of the frame the
        boxes' coordinates are in, None if unknown (then re-identification has no border guard, ``reid_border``).
        Returns int64 [N]: the track id of each detection, -1 where it is not on a confirmed track. Ids are positive
        and never reused.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        labels = np.asarray(labels, np.int64).reshape(-1)
        n = len(boxes)
        if len(scores) != n or len(labels) != n:
            raise ValueError(f"{n} boxes, {len(scores)} scores, {len(labels)} labels")
        if frame_size is not None and not (frame_size[0] > 0 and frame_size[1] > 0):
            raise ValueError(f"frame_size must be a positive (width, height), got {frame_size}")
        now = self._clock(timestamp)
        dt = 0.0 if self._time is None else max(0.0, now - self._time)
        first_update = self._updates == 0
        self._time = now
        self._updates += 1
        self.started = []
        self.ended = []

        self._predict(dt)
        det_track = np.full(n, -1, np.intp)  # track row of each detection
        matched = np.zeros(len(self._id), bool)
        predicted = self._predicted_boxes()
        iou = self._labelled_iou(predicted, self._label, boxes, labels)
        valid = scores >= self.low_thresh
        if self.adaptive:
            self._all_hist *= _DECAY
            np.add.at(self._all_hist, _bin(scores[valid]), 1.0)
        high_t, new_t, confirm_t = self.thresholds()
        det_llr = self._score_llr(scores)
        high = np.flatnonzero(scores >= high_t)
        # low-score detections down to `keep_thresh` (below `low_thresh` too) may continue a recent confirmed track
        low = np.flatnonzero((scores >= self.keep_thresh) & (scores < high_t))

        # 1. high-score detections vs confirmed tracks (tracked and lost), optionally size-consistent ones only
        rows = np.flatnonzero(self._state != _TENTATIVE)
        cand = iou[rows[:, None], high]
        if self.size_gate > 0 and cand.size:
            far = self._size_innovation(rows, boxes[high]) > self.size_gate
            if frame_size is not None:
                far[:, ~self._inside(boxes[high], frame_size)] = False
            cand = np.where(far, -_FORBIDDEN, cand)
        if self.ambiguous_iou > 0 and cand.size:
            # a barely overlapping pair is a guess: safe alone, not among neighbours (another track or detection in
            # reach of either side), where it would hand a track to the wrong object
            reach = cand >= 1.0 - self.match_thresh
            rival = (reach.sum(axis=0)[None, :] > 1) | (reach.sum(axis=1)[:, None] > 1)
            cand = np.where(reach & rival & (cand < self.ambiguous_iou), -_FORBIDDEN, cand)
        if self.clutter_iou > 0 and cand.size and self.clutter() > self.clutter_thresh:
            # frequent false positives: a barely overlapping detection is as likely one of them as the object, for a
            # track whose motion is known (young tracks' predictions still lag a moving object)
            settled = (self._frames[rows] >= _SETTLED_FRAMES)[:, None]
            cand = np.where(settled & (cand < self.clutter_iou), -_FORBIDDEN, cand)
        if self.steady_iou > 0 and cand.size:
            # a moment after its last detection a track with a known motion is where it was predicted: the right
            # detection overlaps it well, a barely overlapping one is someone else (or a false positive)
            steady = (self._frames[rows] >= _SETTLED_FRAMES) & (now - self._last_time[rows] <= self.steady_s)
            cand = np.where(steady[:, None] & (cand < self.steady_iou), -_FORBIDDEN, cand)
        if (self.rank_hmiou or self.settled_hmiou > 0) and cand.size:
            # people at different depths differ in their vertical extents, even where they overlap a lot side to side
            hmiou = cand * _vertical_iou(predicted[rows], boxes[high])
            accept = cand >= 1.0 - self.match_thresh
            if self.settled_hmiou > 0:
                height_known = (self._frames[rows] >= _HMIOU_FRAMES)[:, None]
                accept &= ~height_known | (hmiou >= self.settled_hmiou)
            rank = np.where(cand > -1.0, hmiou, cand) if self.rank_hmiou else cand  # refused pairs stay refused
            high = _associate(rank, rows, high, self.match_thresh, det_track, matched, accept)
        else:
            high = _associate(cand, rows, high, self.match_thresh, det_track, matched)

        # 2. low-score detections vs the unmatched tracks tracked in the previous update or lost for at most
        # `low_lost_s` (an object going behind an occluder is seen weakly before and after)
        recent = (self._state == _TRACKED) | ((self._state == _LOST) & (now - self._last_time <= self.low_lost_s))
        rows = np.flatnonzero(recent & ~matched)
        low = _associate(iou[rows[:, None], low], rows, low, self.low_match_thresh, det_track, matched)

        # 3. left-over high-score detections vs confirmed tracks still unmatched, their predicted boxes widened by
        # their position uncertainty (grows with box size and the time since the last detection): a track whose
        # motion changed (a turn, a stop, an unseen stretch) is found again instead of a new track starting beside it
        rows = np.flatnonzero((self._state != _TENTATIVE) & ~matched)
        if self.rescue_buffer > 0 and len(rows) and len(high):
            wide = self._labelled_iou(self._predicted_boxes(rows, self.rescue_buffer), self._label[rows], boxes[high],
                                      labels[high])
            high = _associate(wide, rows, high, self.match_thresh, det_track, matched)
        on_confirmed = det_track >= 0

        # 4. left-over high-score detections vs tentative tracks (boxes widened by their uncertainty); in dense
        # clutter, weak tentatives and those that missed the previous update only by the plain gate: their widened
        # boxes (large after an unseen stretch) would pick up unrelated false positives and confirm a chain of them
        rows = np.flatnonzero(self._state == _TENTATIVE)
        cand = iou[rows[:, None], high]
        if cand.size and self.clutter() > self.clutter_thresh:
            strict = (self._weak[rows] | (self._hits[rows] == 0))[:, None]
            plain = self._labelled_iou(self._predicted_boxes(rows), self._label[rows], boxes[high], labels[high])
            cand = np.where(strict & (plain < 1.0 - self.weak_match_thresh), -_FORBIDDEN, cand)
        high = _associate(cand, rows, high, self.tentative_match_thresh, det_track, matched)
        new = high[scores[high] >= new_t]
        if self.weak_confirm_s > 0:
            # 4b. weak tier: the tentative tracks left take the left-over detections (low-score ones too) by plain
            # IoU with a strict gate (no widened box: a chain of unrelated false positives must not pass); the
            # detections left start tentative tracks, weak ones below the new-track threshold
            rest = np.concatenate([low[scores[low] >= self.low_thresh], high])
            rows = np.flatnonzero((self._state == _TENTATIVE) & ~matched)
            if len(rows) and len(rest):
                plain = self._labelled_iou(self._predicted_boxes(rows), self._label[rows], boxes[rest], labels[rest])
                rest = _associate(plain, rows, rest, self.weak_match_thresh, det_track, matched)
            new = rest
        if 0.0 < self.duplicate_ioa < 1.0 and len(new) and (det_track >= 0).any():
            taken = np.flatnonzero(det_track >= 0)
            dup = (_ioa_matrix(boxes[new], boxes[taken]) > self.duplicate_ioa) & (
                labels[new][:, None] == labels[taken][None, :])
            new = new[~dup.any(axis=1)]
        if self.adaptive:
            self._on_hist *= _DECAY
            self._off_hist *= _DECAY
            np.add.at(self._on_hist, _bin(scores[on_confirmed]), 1.0)
            np.add.at(self._off_hist, _bin(scores[valid & ~on_confirmed]), 1.0)

        heir = np.zeros(len(new), np.int64)
        near = np.zeros(len(new), bool)
        if self.reid_buffer > 0 and len(new):
            heir, near = self._heirs(boxes[new], labels[new], now, matched, frame_size)
            # a weak birth (under the new-track threshold) is no heir: next to a lost track in clutter it is as
            # often a false positive near the object, and one repeated in place would take the lost id
            heir[scores[new] < new_t] = 0

        # Kalman update and bookkeeping of matched tracks
        hit = np.flatnonzero(det_track >= 0)
        rows = det_track[hit]
        if len(rows):
            self._correct(rows, boxes[hit])
            self._state[rows] = np.where(self._state[rows] == _LOST, _TRACKED, self._state[rows])
            self._hits[rows] += 1
            self._frames[rows] += 1
            self._last_time[rows] = now
            self._last_box[rows] = boxes[hit]
            self._best_score[rows] = np.maximum(self._best_score[rows], scores[hit])
            self._score_sum[rows] += scores[hit]
            self._llr[rows] += det_llr[hit]
        self._hits[~matched] = 0
        self._state[~matched & (self._state == _TRACKED)] = _LOST

        # 5. new tentative tracks; weak ones (scoring below the new-track threshold) need `weak_confirm_s` of
        # consecutive detections to be confirmed
        if len(new):
            det_track[new] = np.arange(len(self._id), len(self._id) + len(new))
            self._spawn(boxes[new], scores[new], labels[new], now, scores[new] < new_t, heir, near, det_llr[new])

        # 6. confirmation (at once on a stream's first update), then removal of dead tracks
        hits = self._frames if self.tentative_keep_s > 0 else self._hits
        # a birth next to a recently lost track waits for its second detection (no instant confirmation): a
        # fragment of the lost track must not be reported as a new identity at once
        instant = (self._first_score >= confirm_t) & ~self._near
        confirm = ((hits >= self.n_init) & (self._hits > 0)) | first_update | instant
        if self.weak_confirm_s > 0:
            # weak tentatives: an unbroken streak (they die at their first miss) of at least `weak_confirm_s`
            streak = (self._hits >= max(2, self.n_init)) & (now - self._first_time >= self.weak_confirm_s - 1e-6)
            if self.weak_llr is not None and self.clutter() > self.clutter_thresh:
                # among frequent false positives a streak must also be scored like the objects on tracks more than
                # like the tentatives that never lasted: a false positive repeated in place for a frame or two
                # passes the streak, not this (it dies at its first miss)
                streak &= self._llr >= self.weak_llr
            confirm = np.where(self._weak, streak, confirm)
        merged = np.zeros(len(self._id), bool)
        for row in np.flatnonzero((self._state == _TENTATIVE) & confirm):
            self._state[row] = _TRACKED
            if self._heir[row] > 0:
                lost = np.flatnonzero((self._id == self._heir[row]) & (self._state == _LOST) & ~merged)
                if len(lost):
                    # re-identified by motion: the lost track, still not found again, continues as this track
                    old = lost[0]
                    merged[old] = True
                    self._id[row] = self._id[old]
                    self._first_time[row] = self._first_time[old]
                    self._first_score[row] = self._first_score[old]
                    self._first_box[row] = self._first_box[old]
                    self._frames[row] += self._frames[old]
                    self._best_score[row] = max(self._best_score[row], self._best_score[old])
                    continue
            self._id[row] = self._next_id
            self._next_id += 1
            self.started.append(TrackStart(
                track_id=int(self._id[row]), label=int(self._label[row]), box=_box_tuple(self._first_box[row]),
                time=float(self._first_time[row]), confirmed_time=now, score=float(self._first_score[row]),
            ))
        dead = (self._state == _TENTATIVE) & (self._hits == 0) & (
            (now - self._last_time > self.tentative_keep_s) | self._weak)
        self._weight = self._weight * _DECAY + 1.0
        self._dropped = self._dropped * _DECAY + float(np.count_nonzero(dead))
        if self.adaptive:
            gone = np.flatnonzero(dead)
            self._dropped_hist *= _DECAY
            np.add.at(self._dropped_hist, _bin(self._score_sum[gone] / self._frames[gone]), self._frames[gone])
        dead |= (self._state == _LOST) & (now - self._last_time > self.track_buffer_s) & ~merged

        ids = np.full(n, -1, np.int64)
        on_track = det_track >= 0
        ids[on_track] = self._id[det_track[on_track]]
        ids[ids == 0] = -1  # tentative
        if dead.any() or merged.any():
            self.ended = self._end(np.flatnonzero(dead & (self._state != _TENTATIVE)))
            self._keep(~(dead | merged))
        self.predicted = self._coasting(now, frame_size)
        return ids

    def finish(self) -> list[TrackEnd]:
        """End every confirmed track (stream end) and return them (also in :attr:`ended`); the tracker empties."""
        self.started = []
        self.predicted = Predicted.empty()
        self.ended = self._end(np.flatnonzero(self._state != _TENTATIVE))
        self._keep(np.zeros(len(self._id), bool))
        return self.ended

    def clutter(self) -> float:
        """Tentative tracks dropped unconfirmed per update, a running mean over about the last 200 updates: the
        rate of detections that do not repeat in place (false positives, mostly). Above ``clutter_thresh``, weak
        tentative tracks and those that missed an update take detections by the plain IoU gate only."""
        return self._dropped / max(self._weight, 1.0)

    def thresholds(self) -> tuple[float, float, float]:
        """(high, new-track, instant-confirmation) score thresholds the next update uses.

        Fixed (``high_thresh``, ``new_track_thresh``, never) unless ``adaptive``. Adaptive: the high threshold is
        where the scores of detections on confirmed tracks and of those left on none overlap least (fewest on the
        wrong side; the middle of the best range); before ``_MIN_ON`` detections have been on tracks it is the
        median score seen, if lower than ``high_thresh``. ``new_track_thresh`` keeps its offset from
        ``high_thresh``. A new track is confirmed at its first detection when that scores at least the median of
        on-track scores and above nearly all (95 %) off-track ones.
        """
        offset = self.new_track_thresh - self.high_thresh
        if not self.adaptive:
            return self.high_thresh, self.new_track_thresh, np.inf
        lo, hi = self.low_thresh + 0.05, 0.95
        on, off = self._on_hist, self._off_hist
        if on.sum() < _MIN_ON:
            high = min(self.high_thresh, _quantile(self._all_hist, 0.5))
            high = float(np.clip(high, lo, max(lo, self.high_thresh)))
            return high, high + offset, np.inf
        # errors when splitting at edge k/_BINS: on-track scores below it + off-track scores at or above it
        err = np.concatenate([[0.0], np.cumsum(on)]) + np.concatenate([np.cumsum(off[::-1])[::-1], [0.0]])
        best = np.flatnonzero(err <= err.min() + 1e-9)
        high = float(np.clip(0.5 * (best[0] + best[-1]) / _BINS, lo, hi))
        # instant confirmation: where off-track detections (false positives, mostly) score this high less than
        # `confirm_fp_rate` times per frame (the histograms hold about 1 / (1 - _DECAY) frames)
        if self.confirm_fp_rate <= 0:
            return high, high + offset, np.inf
        above = np.concatenate([np.cumsum(off[::-1])[::-1], [0.0]])  # off-track mass at or above each edge
        edge = int(np.argmax(above <= self.confirm_fp_rate / (1.0 - _DECAY)))
        confirm = max(high, _quantile(on, 0.5), edge / _BINS)
        return high, high + offset, confirm

    # ------------------------------------------------------------------ internals

    def _score_llr(self, scores: np.ndarray) -> np.ndarray:
        """Per score: log of its likelihood on a confirmed track over that on a tentative track dropped
        unconfirmed, from the running histograms (add-one smoothed); 0 until both hold ``_MIN_ON`` detections."""
        on, dropped = self._on_hist, self._dropped_hist
        if self.weak_llr is None or not self.adaptive or min(on.sum(), dropped.sum()) < _MIN_ON:
            return np.zeros(len(scores))
        b = _bin(scores)
        return np.log((on[b] + 1.0) / (on.sum() + _BINS)) - np.log((dropped[b] + 1.0) / (dropped.sum() + _BINS))

    def _clock(self, timestamp: float | None) -> float:
        if timestamp is not None:
            return float(timestamp)
        return 0.0 if self._time is None else self._time + 1.0 / self.frame_rate

    def _predict(self, dt: float) -> None:
        """Kalman predict of every track by ``dt`` seconds (constant velocity, white-noise process)."""
        if dt <= 0.0 or not len(self._id):
            return
        m, p = self._mean, self._cov
        m[self._state == _LOST, 2:, 1] = 0.0  # as ByteTrack: a lost track keeps moving but stops resizing
        h = self._scale(m[:, :, 0])
        p00, p01, p11 = p[..., 0], p[..., 1], p[..., 2]
        p[..., 0] = p00 + 2.0 * dt * p01 + dt * dt * p11 + (self.std_pos_process * h) ** 2 * dt
        p[..., 1] = p01 + dt * p11
        p[..., 2] = p11 + (self.std_vel_process * h) ** 2 * dt
        m[..., 0] += dt * m[..., 1]
        m[:, 2:, 0] = np.maximum(m[:, 2:, 0], 1.0)  # keep sizes positive

    def _size_innovation(self, rows: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Normalised squared innovation [rows, boxes] of the detected width and height under each track's Kalman
        filter (predicted variance plus measurement noise, the latter at least a pixel)."""
        wh = _xyxy_to_cxcywh(boxes)[:, 2:]
        mean = self._mean[rows, 2:, 0]
        noise = np.maximum(self._measurement_std(self._mean[rows, :, 0])[:, 2:], 1.0)
        var = self._cov[rows, 2:, 0] + noise ** 2
        return (((wh[None, :, :] - mean[:, None, :]) ** 2) / var[:, None, :]).sum(axis=-1)

    def _inside(self, boxes: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
        """Boxes lying more than ``reid_border`` pixels inside the image border (the others may be clipped)."""
        m = self.reid_border
        return ((boxes[:, 0] > m) & (boxes[:, 1] > m) & (boxes[:, 2] < frame_size[0] - m)
                & (boxes[:, 3] < frame_size[1] - m))

    def _measurement_std(self, s: np.ndarray) -> np.ndarray:
        """Measurement noise (std, pixels) of each coordinate of boxes ``s`` [T, 4] (cx, cy, w, h): ``std_pos`` of
        the box size."""
        return self.std_pos * self._scale(s)

    @staticmethod
    def _scale(s: np.ndarray) -> np.ndarray:
        """Noise scale of each coordinate of boxes ``s`` [T, 4] (cx, cy, w, h): the width for cx and w, the height
        for cy and h -- a wide car moving sideways is as uncertain, in its own widths, as a tall person."""
        return np.maximum(s[:, [2, 3, 2, 3]], 1.0)

    def _labelled_iou(
        self, track_boxes: np.ndarray, track_labels: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> np.ndarray:
        """IoU of track boxes with detection boxes; with ``class_aware``, pairs of different labels are refused."""
        iou = iou_matrix(track_boxes, boxes)
        if self.class_aware and iou.size:
            iou[track_labels[:, None] != labels[None, :]] = -_FORBIDDEN
        return iou

    def _predicted_boxes(self, rows: np.ndarray | None = None, buffer: float = 0.0) -> np.ndarray:
        """Predicted boxes for matching: all tracks, tentative ones widened by ``tentative_buffer`` position stds;
        or ``rows`` widened by ``buffer`` stds."""
        if rows is not None:
            state = self._mean[rows, :, 0].copy()
            state[:, 2:] += 2.0 * buffer * np.sqrt(self._cov[rows, :2, 0])
            return _cxcywh_to_xyxy(state)
        state = self._mean[:, :, 0].copy()
        tentative = self._state == _TENTATIVE
        state[tentative, 2:] += 2.0 * self.tentative_buffer * np.sqrt(self._cov[tentative, :2, 0])
        return _cxcywh_to_xyxy(state)

    def _correct(self, rows: np.ndarray, boxes: np.ndarray) -> None:
        """Kalman update of ``rows`` with measured boxes (x1 y1 x2 y2)."""
        z = _xyxy_to_cxcywh(boxes)
        m, p = self._mean[rows], self._cov[rows]
        r = self._measurement_std(m[:, :, 0]) ** 2
        p00, p01, p11 = p[..., 0], p[..., 1], p[..., 2]
        s = p00 + r
        k0, k1 = p00 / s, p01 / s
        innovation = z - m[..., 0]
        m[..., 0] += k0 * innovation
        if self.velocity_clip > 0:
            # robust velocity update: an outlier moves the box, not the motion model (see velocity_clip)
            bound = self.velocity_clip * np.sqrt(s)
            bound[self._frames[rows] < self.velocity_clip_after] = np.inf
            m[..., 1] += k1 * np.clip(innovation, -bound, bound)
        else:
            m[..., 1] += k1 * innovation
        p[..., 0] = p00 - k0 * p00
        p[..., 1] = p01 - k0 * p01
        p[..., 2] = p11 - k1 * p01
        self._mean[rows] = m
        self._cov[rows] = p

    def _heirs(self, boxes: np.ndarray, labels: np.ndarray, now: float, matched: np.ndarray,
               frame_size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """For new detections: the id of the one recently lost track whose predicted box, widened by ``reid_buffer``
        position stds, overlaps it while no other confirmed track's widened box does (0: none, ambiguous, or that
        track's last box touched the image border), and whether any recently lost track's widened box overlaps it."""
        rows = np.flatnonzero(self._state != _TENTATIVE)
        heir = np.zeros(len(boxes), np.int64)
        if not len(rows):
            return heir, np.zeros(len(boxes), bool)
        wide = self._labelled_iou(self._predicted_boxes(rows, self.reid_buffer), self._label[rows], boxes, labels)
        hit = wide >= 1.0 - self.match_thresh
        # unmatched in this update: lost now (tracks unmatched in this update are marked lost only below)
        lost = ~matched[rows] & (now - self._last_time[rows] <= self.reid_lost_s)
        near = (hit & lost[:, None]).any(axis=0)
        one = (hit.sum(axis=0) == 1) & near
        src = rows[np.argmax(hit[:, one], axis=0)]
        if frame_size is not None:
            # an object last seen at the image border most likely left the view: a new object entering there (in
            # its widened box) is not re-identified as it; the birth still waits for its second detection
            inside = self._inside(self._last_box[src], frame_size)
            one[np.flatnonzero(one)[~inside]] = False
            src = src[inside]
        heir[one] = self._id[src]
        return heir, near

    def _spawn(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, now: float,
               weak: np.ndarray, heir: np.ndarray | None = None, near: np.ndarray | None = None,
               llr: np.ndarray | None = None) -> None:
        k = len(boxes)
        z = _xyxy_to_cxcywh(boxes)
        mean = np.zeros((k, 4, 2))
        mean[..., 0] = z
        h = self._scale(z)
        cov = np.zeros((k, 4, 3))
        cov[..., 0] = (2.0 * self.std_pos * h) ** 2
        cov[..., 2] = (self.std_vel_init * h) ** 2
        add = {
            "_mean": mean, "_cov": cov, "_id": np.zeros(k, np.int64), "_label": labels,
            "_state": np.full(k, _TENTATIVE, np.int8), "_hits": np.ones(k, np.int64), "_frames": np.ones(k, np.int64),
            "_first_time": np.full(k, now), "_last_time": np.full(k, now), "_first_score": scores,
            "_best_score": scores, "_first_box": boxes, "_last_box": boxes, "_weak": weak,
            "_heir": np.zeros(k, np.int64) if heir is None else heir,
            "_near": np.zeros(k, bool) if near is None else near, "_score_sum": scores,
            "_llr": np.zeros(k) if llr is None else llr,
        }
        for name in _COLUMNS:  # a column missing from `add` fails here, not as a misaligned table later
            setattr(self, name, np.concatenate([getattr(self, name), add[name]]))

    def _keep(self, keep: np.ndarray) -> None:
        for name in _COLUMNS:
            setattr(self, name, getattr(self, name)[keep])

    def _coasting(self, now: float, frame_size: tuple[int, int] | None) -> Predicted:
        """Lost tracks within ``coast_s`` of their last detection, at their predicted boxes (centre in the frame)."""
        rows = (self._state == _LOST) & (self._frames >= self.coast_min_frames) & (
            now - self._last_time <= self.coast_s * (1 + 1e-6))  # exactly coast_s ago counts, despite float error
        if not rows.any():
            return Predicted.empty()
        rows = np.flatnonzero(rows)
        state = self._mean[rows, :, 0]
        boxes = _cxcywh_to_xyxy(state)
        if frame_size is not None:  # an object whose predicted centre left the view is not there to see
            w, h = frame_size
            inside = (state[:, 0] > 0) & (state[:, 0] < w) & (state[:, 1] > 0) & (state[:, 1] < h)
            rows = rows[inside]
            boxes = np.clip(boxes[inside], 0.0, [w, h, w, h])  # as the detector clips its boxes
        return Predicted(self._id[rows], boxes, self._label[rows], self._best_score[rows])

    def _end(self, rows: np.ndarray) -> list[TrackEnd]:
        return [
            TrackEnd(
                track_id=int(self._id[i]), label=int(self._label[i]), start_time=float(self._first_time[i]),
                end_time=float(self._last_time[i]), duration=float(self._last_time[i] - self._first_time[i]),
                frames=int(self._frames[i]), best_score=float(self._best_score[i]), box=_box_tuple(self._last_box[i]),
            )
            for i in rows
        ]


def _bin(scores: np.ndarray) -> np.ndarray:
    return np.clip((scores * _BINS).astype(np.intp), 0, _BINS - 1)


def _quantile(hist: np.ndarray, q: float) -> float:
    """The q-quantile of a score histogram (bin upper edge)."""
    c = np.cumsum(hist)
    if c[-1] <= 0:
        return 0.0
    return float((np.searchsorted(c, q * c[-1]) + 1) / _BINS)


def _box_tuple(b: np.ndarray) -> tuple[float, float, float, float]:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
