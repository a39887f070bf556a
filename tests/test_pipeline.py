"""The whole pipeline on real H.264 files, publishing to a real Redis server."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis

from engines import Detector
from pipeline.config import load_config
from pipeline.inference.detector import DetectorStage
from pipeline.events.contract import SCHEMA_VERSION, detections_key, parse_entry
from pipeline.runner import Pipeline, RunReport


def run_pipeline(sources: dict[str, Path | str], detector: Detector, client: redis.Redis, prefix: str,
                 **sections: dict[str, object]) -> RunReport:
    config = load_config(data={
        "cameras": [{"name": n, "url": str(u)} for n, u in sources.items()],
        "redis": {"prefix": prefix},
        **sections,
    })
    pipeline = Pipeline(config, detector, client)
    pipeline.start()
    assert pipeline.wait(timeout=120), "pipeline did not finish"
    return pipeline.report()


def entries(client: redis.Redis, prefix: str, camera: str) -> list[dict[str, object]]:
    return [parse_entry(i, f) for i, f in client.xrange(detections_key(prefix, camera))]


def test_file_of_n_frames_yields_n_entries_in_order(make_video: Callable[..., Path], detector: Detector,
                                                     rclient: redis.Redis, prefix: str) -> None:
    video = make_video(37)
    report = run_pipeline({"street": video}, detector, rclient, prefix, batching={"max_batch": 4})
    assert report.ok, report
    got = entries(rclient, prefix, "street")
    assert [e["frame"] for e in got] == list(range(37))
    pts = [e["pts"] for e in got]
    assert pts == sorted(pts) and len(set(pts)) == 37 and abs(pts[1] - pts[0] - 0.04) < 1e-3  # 25 fps file
    for e in got:
        assert e["v"] == SCHEMA_VERSION and e["camera"] == "street"
        assert (e["width"], e["height"]) == (320, 240)
        assert e["capture_ts"] <= e["publish_ts"] <= time.time()
        for obj in e["objects"]:  # type: ignore[union-attr]
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 240
            assert (obj["track_id"] is None or obj["track_id"] > 0) and obj["label"] in detector.label_names and 0.5 <= obj["score"] <= 1
    assert sum(len(e["objects"]) for e in got) == report.objects > 0  # type: ignore[arg-type, misc]
    assert report.streams["street"]["decoded"] == report.streams["street"]["published"] == 37
    tracked = [o["track_id"] for e in got for o in e["objects"] if o["track_id"] is not None]  # type: ignore[union-attr]
    assert len(tracked) > 0.8 * report.objects  # nearly every detection belongs to a confirmed track
    events = [f for _, f in rclient.xrange(f"{prefix}:events") if f["type"].startswith("track_")]
    started = {int(f["track_id"]) for f in events if f["type"] == "track_started"}
    ended = {int(f["track_id"]) for f in events if f["type"] == "track_ended"}
    assert set(tracked) == started == ended  # every track starts once and ends once (at the latest, at stream end)


def test_objects_the_detector_misses_are_published_predicted_unless_turned_off(
        make_video: Callable[..., Path], detector: Detector, rclient: redis.Redis, prefix: str) -> None:
    """The same file twice: by default the tracker's predicted boxes for objects the detector missed are published
    beside the detector's own (marked predicted, on a track already published, in the frame); with
    `tracker.coast_s: 0` only the detector's boxes are, and those are the same in both runs."""
    video = make_video(60, seed=4)
    assert run_pipeline({"on": video}, detector, rclient, prefix).ok
    assert run_pipeline({"off": video}, detector, rclient, prefix, tracker={"coast_s": 0}).ok
    on, off = entries(rclient, prefix, "on"), entries(rclient, prefix, "off")
    assert len(on) == len(off) == 60
    predicted = [(e["frame"], o) for e in on for o in e["objects"] if o.get("predicted")]  # type: ignore[union-attr]
    assert predicted, "the detector missed nothing on this clip: no predicted box to check"
    assert not any(o.get("predicted") for e in off for o in e["objects"])  # type: ignore[union-attr]
    ids: dict[int, set[int]] = {}  # frame -> ids of the detector's boxes there
    for e in on:
        ids[e["frame"]] = {o["track_id"] for o in e["objects"] if not o.get("predicted")}  # type: ignore[index, union-attr]
    published = {i for s in ids.values() for i in s}
    for frame, o in predicted:
        assert o["track_id"] in published and o["track_id"] not in ids[frame]  # a known track, missed in this frame
        x1, y1, x2, y2 = o["box"]
        assert 0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 240
    for a, b in zip(on, off):
        mine = sorted((o["label"], o["score"], o["box"]) for o in a["objects"] if not o.get("predicted"))  # type: ignore[union-attr]
        assert mine == sorted((o["label"], o["score"], o["box"]) for o in b["objects"])  # type: ignore[union-attr]

def test_two_files_at_once_both_complete(make_video: Callable[..., Path], detector: Detector,
                                         rclient: redis.Redis, prefix: str) -> None:
    report = run_pipeline({"a": make_video(30, seed=1), "b": make_video(45, seed=2)}, detector, rclient, prefix,
                          batching={"max_batch": 4, "max_delay_ms": 5})
    assert report.ok
    assert [e["frame"] for e in entries(rclient, prefix, "a")] == list(range(30))
    assert [e["frame"] for e in entries(rclient, prefix, "b")] == list(range(45))
    assert report.stages["detector"]["frames_in"] == 75


def test_batches_mix_streams_and_respect_max_batch(make_video: Callable[..., Path], detector: Detector,
                                                   rclient: redis.Redis, prefix: str) -> None:
    sources = {f"cam{i}": make_video(20, seed=10 + i) for i in range(3)}
    config = load_config(data={"cameras": [{"name": n, "url": str(u)} for n, u in sources.items()],
                               "redis": {"prefix": prefix}, "batching": {"max_batch": 3, "max_delay_ms": 200}})
    pipeline = Pipeline(config, detector, rclient)
    pipeline.start()
    assert pipeline.wait(timeout=120)
    stage = pipeline.stages[1]
    assert isinstance(stage, DetectorStage)
    assert set(stage.batch_sizes) <= {1, 2, 3} and sum(n * k for n, k in stage.batch_sizes.items()) == 60
    assert stage.batch_sizes[3] >= 10  # three live files keep batches full
    assert stage.multi_stream_batches > 0, "no batch ever held frames of two cameras"
