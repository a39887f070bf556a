"""Cluster mode without a Ray cluster: Ray stays unimported, placement policy, fencing of a revoked worker, several
writers on the shared events stream, and `run --resume` on one machine."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from engines import Detector
from pipeline.cluster.placement import WorkerSlot, choose_worker, place_all
from pipeline.cluster.state import ClusterState
from pipeline.cluster.worker import ClusterWorker
from pipeline.config import ConfigError, load_config
from pipeline.runner import Pipeline
from pipeline.events.bus import dedicated_client
from pipeline.events.contract import detections_key, events_key, owner_key
from pipeline.events.outbox import FENCED_REASON, Outbox
from tests.conftest import ROOT, run_cli
from tests.waiting import wait_for


def test_cluster_usage_and_config_errors_exit_2(make_video: Callable[..., Path], redis_url: str) -> None:
    result = run_cli("run", "--cluster", "local:x", "--source", str(make_video(10, seed=3)), "--redis-url", redis_url)
    assert result.returncode == 2
    assert "--cluster local:x: expected local:N with N worker nodes" in result.stderr
    with pytest.raises(ConfigError, match="cluster.max_cameras_per_worker: Input should be greater than or equal to 1"):
        load_config(data={"cluster": {"max_cameras_per_worker": 0}})


def test_placement_spreads_by_load_and_reports_what_fits_nowhere() -> None:
    workers = [WorkerSlot("w1", "n1", 2), WorkerSlot("w2", "n2", 2), WorkerSlot("w3", "n3", 2)]
    placed, unplaced = place_all([f"c{i}" for i in range(7)], workers, {})
    counts = {w.name: sum(1 for s in placed.values() if s is w) for w in workers}
    assert counts == {"w1": 2, "w2": 2, "w3": 2}
    assert unplaced == ["c6"]
    # A worker that joins takes new cameras before the loaded ones do; full workers take none.
    assert choose_worker(workers + [WorkerSlot("w4", "n4", 2)], {"w1": 1, "w2": 1, "w3": 1}).name == "w4"
    assert choose_worker(workers, {"w1": 2, "w2": 2, "w3": 2}) is None


def test_revoked_worker_keeps_running_but_every_write_is_refused_and_counted(
    make_video: Callable[..., Path], detector: Detector, redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    video = make_video(400, seed=5)
    config = load_config(data={
        "cameras": [{"name": "cam", "url": str(video), "realtime": True, "max_fps": 10}],
        "redis": {"url": redis_url, "prefix": prefix}, "runtime": {"drain_timeout_s": 1},
    })
    camera = config.cameras[0]
    state = ClusterState(rclient, prefix)
    old = ClusterWorker(config, "old", "node-a", detector=detector)
    new = None
    try:
        first = state.assign("cam", "old", "node-a")
        old.start_camera(camera, first.epoch)
        key = detections_key(prefix, "cam")
        wait_for(lambda: rclient.xlen(key) >= 5, 60, "the first owner to publish")
        # The controller moves the camera (a partition: the old worker is not told) and starts it elsewhere.
        second = state.assign("cam", "new", "node-b")
        assert rclient.get(owner_key(prefix, "cam")) == str(second.epoch)
        published_at_move = old.status()["cameras"]["cam"]["published"]
        new = ClusterWorker(config, "new", "node-b", detector=detector)
        new.start_camera(camera, second.epoch)
        wait_for(lambda: old.status()["cameras"]["cam"]["drop_reasons"].get(FENCED_REASON, 0) >= 10, 60,
                 "the revoked worker's writes to be refused")
        wait_for(lambda: new.status()["cameras"]["cam"]["published"] >= 5, 60, "the new owner to publish")
        old_final = old.shutdown()
        new_final = new.shutdown()
        new = None
    finally:
        old.pipeline.request_stop()
        if new is not None:
            new.shutdown()
    o, n = old_final["cameras"]["cam"], new_final["cameras"]["cam"]
    # The revoked worker published nothing more after the move (at most what was in flight when it happened,
    # which Redis took before the owner key changed); its refused frames are counted, not written.
    assert o["drop_reasons"].get(FENCED_REASON, 0) >= 10
    assert o["decoded"] == o["published"] + o["dropped"]
    assert n["decoded"] == n["published"] + n["dropped"] and FENCED_REASON not in n["drop_reasons"]
    assert rclient.xlen(key) == o["published"] + n["published"]
    assert o["published"] <= published_at_move + 8  # the chunk in flight at the move, at most
    # Its events of the camera (track lifecycle, camera state) are fenced as well: the outbox counts them too.
    assert old_final["dropped_by_reason"][FENCED_REASON] > o["drop_reasons"][FENCED_REASON]


def test_concurrent_writers_share_the_events_stream_without_conflicts(
    redis_url: str, rclient: redis.Redis, prefix: str
) -> None:
    key = events_key(prefix)
    outboxes = [Outbox(dedicated_client(rclient, 5.0), shared_keys=[key], seq_prefix=f"{prefix}:writer:")
                for _ in range(4)]
    for outbox in outboxes:
        outbox.start()

    def write(i: int, outbox: Outbox) -> None:
        for n in range(300):
            outbox.put(key, {"v": "1", "type": "camera_state", "camera": f"w{i}", "state": "online",
                             "previous": "connecting", "reason": "", "url": f"rtsp://w{i}/{n}", "ts": "1.000000"})

    threads = [threading.Thread(target=write, args=(i, o)) for i, o in enumerate(outboxes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for outbox in outboxes:
        assert outbox.close(timeout=30) == 0
        stats = outbox.stats()
        assert stats.delivered_entries == 300 and stats.dropped_entries == 0 and stats.errors == 0
    entries = rclient.xrange(key)
    assert len(entries) == 1200
    for i in range(4):  # each writer's entries are all there, once, in its order
        urls = [f["url"] for _, f in entries if f["camera"] == f"w{i}"]
        assert urls == [f"rtsp://w{i}/{n}" for n in range(300)]


def test_shared_stream_entry_resent_after_a_lost_reply_is_written_once(rclient: redis.Redis, prefix: str) -> None:
    key = events_key(prefix)
    outbox = Outbox(dedicated_client(rclient, 5.0), shared_keys=[key], seq_prefix=f"{prefix}:writer:")
    outbox.put(key, {"v": "1", "type": "camera_unplaced", "camera": "c", "reason": "x", "ts": "1.000000"})
    chunk = list(outbox._queue)
    # The connection broke after Redis applied the chunk: the writer sends the same chunk again.
    assert not any(isinstance(r, Exception) for r in outbox._send(chunk))
    results = outbox._send(chunk)
    assert results == ["DUP"]
    assert rclient.xlen(key) == 1


def test_run_resume_continues_a_file_after_its_last_published_frame_and_never_imports_ray(
    make_video: Callable[..., Path], detector: Detector, redis_url: str, rclient: redis.Redis, prefix: str,
    tmp_path: Path
) -> None:
    video = make_video(40, seed=7)
    key = detections_key(prefix, "clip")
    config = load_config(data={"cameras": [{"name": "clip", "url": str(video)}], "redis": {"prefix": prefix}})
    first = Pipeline(config, detector, rclient)
    first.start()
    assert first.wait(60) and first.report().ok
    # Make it an earlier run that died after publishing frame 14: only frames 0..14 are in the stream.
    entries = rclient.xrange(key)
    rclient.xdel(key, *[entry_id for entry_id, fields in entries if int(fields["frame"]) > 14])
    # `run --resume` as a user runs it; without --cluster, neither Ray nor pipeline.cluster is imported.
    summary = tmp_path / "summary.json"
    code = (
        "import sys; from pipeline.cli.commands import main; "
        f"rc = main(['--log-level', 'warning', 'run', '--source', 'clip={video}', '--redis-url', {redis_url!r}, "
        f"'--prefix', {prefix!r}, '--resume', '--summary-json', {str(summary)!r}]); "
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'pipeline.cluster'))); "
        "print('LOADED', loaded); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout
    assert "Resuming clip after frame 14" in result.stderr
    assert [int(f["frame"]) for _, f in rclient.xrange(key)] == list(range(40))  # every frame once, in order
    stream = json.loads(summary.read_text())["streams"]["clip"]
    assert stream["published"] == stream["decoded"] == 25
