"""HTTP cameras for real: a live HLS playlist and an MJPEG stream (multipart/x-mixed-replace), each served by a
local HTTP server (tests/http_camera.py) that is killed and restarted mid-run, carrying real footage."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import pytest
import redis

from engines import Detector
from pipeline.config import load_config
from pipeline.events.contract import detections_key, parse_entry
from pipeline.runner import Pipeline
from pipeline.sources.decoder import PermanentSourceError, SourceSpec, check_source, demuxer_options, read_timeout
from pipeline.sources.urls import guess_format
from tests.http_camera import HttpCamera
from tests.test_rtsp_cameras import FAST_RECONNECT, camera_events, wait_for

ENGINE_BUSY = "engine busy: oldest frame dropped"


@pytest.fixture(scope="module")
def vtest_jpegs(vtest_avi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20 frames of vtest.avi as JPEG files (768x576), encoded by FFmpeg's MJPEG encoder."""
    out = tmp_path_factory.mktemp("jpegs")
    with av.open(str(vtest_avi)) as source:
        encoder = av.CodecContext.create("mjpeg", "w")
        encoder.width, encoder.height, encoder.pix_fmt = 768, 576, "yuvj420p"
        encoder.time_base = source.streams.video[0].time_base
        for i, frame in enumerate(source.decode(video=0)):
            if i == 20:
                break
            packets = encoder.encode(frame.reformat(format="yuvj420p"))
            (out / f"{i:03d}.jpg").write_bytes(b"".join(bytes(p) for p in packets))
    return out


def _run_through_an_outage(camera: HttpCamera, url: str, rclient: redis.Redis, prefix: str, detector: Detector
                           ) -> tuple[Pipeline, list[dict[str, object]], int]:
    """Run one camera; once it publishes, kill its server, restart it, and wait until it publishes again.
    Returns the pipeline (stopped), its entries, and the index of the first entry after the outage."""
    config = load_config(data={
        "cameras": [{"name": "cam", "url": url, "read_timeout_s": 3}],
        "redis": {"prefix": prefix},
        "runtime": {"reconnect": FAST_RECONNECT},
    })
    pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
    pipeline.start()
    stats = pipeline.ctx.streams
    try:
        wait_for(lambda: stats["cam"].state == "online" and stats["cam"].published >= 10, 60, "camera online")
        camera.kill()
        wait_for(lambda: stats["cam"].state == "offline", 20, "the outage to be noticed")
        first_after = stats["cam"].decoded  # frame index of the first frame after the outage
        wait_for(lambda: stats["cam"].reconnects >= 1, 10, "a reconnection attempt while the server is down")
        camera.restart()
        wait_for(lambda: stats["cam"].state == "online" and _published_since(rclient, prefix, first_after) >= 10, 60,
                 "the camera back online")
    finally:
        pipeline.request_stop()
        assert pipeline.wait(timeout=30)
    got = [parse_entry(i, f) for i, f in rclient.xrange(detections_key(prefix, "cam"))]
    before = next(i for i, e in enumerate(got) if e["frame"] >= first_after)
    return pipeline, got, before


def _published_since(client: redis.Redis, prefix: str, frame: int) -> int:
    return sum(int(f["frame"]) >= frame for _, f in client.xrange(detections_key(prefix, "cam")))


def _check_like_a_camera(pipeline: Pipeline, got: list[dict[str, object]], before: int, rclient: redis.Redis,
                         prefix: str, size: tuple[int, int]) -> None:
    assert camera_events(rclient, prefix, "cam") == [
        ("starting", "connecting"), ("connecting", "online"), ("online", "offline"), ("offline", "online")]
    s = pipeline.report().streams["cam"]
    assert s["decoded"] == s["published"] + s["dropped"] and s["reconnects"] >= 1
    assert s["drop_reasons"].get(ENGINE_BUSY, 0) > 0, s["drop_reasons"]  # the engine lagged: oldest frames dropped
    assert {(e["width"], e["height"]) for e in got} == {size}
    frames = [e["frame"] for e in got]
    assert frames == sorted(set(frames))
    pts = [e["pts"] for e in got]
    assert all(b > a for a, b in zip(pts, pts[1:])), "stream time went back"  # also across the reconnect
    assert pts[before] - pts[before - 1] > 0.5, "the outage shows as a gap in stream time"


