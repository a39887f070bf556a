"""Zone and line analytics through the real pipeline, detector and Redis: events match the scene's ground truth,
zones change at runtime through the HTTP API, invalid ones are refused with the reason; jitter gives no events."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from engines import Detector
from engines.base import Detections
from lab.analytics_eval import published_events, score, truth_events
from lab.synth import SceneSpec, VideoTruth, write_video
from pipeline.analytics import CameraAnalytics
from pipeline.api.server import ApiServer
from pipeline.client import Subscriber
from pipeline.config import AnalyticsConfig, ConfigError, check_labels, load_config
from pipeline.events.contract import events_key, parse_entry
from pipeline.frame import Frame, FrameResult
from pipeline.runner import Pipeline
from tests.conftest import run_cli

LABELS = ["__background__", "person", "car", "sign"]
#: A vertical line through the middle and a zone around the centre (normalised: any frame size).
REGIONS: dict[str, Any] = {
    "zones": [{"name": "centre", "normalized": True, "labels": ["person", "car"],
               "points": [[0.3, 0.3], [0.7, 0.3], [0.75, 0.95], [0.25, 0.95]]}],
    "lines": [{"name": "mid", "normalized": True, "labels": ["person", "car"], "in_name": "westbound",
               "points": [[0.5, 0.02], [0.5, 0.98]]}],
}
#: Seed 41 at 320x240, 100 frames: three crossings of `mid` (both directions) and entries/exits of `centre`, none
#: within the hysteresis of the clip's ends (lab/analytics_eval.py computes them from the true trajectories).
SCENE_SEED = 41


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> VideoTruth:
    return write_video(tmp_path_factory.mktemp("analytics") / "scene.mp4",
                       SceneSpec(width=320, height=240, frames=100), seed=SCENE_SEED)


def _events(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    return [parse_entry(i, f) for i, f in client.xrange(events_key(prefix))]


def test_line_and_zone_events_match_ground_truth(scene: VideoTruth, detector: Detector, rclient: redis.Redis,
                                                 prefix: str, redis_url: str) -> None:
    config = load_config(data={"cameras": [{"name": "street", "url": str(scene.path), **REGIONS}],
                               "redis": {"prefix": prefix}})
    pipeline = Pipeline(config, detector, rclient)
    pipeline.start()
    assert pipeline.wait(timeout=120)
    assert pipeline.report().ok
    published = _events(rclient, prefix)  # the prefix fixture also validates each against the JSON Schema
    truth = truth_events("street", scene, AnalyticsConfig.model_validate(REGIONS))
    kinds = {e.kind for e in truth}
    assert {"line_cross", "zone_enter", "zone_exit"} <= kinds and sum(e.kind == "line_cross" for e in truth) >= 3
    boxes = {("street", o.track_id, o.frame_index): o.box for o in scene.objects}
    scores = score(truth, published_events(published), boxes, {"street": 25.0}, tolerance=0.5)
    for kind in ("line_cross", "zone_enter", "zone_exit"):
        s = scores[kind]
        assert s.matched == s.true == s.published, (kind, s.unmatched)  # every true event, nothing else
    crossings = [e for e in published if e["type"] == "line_cross"]
    assert {e["direction_name"] for e in crossings} <= {"westbound", "out"}
    # Occupancy follows entries and exits; counts in the API's shape agree with the events
    counts = pipeline.analytics.camera("street").counts()  # type: ignore[union-attr]
    line = counts["lines"]["mid"]
    assert line["in"] == sum(e["direction"] == "in" for e in crossings)
    assert line["out"] == sum(e["direction"] == "out" for e in crossings)
    assert counts["zones"]["centre"]["occupancy"] == 0  # the stream ended: everyone left
    occupancy = [e["count"] for e in published if e["type"] == "zone_occupancy"]
    assert occupancy and occupancy[-1] == 0 and min(occupancy) >= 0

    # Readers filter by event type: the Python client and `subscribe --events --type`
    sub = Subscriber.from_url(redis_url, prefix=prefix, events=True, types=["line_cross"], from_start=True)
    got = list(sub.iter(timeout_s=0.5))
    assert [e["id"] for e in got] == [e["id"] for e in crossings]
    cli = run_cli("subscribe", "--redis-url", redis_url, "--prefix", prefix, "--events", "--type", "line_cross",
                  "--from-start", "--timeout", "1")
    assert cli.returncode == 0, cli.stderr
    assert len(cli.stdout.splitlines()) == len(crossings) and all('"line_cross"' in s for s in cli.stdout.splitlines())


def test_zones_edited_through_the_api_apply_without_restart(tmp_path: Path, detector: Detector,
                                                            rclient: redis.Redis, prefix: str) -> None:
    video = write_video(tmp_path / "paced.mp4", SceneSpec(width=320, height=240, frames=125), seed=42).path
    config = load_config(data={"cameras": [{"name": "cam", "url": str(video), "realtime": True}],
                               "redis": {"prefix": prefix}})
    pipeline = Pipeline(config, detector, rclient)
    pipeline.start()
    server = ApiServer(pipeline, "127.0.0.1", 0, token="s3cret")
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer s3cret"}, timeout=30) as http:
            assert httpx.get(f"{server.url}/api/cameras/cam/analytics").status_code == 401  # token checked
            before = http.get("/api/cameras/cam/analytics").json()
            assert before["zones"] == [] and before["counts"] == {"zones": {}, "lines": {}}
            deadline = time.monotonic() + 30
            while http.get("/api/cameras/cam/analytics").json()["frame_size"] is None:
                assert time.monotonic() < deadline, "no frame processed"
                time.sleep(0.05)

            # Refused, with the reason; nothing changes
            bad = {
                "self-intersection": {"zones": [{"name": "bow", "points": [[10, 10], [100, 100], [100, 10],
                                                                           [10, 100]]}]},
                "outside the 320x240 frame": {"zones": [{"name": "big", "points": [[0, 0], [400, 0], [400, 200]]}]},
                "no label 'forklift'": {"lines": [{"name": "l", "points": [[0, 0], [9, 9]],
                                                         "labels": ["forklift"]}]},
                "at least 3 points": {"zones": [{"name": "z", "points": [[0, 0], [9, 9]]}]},
            }
            for reason, body in bad.items():
                r = http.put("/api/cameras/cam/analytics", json=body)
                assert r.status_code == 400 and reason in r.json()["detail"].lower(), (reason, r.text)
            assert http.put("/api/cameras/nope/analytics", json={}).status_code == 404

            # A zone over the whole picture: every tracked object is in it from the next frames on
            whole = {"zones": [{"name": "all", "normalized": True, "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}]}
            r = http.put("/api/cameras/cam/analytics", json=whole)
            assert r.status_code == 200, r.text
            assert r.json()["zones"][0]["name"] == "all"
            deadline = time.monotonic() + 30
            while not http.get("/api/cameras/cam/analytics").json()["counts"]["zones"]["all"]["occupancy"]:
                assert time.monotonic() < deadline, "the new zone never saw an object"
                time.sleep(0.05)
            assert pipeline.is_running("cam")  # the camera was never restarted
            metrics = {(s.name, s.labels.get("zone")): s.value
                       for f in text_string_to_metric_families(http.get("/metrics").text) for s in f.samples}
            assert metrics.get(("rpn_zone_occupancy", "all"), 0) >= 1
            assert metrics.get(("rpn_zone_entries_total", "all"), 0) >= 1
            jpeg = http.get("/api/cameras/cam/frame.jpg")
            assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"

            # A config reload (SIGHUP) that changes only zones and lines applies them the same way: no restart
            edited = load_config(data={"cameras": [{"name": "cam", "url": str(video), "realtime": True, **REGIONS}],
                                       "redis": {"prefix": prefix}})
            assert pipeline.reload(edited) == ([], [])
            body = http.get("/api/cameras/cam/analytics").json()
            assert [z["name"] for z in body["zones"]] == ["centre"] and body["lines"][0]["name"] == "mid"
            assert pipeline.is_running("cam")
    finally:
        server.stop()
        pipeline.request_stop()
        assert pipeline.wait(timeout=30)
    entered = [e for e in _events(rclient, prefix) if e["type"] == "zone_enter"]
    assert any(e["zone"] == "all" for e in entered) and {e["zone"] for e in entered} <= {"all", "centre"}


def _frame(t: int, box: list[float], track: int = 5, label: int = 1) -> FrameResult:
    det = Detections(np.array([box], np.float32), np.array([0.9], np.float32), np.array([label]))
    return FrameResult(Frame("cam", t, t / 25, 1e9 + t / 25, None, 640, 360), det, np.array([track]))


def test_jitter_on_a_line_or_border_gives_no_events_and_a_crossing_gives_one() -> None:
    config = AnalyticsConfig.model_validate({
        "zones": [{"name": "z", "points": [[0, 0], [300, 0], [300, 360], [0, 360]]}],
        "lines": [{"name": "l", "points": [[300, 0], [300, 360]]}],
    })
    analytics = CameraAnalytics("cam", config, LABELS)
    rng = np.random.default_rng(0)
    path = [250.0] * 10 + [300.0] * 300 + [300.0 + 2 * k for k in range(100)]  # walk up, stand on it, walk off
    events = []
    for t, x in enumerate(path):  # the box jitters by ~3 px all the way, as detections do
        x, y = x + rng.normal(0, 3), 200 + rng.normal(0, 2)
        events += analytics.update(_frame(t, [x - 12, y - 60, x + 12, y]))
    assert [e["type"] for e in events if e["type"] != "zone_occupancy"] == ["zone_enter", "zone_exit", "line_cross"]
    cross = events[-1] if events[-1]["type"] == "line_cross" else [e for e in events if e["type"] == "line_cross"][0]
    assert cross["direction"] == "out" and 10 / 25 <= float(cross["cross_pts"]) <= 330 / 25  # while on the line
    assert analytics.counts()["lines"]["l"] == {"in": 0, "out": 1, "in_name": "in", "out_name": "out",
                                                "in_by_label": {}, "out_by_label": {"person": 1}}


def test_a_box_seen_in_one_frame_gives_no_event_unless_min_frames_is_1() -> None:
    """A false or duplicate detection that gets a track id for one frame inside a zone used to give a zone_enter and,
    1.5 s later, a zone_exit at the same moment. By default (zones: min_frames 2) a track counts from its second
    frame."""
    def run(min_frames: int | None) -> list[dict[str, str]]:
        extra = {} if min_frames is None else {"min_frames": min_frames}
        config = AnalyticsConfig.model_validate({"zones": [{"name": "z", "points": [[0, 0], [300, 0], [300, 360],
                                                                                      [0, 360]], **extra}]})
        analytics = CameraAnalytics("cam", config, LABELS)
        events = analytics.update(_frame(0, [100, 100, 130, 160], track=7))  # the blip
        for t in range(1, 80):  # a person walking in from the right, seen in every frame
            x = 400 - 3 * t
            events += analytics.update(_frame(t, [x - 12, 140, x + 12, 200], track=8))
        return [e for e in events if e["type"] in ("zone_enter", "zone_exit")]

    default = run(None)
    assert [(e["type"], e["track_id"]) for e in default] == [("zone_enter", "8")]
    enter = default[0]
    assert float(enter["entered_pts"]) == 34 / 25  # its point crossed x = 300 then (the event waits for the dead band)
    assert sorted((e["type"], e["track_id"]) for e in run(1)) == [("zone_enter", "7"), ("zone_enter", "8"),
                                                                 ("zone_exit", "7")]


def test_a_line_counts_a_track_seen_only_on_either_side_of_it_once() -> None:
    """Lines count from a track's first frame (min_frames 1): a crossing already needs a sighting on each side, and a
    fast object may give only those two."""
    config = AnalyticsConfig.model_validate({"lines": [{"name": "l", "points": [[300, 0], [300, 360]]}]})
    analytics = CameraAnalytics("cam", config, LABELS)
    events = analytics.update(_frame(0, [240, 140, 264, 200], track=9))  # left of the line
    events += analytics.update(_frame(1, [336, 140, 360, 200], track=9))  # right of it, beyond the dead band
    assert [(e["type"], e["direction"]) for e in events] == [("line_cross", "out")]  # as in the jitter test above


def test_invalid_zones_and_lines_are_refused_with_the_reason() -> None:
    cases = {
        "invalid polygon: Self-intersection": {"zones": [{"name": "z", "points": [[0, 0], [10, 10], [10, 0], [0, 10]]}]},
        "needs at least 3 points": {"zones": [{"name": "z", "points": [[0, 0], [10, 10]]}]},
        "point 1 (1.2, 0.5) is outside 0-1": {"lines": [{"name": "l", "normalized": True,
                                                          "points": [[0, 0], [1.2, 0.5]]}]},
        "is used twice": {"zones": [{"name": "a", "points": [[0, 0], [5, 0], [5, 5]]}],
                          "lines": [{"name": "a", "points": [[0, 0], [5, 5]]}]},
        "cameras.0.lines.0.min_score": {"lines": [{"name": "l", "points": [[0, 0], [5, 5]], "min_score": 2}]},
    }
    for reason, regions in cases.items():
        with pytest.raises(ConfigError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            load_config(data={"cameras": [{"name": "c", "url": "x.mp4", **regions}]})
    camera = load_config(data={"cameras": [{"name": "c", "url": "x.mp4", "lines": [
        {"name": "l", "points": [[0, 0], [5, 5]], "labels": ["person", "forklift"]}]}]}).cameras[0]
    assert check_labels(camera, LABELS) == ["line 'l': the model has no label 'forklift'; its labels: person, car, sign"]
    assert camera.lines[0].outside_frame(4, 4) == "l: point 1 (5, 5) is outside the 4x4 frame"


def test_zones_and_lines_are_drawn_shaded_with_arrows() -> None:
    from pipeline.analytics.camera import Overlay
    from pipeline.monitor.annotate import CROWDED_COLOUR, ZONE_COLOUR, annotate

    grey = np.full((240, 320, 3), 100, np.uint8)
    overlay = Overlay(zones=(("dock", ((20.0, 100.0), (140.0, 100.0), (140.0, 220.0), (20.0, 220.0)), 2, False),
                             ("crowd", ((180.0, 100.0), (300.0, 100.0), (300.0, 220.0)), 9, True)),
                      lines=(("gate", ((160.0, 10.0), (160.0, 230.0)), 4, 3),))
    drawn = annotate(grey, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), LABELS,
                     overlay).permute(1, 2, 0).numpy().astype(int)
    inside, crowded, outside = drawn[180, 60], drawn[200, 280], drawn[50, 60]
    assert (outside == 100).all()  # untouched away from zones and lines
    assert np.argmax(inside) == np.argmax(ZONE_COLOUR) and inside[1] > 110  # shaded green
    assert np.argmax(crowded) == np.argmax(CROWDED_COLOUR) and crowded[0] > 110  # overcrowded: red
    assert (drawn[120, 160] > 240).all()  # the line, white
    assert (drawn[120, 145:158] > 240).all(axis=1).any()  # its arrow points left: the `in` side of a downward line
    assert not (drawn[120, 163:176] > 240).all(axis=1).any()  # and not right
