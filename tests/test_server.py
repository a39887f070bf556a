"""The HTTP API driven by a real HTTP client against a real uvicorn server, pipeline, detector, Redis and RTSP
camera: add a camera, see it online in the list and in /metrics, remove it; auth; refusals with reasons."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from engines import Detector
from pipeline.config import ConfigError, load_config
from pipeline.runner import Pipeline
from pipeline.api.server import ApiServer
from tests.conftest import run_cli
from tests.rtsp import GSTREAMER_MISSING, RtspServer, gstreamer_available, make_camera_file
from tests.system_deps import needs_system
from tests.waiting import wait_for

FAST_RECONNECT = {"initial_s": 0.2, "max_s": 1.0, "jitter": 0.2, "healthy_s": 0.5}


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus-client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


@contextmanager
def serving(pipeline: Pipeline, token: str | None = None) -> Iterator[httpx.Client]:
    """The pipeline running, with its API on a free port; an HTTP client for it (with the token, if any)."""
    pipeline.start()
    server = ApiServer(pipeline, "127.0.0.1", 0, token)
    server.start()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            yield client
    finally:
        server.stop()
        pipeline.request_stop()
        assert pipeline.wait(timeout=30)


@needs_system(gstreamer_available(), GSTREAMER_MISSING)
def test_api_adds_an_rtsp_camera_sees_it_online_in_list_and_metrics_and_removes_it(
    tmp_path: Path, detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    cam_file = make_camera_file(tmp_path / "cam.h264", frames=50, width=320, height=240, seed=70)
    config = load_config(data={"redis": {"prefix": prefix}, "runtime": {"reconnect": FAST_RECONNECT}})
    pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
    with RtspServer({"/cam": cam_file}, user="viewer", password="pa55word") as rtsp, serving(pipeline) as http:
        assert http.get("/api/cameras").json() == []
        url = rtsp.url("/cam", "viewer", "pa55word")
        r = http.post("/api/cameras", json={"name": "door", "url": url, "read_timeout_s": 3})
        assert r.status_code == 201, r.text
        assert r.headers["location"] == "/api/cameras/door"

        def door() -> dict[str, object]:
            cameras = http.get("/api/cameras").json()
            assert [c["name"] for c in cameras] == ["door"]
            return cameras[0]

        wait_for(lambda: door()["state"] == "online" and door()["processed"] >= 10, 30, "camera online")
        cam = door()
        assert cam["url"] == f"rtsp://viewer:***@127.0.0.1:{rtsp.port}/cam"  # the password never shows
        assert cam["live"] is True and cam["running"] is True and cam["error"] is None
        assert cam["fps"] > 1 and 0 < cam["latency_ms"] < 5000
        assert cam["decoded"] >= cam["processed"] >= 10

        detail = http.get("/api/cameras/door").json()
        assert detail["last_frame"]["width"] == 320 and detail["last_frame"]["height"] == 240
        assert detail["settings"]["read_timeout_s"] == 3
        jpeg = http.get("/api/cameras/door/frame.jpg")
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
        assert Image.open(BytesIO(jpeg.content)).size == (320, 240)

        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        samples = metric_samples(metrics.text)
        door_label = (("camera", "door"),)
        assert samples[("rpn_camera_state", (("camera", "door"), ("state", "online")))] == 1.0
        assert samples[("rpn_camera_state", (("camera", "door"), ("state", "offline")))] == 0.0
        assert samples[("rpn_camera_frames_decoded_total", door_label)] >= 10
        assert samples[("rpn_camera_frames_processed_total", door_label)] >= 10
        assert ("rpn_camera_frames_dropped_total", door_label) in samples
        assert samples[("rpn_camera_fps", door_label)] > 1
        for stage in ("batcher", "detector", "tracker", "view", "publisher"):
            assert ("rpn_stage_queue_depth", (("stage", stage),)) in samples
        assert samples[("rpn_stage_busy_seconds_total", (("stage", "detector"),))] > 0
        assert samples[("rpn_engine_batch_latency_seconds_count", ())] >= 1
        assert samples[("rpn_engine_batch_size_count", ())] >= 1
        assert samples[("rpn_frame_age_seconds_count", ())] >= 10
        assert samples[("rpn_publisher_delivered_entries_total", ())] >= 10
        assert samples[("rpn_publisher_connected", ())] == 1.0
        assert "pa55word" not in metrics.text

        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True

        r = http.delete("/api/cameras/door")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "stopped"
        assert http.get("/api/cameras").json() == []
        assert [t.name for t in threading.enumerate() if t.name == "source-door"] == []
        assert 'camera="door"' not in http.get("/metrics").text
        for path in ("/api/cameras/door", "/api/cameras/door/frame.jpg"):
            assert http.get(path).status_code == 404
        assert http.delete("/api/cameras/door").status_code == 404


def test_token_is_required_and_bad_cameras_are_refused_with_the_reason(
    make_video: Callable[..., Path], tmp_path: Path, detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    token = "t0ken-for-tests"
    roots = [str(tmp_path), str(make_video(10).parent)]  # the API opens local files only under server.media_roots
    config = load_config(data={"redis": {"prefix": prefix}, "server": {"media_roots": roots}})
    pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
    with serving(pipeline, token) as http:
        bare = httpx.Client(base_url=str(http.base_url), timeout=30)
        wrong = httpx.Client(base_url=str(http.base_url), headers={"Authorization": "Bearer nope"}, timeout=30)
        with bare, wrong:
            for path in ("/api/cameras", "/api/cameras/x", "/api/cameras/x/frame.jpg", "/metrics", "/readyz"):
                for client in (bare, wrong):
                    r = client.get(path)
                    assert r.status_code == 401, (path, r.status_code)
                    assert r.headers["www-authenticate"] == "Bearer"
            assert bare.post("/api/cameras", json={"name": "sneaky", "url": str(make_video(10))}).status_code == 401
            assert bare.delete("/api/cameras/sneaky").status_code == 401
            assert bare.get("/healthz").json() == {"status": "ok"}  # liveness stays open
            page = bare.get("/")  # static, holds no data: its scripts send the token
            assert page.status_code == 200 and "<title>" in page.text
        assert http.get("/api/cameras").json() == []  # nothing got added without the token
        assert http.get("/metrics").status_code == 200
        assert http.get("/readyz").status_code == 200

        def refused(body: dict[str, object], code: int, reason: str) -> None:
            r = http.post("/api/cameras", json=body)
            assert r.status_code == code, r.text
            assert reason in r.json()["detail"], r.json()

        refused({"name": "a", "url": "madeup://127.0.0.1/stream"}, 400, "camera 'a': unsupported URL scheme 'madeup'")
        refused({"name": "b", "url": str(tmp_path / "missing.mp4")}, 400, "camera 'b': file not found")
        refused({"name": "c", "url": "rtsp://no-such-host.invalid/stream"}, 400,
                "camera 'c': unknown host 'no-such-host.invalid'")
        refused({"name": "bad name!", "url": str(make_video(10))}, 422, "body.name: use 1-64 letters")
        refused({"name": "d", "url": str(make_video(10)), "colour": "red"}, 422, "body.colour: unknown key")
        refused({"name": "e"}, 422, "body.url: Field required")
        refused({"name": "f", "url": "x", "transport": "carrier-pigeon"}, 422, "body.transport:")
        assert http.get("/api/cameras").json() == []

        clip = make_video(10, seed=71)
        assert http.post("/api/cameras", json={"name": "clip", "url": str(clip)}).status_code == 201
        refused({"name": "clip", "url": str(clip)}, 409, "camera 'clip' already exists")
        done = {"processed": 10, "state": "finished", "running": False}
        wait_for(lambda: done.items() <= http.get("/api/cameras/clip").json().items(), 60, "the clip to be processed")
        # A finished file stays listed with its outcome, and keeps its last frame, until it is deleted.
        first = http.get("/api/cameras/clip/frame.jpg")
        assert first.status_code == 200 and first.headers["x-frame-index"] == "9"
        again = http.get("/api/cameras/clip/frame.jpg", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        assert http.delete("/api/cameras/clip").status_code == 200
        assert http.get("/api/cameras").json() == []

        pipeline.request_stop()
        assert pipeline.wait(timeout=30)
        r = http.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert "pipeline stages not running" in r.json()["reasons"][0]
        r = http.post("/api/cameras", json={"name": "late", "url": str(clip)})
        assert r.status_code == 503 and "stopping" in r.json()["detail"]


def test_http_off_loopback_without_a_token_is_refused(make_video: Callable[..., Path]) -> None:
    result = run_cli("run", "--source", str(make_video(10)), "--http", "0.0.0.0:0", env={"RPN_API_TOKEN": ""})
    assert result.returncode == 2, result.stderr
    assert "binding the HTTP server to 0.0.0.0 (not loopback) needs a token" in result.stderr
    result = run_cli("run", "--source", str(make_video(10)), "--http", "localhost:http")
    assert result.returncode == 2 and "expected [HOST:]PORT" in result.stderr


def test_a_config_file_binding_off_loopback_takes_the_token_from_cli_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("server: {host: 0.0.0.0, port: 8080}\n")
    monkeypatch.delenv("RPN_API_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="needs a token"):
        load_config(path)
    assert load_config(path, api_token="from-cli").server.token.get_secret_value() == "from-cli"
    monkeypatch.setenv("RPN_API_TOKEN", "from-env")
    assert load_config(path).server.token.get_secret_value() == "from-env"
    assert load_config(path, api_token="from-cli").server.token.get_secret_value() == "from-cli"


def test_without_a_token_only_loopback_host_names_are_served(
    detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    pipeline = Pipeline(load_config(data={"redis": {"prefix": prefix}}), detector, rclient, until_sources_end=False)
    with serving(pipeline) as http:
        port = http.base_url.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert http.get("/api/cameras", headers={"Host": host}).status_code == 200, host
        # What a page that rebinds its own name to 127.0.0.1 would send (DNS rebinding).
        for host in (f"attacker.example:{port}", "attacker.example", ""):
            r = http.get("/api/cameras", headers={"Host": host})
            assert r.status_code == 400 and "only loopback names" in r.json()["detail"], host
