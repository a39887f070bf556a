"""Live RTSP cameras served by a real GStreamer RTSP server: outages, hangs, runtime add/remove, config reload."""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis

from engines import Detector
from pipeline.config import CameraConfig, load_config
from pipeline.events.contract import detections_key, events_key
from pipeline.runner import Pipeline
from tests.cli_process import CliProcess
from tests.rtsp import GSTREAMER_MISSING, RtspServer, gstreamer_available, make_camera_file
from tests.system_deps import needs_system
from tests.waiting import wait_for

pytestmark = needs_system(gstreamer_available(), GSTREAMER_MISSING)

FAST_RECONNECT = {"initial_s": 0.2, "max_s": 1.0, "jitter": 0.2, "healthy_s": 0.5}


@pytest.fixture(scope="module")
def camera_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_camera_file(tmp_path_factory.mktemp("cams") / "cam.h264", frames=50, width=320, height=240, seed=40)


def camera_events(client: redis.Redis, prefix: str, camera: str) -> list[tuple[str, str]]:
    return [(f["previous"], f["state"]) for _, f in client.xrange(events_key(prefix))
            if f["type"] == "camera_state" and f["camera"] == camera]


def test_camera_outages_reconnect_with_one_event_pair_each_while_others_continue(
    camera_file: Path, make_video: Callable[..., Path], detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    with RtspServer({"/cam": camera_file}) as flaky, RtspServer({"/cam": camera_file}) as steady:
        config = load_config(data={
            "cameras": [
                {"name": "flaky", "url": flaky.url("/cam"), "read_timeout_s": 3},
                {"name": "steady", "url": steady.url("/cam"), "read_timeout_s": 3},
                {"name": "file", "url": str(make_video(3000, seed=41))},
            ],
            "redis": {"prefix": prefix},
            "runtime": {"reconnect": FAST_RECONNECT},
        })
        pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
        pipeline.start()
        stats = pipeline.ctx.streams
        wait_for(lambda: stats["flaky"].state == "online" and stats["steady"].state == "online", 20, "cameras online")
        for outage in range(10):
            flaky.kill()
            wait_for(lambda: stats["flaky"].state == "offline", 5, f"outage {outage} noticed")
            for other in ("steady", "file"):  # the others go on during every outage (an event, not a gap in s)
                if other == "file" and stats["file"].state == "finished":
                    continue  # a fast machine decodes the whole file before the tenth outage
                before = stats[other].published
                wait_for(lambda: stats[other].published > before, 30, f"{other} publishing during outage {outage}")
            time.sleep(0.3)  # down for a moment: attempts fail and back off
            flaky.restart()
            seen = stats["flaky"].published
            # Back within the backoff cap (1 s) plus a keyframe (1 s) and the engine's turn: a generous deadline.
            wait_for(lambda: stats["flaky"].state == "online" and stats["flaky"].published > seen, 60,
                     f"reconnect after outage {outage}")
        pipeline.request_stop()
        assert pipeline.wait(timeout=30)
    assert camera_events(rclient, prefix, "flaky") == (
        [("starting", "connecting"), ("connecting", "online")] + [("online", "offline"), ("offline", "online")] * 10
    )
    assert camera_events(rclient, prefix, "steady") == [("starting", "connecting"), ("connecting", "online")]
    for name in ("steady", "file"):  # the others went on through every outage
        entries = rclient.xrange(detections_key(prefix, name))
        frames = [int(f["frame"]) for _, f in entries]
        assert frames == sorted(frames)
    file_frames = [int(f["frame"]) for _, f in rclient.xrange(detections_key(prefix, "file"))]
    assert file_frames == list(range(len(file_frames)))  # a file is lossless: no frame skipped
    assert len(file_frames) > 300  # and it went on through the outages
    report = pipeline.report()
    for s in report.streams.values():
        assert s["decoded"] == s["published"] + s["dropped"]
    assert report.streams["flaky"]["reconnects"] >= 10


def test_hung_camera_is_noticed_within_its_read_timeout_and_recovers(
    camera_file: Path, detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    with RtspServer({"/cam": camera_file}) as server:
        config = load_config(data={
            "cameras": [{"name": "hung", "url": server.url("/cam"), "read_timeout_s": 2.0}],
            "redis": {"prefix": prefix},
            "runtime": {"reconnect": FAST_RECONNECT},
        })
        pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
        pipeline.start()
        stats = pipeline.ctx.streams
        wait_for(lambda: stats["hung"].state == "online", 20, "camera online")
        server.pause()  # SIGSTOP: the connection stays open, nothing comes
        try:
            # Noticed through the read timeout (2 s), not waited on for ever: a generous deadline.
            paused = time.monotonic()
            wait_for(lambda: stats["hung"].state == "offline", 60, "the stall to be noticed")
            noticed = time.monotonic() - paused
        finally:
            server.resume()
        seen = stats["hung"].published
        wait_for(lambda: stats["hung"].state == "online" and stats["hung"].published > seen, 20, "recovery")
        pipeline.request_stop()
        assert pipeline.wait(timeout=30)
    # Offline after its read timeout of silence, not before (a lower bound: load can only make it later).
    assert noticed >= 1.9, f"stall declared offline after {noticed:.2f} s of silence, read timeout 2 s"
    assert camera_events(rclient, prefix, "hung")[-2:] == [("online", "offline"), ("offline", "online")]


def test_adding_and_removing_20_cameras_frees_threads_and_memory(
    tmp_path: Path, detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    small = make_camera_file(tmp_path / "small.h264", frames=50, width=160, height=96, seed=42)
    process = psutil.Process()
    with RtspServer({"/cam": small}) as server:
        pipeline = Pipeline(load_config(data={"redis": {"prefix": prefix}}), detector, rclient,
                            until_sources_end=False)
        pipeline.start()
        start_threads = threading.active_count()
        threads, rss = [], []
        for cycle in range(7):  # 2 to warm up (the allocator's arenas grow to their working size), 5 measured
            for i in range(20):
                pipeline.add_source(CameraConfig(name=f"cam{i}", url=server.url("/cam")))
            wait_for(lambda: all(pipeline.ctx.streams[f"cam{i}"].state == "online" for i in range(20)), 60,
                     f"20 cameras online in cycle {cycle}")
            assert all(pipeline.remove_source(f"cam{i}") for i in range(20))
            assert pipeline.camera_names() == []
            gc.collect()
            time.sleep(0.5)  # in-flight frames of removed cameras leave the stages
            assert [t.name for t in threading.enumerate() if t.name.startswith("source-")] == []
            threads.append(threading.active_count())
            if cycle >= 2:
                rss.append(process.memory_info().rss)
        pipeline.request_stop()
        assert pipeline.wait(timeout=30)
    assert max(threads) <= start_threads, f"threads: {start_threads} at start, {threads} after each cycle"
    growth_mb = (rss[-1] - rss[0]) / 2**20
    assert growth_mb < 25, f"memory grew {growth_mb:.0f} MB over 5 cycles: {[r // 2**20 for r in rss]} MB"


def test_sighup_reloads_the_camera_list(camera_file: Path, tmp_path: Path, redis_url: str, rclient: redis.Redis,
                                        prefix: str) -> None:
    with RtspServer({"/cam": camera_file}) as server:
        config = tmp_path / "cameras.yaml"
        config.write_text(f"cameras:\n  - {{name: one, url: '{server.url('/cam')}'}}\n")
        with CliProcess("run", "--config", str(config), "--redis-url", redis_url, "--prefix", prefix) as proc:
            wait_for(lambda: rclient.xlen(detections_key(prefix, "one")) > 0, 60, "camera one publishing")
            config.write_text(f"cameras:\n  - {{name: two, url: '{server.url('/cam')}'}}\n")
            proc.signal(signal.SIGHUP)
            proc.wait_for("reload: 1 camera(s) added ['two'], 1 removed ['one']", 60)
            wait_for(lambda: rclient.xlen(detections_key(prefix, "two")) >= 10, 60, "camera two publishing")
            count = rclient.xlen(detections_key(prefix, "one"))  # one's frames in flight are out by now
            # While two publishes 20 more frames (about a second of camera), one (as fast) publishes nothing.
            wait_for(lambda: rclient.xlen(detections_key(prefix, "two")) >= 30, 60, "camera two publishing on")
            assert rclient.xlen(detections_key(prefix, "one")) == count, "camera one still publishing after removal"
            proc.signal(signal.SIGTERM)
            assert proc.wait(60) == 0, proc.stderr


def test_udp_transport(camera_file: Path, detector: Detector, rclient: redis.Redis, prefix: str) -> None:
    # A camera that only speaks RTP over UDP: it refuses to interleave over TCP (461 Unsupported transport), so the
    # frames the "udp" camera gets came over UDP, and the "tcp" one, asking for TCP, gets none.
    with RtspServer({"/cam": camera_file}, protocols="udp") as server:
        config = load_config(data={
            "cameras": [{"name": "udp", "url": server.url("/cam"), "transport": "udp"},
                        {"name": "tcp", "url": server.url("/cam"), "transport": "tcp"}],
            "redis": {"prefix": prefix},
            "runtime": {"reconnect": FAST_RECONNECT},
        })
        pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
        pipeline.start()
        stats = pipeline.ctx.streams
        wait_for(lambda: stats["udp"].published >= 10 and stats["tcp"].reconnects >= 2, 60,
                 "frames over UDP, and the TCP camera refused")
        # This process holds RTP/RTCP sockets on UDP while receiving (TCP interleaves them instead).
        assert len(udp_sockets_of_this_process()) >= 2
        pipeline.request_stop()
        assert pipeline.wait(timeout=30)
    assert stats["tcp"].decoded == 0 and stats["tcp"].error is not None, stats["tcp"].error
    assert rclient.xlen(detections_key(prefix, "tcp")) == 0


def test_camera_password_is_used_but_never_shown(camera_file: Path, redis_url: str, rclient: redis.Redis,
                                                 prefix: str) -> None:
    with RtspServer({"/cam": camera_file}, user="viewer", password="s3cret-pw") as server:
        good, bad = server.url("/cam", "viewer", "s3cret-pw"), server.url("/cam", "viewer", "wrong-pw")
        with CliProcess("run", "--source", f"lobby={good}", "--source", f"door={bad}", "--redis-url", redis_url,
                        "--prefix", prefix) as proc:
            wait_for(lambda: rclient.xlen(detections_key(prefix, "lobby")) > 0, 60, "the camera with credentials")
            proc.wait_for("Unauthorized", 60)  # the one with the wrong password has been refused
            proc.signal(signal.SIGTERM)
            rc = proc.wait(60)
        out, err = proc.stdout, proc.stderr
    events = str(rclient.xrange(events_key(prefix)))
    for text in (out, err, events):
        assert "s3cret-pw" not in text and "wrong-pw" not in text
    assert "rtsp://viewer:***@127.0.0.1" in err
    assert "door" in err and "Unauthorized" in err
    assert rc == 1  # door never came online


def test_wrong_path_is_retried_with_a_clear_error(camera_file: Path, detector: Detector, rclient: redis.Redis,
                                                  prefix: str) -> None:
    with RtspServer({"/cam": camera_file}) as server:
        config = load_config(data={
            "cameras": [{"name": "typo", "url": server.url("/no-such-mount")},
                        {"name": "ok", "url": server.url("/cam")}],
            "redis": {"prefix": prefix},
            "runtime": {"reconnect": FAST_RECONNECT},
        })
        pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
        pipeline.start()
        stats = pipeline.ctx.streams
        wait_for(lambda: stats["typo"].reconnects >= 2 and stats["ok"].published > 10, 30, "retries and frames")
        pipeline.request_stop()
        assert pipeline.wait(timeout=30)
    assert stats["typo"].error is not None and stats["typo"].error.startswith("cannot open:")
    assert stats["typo"].state == "stopped" and stats["typo"].decoded == 0


def udp_sockets_of_this_process() -> set[str]:
    """Inodes of the UDP sockets this process has open (/proc/net/udp{,6} matched against /proc/self/fd)."""
    udp = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            udp |= {line.split()[9] for line in list(f)[1:]}
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    return mine & udp
