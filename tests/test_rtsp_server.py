"""The test RTSP camera server (tests/rtsp_server.py, GStreamer) read by PyAV the way the pipeline reads cameras.

These pin down what the decoder's reconnect logic can rely on: real-time pacing with increasing pts, several
clients per camera, and how a killed, hung, restarted or password-protected camera looks to PyAV.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import av
import av.error
import pytest

from tests.rtsp import GSTREAMER_MISSING, RtspServer, gstreamer_available, make_camera_file, rtsp_options
from tests.system_deps import needs_system

needs_gst = needs_system(gstreamer_available(), GSTREAMER_MISSING)

READ_TIMEOUT = 2.0
TIME_BASE = 1 / 90000  # RTP video clock
FRAME_S = 1 / 25
DISCONNECTED = (av.error.FFmpegError, OSError)  # ExitError is not an OSError, InvalidDataError is a ValueError


def _open(url: str, transport: str = "tcp") -> av.container.InputContainer:
    return av.open(url, options=rtsp_options(transport, READ_TIMEOUT), timeout=(5, READ_TIMEOUT))


def _take(frames: Iterator[av.VideoFrame], n: int) -> list[av.VideoFrame]:
    return [next(frames) for _ in range(n)]


@pytest.fixture(scope="module")
def camera_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_camera_file(tmp_path_factory.mktemp("rtsp") / "cam.h264", frames=50)  # loops every 2 s


@pytest.fixture(scope="module")
def shared_server(camera_file: Path) -> Iterator[RtspServer]:
    with RtspServer({"/cam1": camera_file}) as server:
        yield server


@pytest.fixture
def server(camera_file: Path) -> Iterator[RtspServer]:
    """A server of this test's own, free to be killed or paused."""
    with RtspServer({"/cam1": camera_file}) as server:
        yield server


def test_url_quotes_credentials() -> None:
    s = RtspServer({"cam": "x.h264"}, port=8554)
    assert s.url("/cam") == "rtsp://127.0.0.1:8554/cam"
    assert s.url("cam", "op", "p@ss:w/rd") == "rtsp://op:p%40ss%3Aw%2Frd@127.0.0.1:8554/cam"


@needs_gst
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_reads_camera_in_real_time(shared_server: RtspServer, transport: str) -> None:
    t0 = time.monotonic()
    with _open(shared_server.url("/cam1"), transport) as container:
        frames, arrived = [], []
        for frame in container.decode(video=0):  # 60 frames: past the file's end, across a loop
            frames.append(frame)
            arrived.append(time.monotonic())
            if len(frames) == 60:
                break
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    # FFmpeg's RTSP demuxer gives the very first packet no pts (any server); all later frames have one.
    pts = [f.pts for f in frames[1:]]
    assert None not in pts
    assert all(b > a for a, b in zip(pts, pts[1:])), "pts must strictly increase (DTS->PTS probe, looping)"
    assert all(abs((b - a) * TIME_BASE - FRAME_S) < 2e-3 for a, b in zip(pts, pts[1:]))
    # Real time, not a burst: the last 25 frames span 1 s of pts and arrive over about 1 s of wall clock.
    assert (pts[-1] - pts[-26]) * TIME_BASE == pytest.approx(1.0, abs=0.01)
    assert arrived[-1] - arrived[-26] > 0.5  # (no upper bound: a busy machine only delays them)
    assert arrived[-1] - t0 > 0.8 * 59 * FRAME_S  # frames were produced live after the connection


@needs_gst
def test_two_clients_share_a_camera(shared_server: RtspServer) -> None:
    with _open(shared_server.url("/cam1"), "tcp") as c1, _open(shared_server.url("/cam1"), "udp") as c2:
        d1, d2 = c1.decode(video=0), c2.decode(video=0)
        got1, got2 = [], []
        for _ in range(30):  # the second client joins mid-stream: its first frame is at the next keyframe
            got1.append(next(d1))
            got2.append(next(d2))
    for got in (got1, got2):
        pts = [f.pts for f in got[1:]]
        assert all(b > a for a, b in zip(pts, pts[1:])), "joining clients must not seek the shared pipeline"
        assert got[-1].width == 320


@needs_gst
def test_killed_server_ends_the_reader_and_restart_serves_again(server: RtspServer) -> None:
    port = server.port
    with _open(server.url("/cam1")) as container:
        frames = container.decode(video=0)
        _take(frames, 5)
        server.kill()
        t = time.monotonic()
        try:
            for _ in frames:  # a few buffered frames may still come, then the loop just ends
                assert time.monotonic() - t < 60, "reader still getting frames from a killed server"
        except DISCONNECTED:
            pass  # some FFmpeg versions raise InvalidDataError instead
    with pytest.raises(av.error.ConnectionRefusedError):
        _open(server.url("/cam1"))
    server.restart()
    assert server.port == port
    with _open(server.url("/cam1")) as container:
        assert len(_take(container.decode(video=0), 5)) == 5


@needs_gst
def test_paused_server_times_out_and_resume_serves_again(server: RtspServer) -> None:
    with _open(server.url("/cam1")) as container:
        frames = container.decode(video=0)
        _take(frames, 5)
        server.pause()
        t = time.monotonic()
        with pytest.raises(DISCONNECTED):  # ExitError (timeout tuple) or TimeoutError (timeout option)
            for _ in frames:
                assert time.monotonic() - t < 60, "reader still getting frames from a hung server"
    server.resume()
    with _open(server.url("/cam1")) as container:
        assert len(_take(container.decode(video=0), 5)) == 5


@needs_gst
def test_credentials(camera_file: Path) -> None:
    user, password = "operator", "p@ss:w/rd"
    with RtspServer({"/cam1": camera_file}, user=user, password=password) as server:
        for url in (server.url("/cam1"), server.url("/cam1", user, "wrong")):
            with pytest.raises(av.error.HTTPUnauthorizedError):
                _open(url)
        with _open(server.url("/cam1", user, password)) as container:
            assert next(container.decode(video=0)).width == 320


@needs_gst
def test_start_failure_reports_stderr(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="EXISTING_FILE"):
        RtspServer({"/cam1": tmp_path / "missing.h264"}).start()