def test_live_hls_playlist_behaves_like_an_rtsp_camera(
    bikes_mp4: Path, tmp_path: Path, detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    with HttpCamera("hls", "--video", str(bikes_mp4), "--dir", str(tmp_path / "hls"), "--segment-s", "1") as camera:
        pipeline, got, before = _run_through_an_outage(camera, camera.url("live.m3u8"), rclient, prefix, detector)
    _check_like_a_camera(pipeline, got, before, rclient, prefix, (640, 272))
    # A live playlist is read a few segments behind its end: each connection starts with a burst, which the tiny
    # live queue thins out (checked above); within a connection the camera's own 25 fps timestamps are kept.
    steps = [round(b["pts"] - a["pts"], 6) for a, b in zip(got[:before], got[1:before])
             if b["frame"] == a["frame"] + 1]
    assert steps and set(steps) == {0.04}, steps


def test_mjpeg_over_http_behaves_like_an_rtsp_camera(
    vtest_jpegs: Path, detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    # 200 frames/s of 768x576: more than the engine can take, so the live queue must drop the oldest frames.
    with HttpCamera("mjpeg", "--jpegs", str(vtest_jpegs), "--fps", "200") as camera:
        pipeline, got, before = _run_through_an_outage(camera, camera.url("video.mjpg"), rclient, prefix, detector)
    _check_like_a_camera(pipeline, got, before, rclient, prefix, (768, 576))


@pytest.mark.parametrize("kind", ["hls", "mjpeg"])
def test_hung_http_camera_is_noticed_and_recovers(kind: str, bikes_mp4: Path, vtest_jpegs: Path, tmp_path: Path,
                                                   detector: Detector, rclient: redis.Redis, prefix: str) -> None:
    """The timeouts are set: a server that stops answering (SIGSTOP) is declared offline, not waited on for ever."""
    if kind == "hls":
        args, path = ("hls", "--video", str(bikes_mp4), "--dir", str(tmp_path / "hls")), "live.m3u8"
    else:
        args, path = ("mjpeg", "--jpegs", str(vtest_jpegs), "--fps", "10"), "video.mjpg"
    with HttpCamera(*args) as camera:
        config = load_config(data={
            "cameras": [{"name": "cam", "url": camera.url(path), "read_timeout_s": 3}],
            "redis": {"prefix": prefix},
            "runtime": {"reconnect": FAST_RECONNECT},
        })
        pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
        pipeline.start()
        stats = pipeline.ctx.streams
        try:
            wait_for(lambda: stats["cam"].state == "online" and stats["cam"].published >= 10, 60, "camera online")
            camera.pause()
            try:
                wait_for(lambda: stats["cam"].state == "offline", 20, "the hang to be noticed")
            finally:
                camera.resume()
            seen = stats["cam"].decoded
            wait_for(lambda: stats["cam"].state == "online" and stats["cam"].decoded > seen + 5, 60, "recovery")
        finally:
            pipeline.request_stop()
            assert pipeline.wait(timeout=30)
    assert camera_events(rclient, prefix, "cam")[-2:] == [("online", "offline"), ("offline", "online")]
    got = [parse_entry(i, f) for i, f in rclient.xrange(detections_key(prefix, "cam"))][:10]
    per_frame = (got[-1]["pts"] - got[0]["pts"]) / (got[-1]["frame"] - got[0]["frame"])
    if kind == "hls":
        assert round(per_frame, 6) == 0.04  # the camera's own 25 fps timestamps
    else:  # MJPEG has none (FFmpeg would count frames at 25 fps): timed by arrival, 10 fps here
        assert 0.07 < per_frame < 0.15, per_frame


@pytest.mark.parametrize(("url", "fmt"), [
    ("http://cam.local/live/stream.m3u8", "hls"),
    ("https://user:pw@cdn.example/path/index.M3U8?token=abc", "hls"),
    ("http://192.0.2.7/video.mjpg", "mpjpeg"),
    ("http://192.0.2.7/axis-cgi/mjpg/video.cgi?resolution=640x480", "mpjpeg"),
    ("http://192.0.2.7:8080/?action=stream", "mpjpeg"),
    ("http://192.0.2.7/stream.mp4", None),
    ("rtsp://192.0.2.7/stream.m3u8", None),
    ("/dev/video0", "v4l2"),
    ("clip.m3u8", None),
])
def test_camera_urls_imply_their_input_format(url: str, fmt: str | None) -> None:
    assert guess_format(url) == fmt


def test_http_cameras_keep_timeouts_and_the_format_can_be_set() -> None:
    hls = SourceSpec("a", "http://cam/x.m3u8", read_timeout_s=6)
    fmt, options = demuxer_options(hls)
    assert fmt == "hls" and options["rw_timeout"] == "6000000" and options["probesize"] == "500000"
    assert read_timeout(hls, fmt) == 6  # one read waits for the next segment
    mjpeg = SourceSpec("b", "http://cam/live", format="mpjpeg", options={"rw_timeout": "1000000"})
    fmt, options = demuxer_options(mjpeg)
    assert fmt == "mpjpeg" and options["rw_timeout"] == "1000000"  # the user's options win
    assert read_timeout(mjpeg, fmt) == 10  # one timed-out read fails at once (measured)
    rtsp = SourceSpec("c", "rtsp://cam/live", read_timeout_s=4)
    assert read_timeout(rtsp, demuxer_options(rtsp)[0]) == 2  # RTSP fails at the second timed-out read


def test_unknown_input_format_is_refused_up_front() -> None:
    with pytest.raises(PermanentSourceError, match="^unknown input format 'mjpg'$"):
        check_source(SourceSpec("door", "http://127.0.0.1:9/live", format="mjpg"))
    check_source(SourceSpec("door", "http://127.0.0.1:9/live", format="mpjpeg"))  # known: fine, even if offline


def test_unknown_input_format_fails_that_camera_only(make_video: Callable[..., Path], detector: Detector, rclient: redis.Redis,
                                                     prefix: str) -> None:
    config = load_config(data={
        "cameras": [{"name": "bad", "url": "http://127.0.0.1:9/live", "format": "nosuchformat"},
                    {"name": "good", "url": str(make_video(10, seed=60))}],
        "redis": {"prefix": prefix},
    })
    pipeline = Pipeline(config, detector, rclient)
    pipeline.start()
    assert pipeline.wait(timeout=60)
    s = pipeline.report().streams
    assert s["bad"]["state"] == "failed" and s["bad"]["error"] == "unknown input format 'nosuchformat'"
    assert s["good"]["published"] == 10
