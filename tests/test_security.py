"""Security of the HTTP API: local files only from `server.media_roots` (symlinks resolved), the token from a file
(RPN_API_TOKEN_FILE, as Kubernetes mounts secrets), repeated failed authentications answered 429 and logged without
the token. The Redis ACLs of docs/deploy.md are tested in tests/test_redis_auth_tls.py."""
from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from engines import Detector
from pipeline.api.server import AUTH_FAILURES_ALLOWED
from pipeline.config import ConfigError, api_token_from_env, load_config
from pipeline.runner import Pipeline
from tests.cli_process import CliProcess
from tests.test_server import serving


def test_files_added_through_the_api_must_lie_under_media_roots(
    make_video: Callable[..., Path], tmp_path: Path, detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    clip = media / "clip.mp4"
    clip.write_bytes(make_video(10, seed=81).read_bytes())
    outside = tmp_path / "private.mp4"
    outside.write_bytes(clip.read_bytes())
    (media / "link.mp4").symlink_to(outside)  # a link inside the root to a file outside it
    (media / "sub").mkdir()
    config = load_config(data={"redis": {"prefix": prefix}, "server": {"media_roots": [str(media)]}})
    pipeline = Pipeline(config, detector, rclient, until_sources_end=False)
    with serving(pipeline, "tok") as http:
        def refused(name: str, url: str) -> str:
            r = http.post("/api/cameras", json={"name": name, "url": url})
            assert r.status_code == 403, (url, r.status_code, r.text)
            return r.json()["detail"]

        assert "outside server.media_roots" in refused("a", str(outside))
        assert "outside server.media_roots" in refused("b", str(media / "link.mp4"))
        assert "outside server.media_roots" in refused("c", str(media / "sub" / ".." / ".." / "private.mp4"))
        assert "outside server.media_roots" in refused("d", f"file:{outside}")
        assert "outside server.media_roots" in refused("e", "/etc/passwd")
        assert "outside server.media_roots" in refused("f", "/dev/zero")
        # A missing file outside the roots is refused alike: the API is no oracle of which files exist.
        assert "outside server.media_roots" in refused("g", str(tmp_path / "missing.mp4"))
        r = http.post("/api/cameras", json={"name": "h", "url": "rtsp://no-such-host.invalid/x"})
        assert r.status_code == 400 and "unknown host" in r.json()["detail"]  # network URLs are not limited
        r = http.post("/api/cameras", json={"name": "inside", "url": str(media / "sub" / ".." / "clip.mp4")})
        assert r.status_code == 201, r.text
        assert [c["name"] for c in http.get("/api/cameras").json()] == ["inside"]


def test_without_media_roots_the_api_opens_no_local_file(
    make_video: Callable[..., Path], detector: Detector, rclient: redis.Redis, prefix: str
) -> None:
    pipeline = Pipeline(load_config(data={"redis": {"prefix": prefix}}), detector, rclient, until_sources_end=False)
    with serving(pipeline) as http:
        r = http.post("/api/cameras", json={"name": "clip", "url": str(make_video(10))})
        assert r.status_code == 403 and "no server.media_roots configured" in r.json()["detail"], r.text
        assert http.get("/api/cameras").json() == []


def test_api_token_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RPN_API_TOKEN", raising=False)
    secret = tmp_path / "token"
    secret.write_text("from-file-7781\n")  # Kubernetes secrets often end in a newline
    monkeypatch.setenv("RPN_API_TOKEN_FILE", str(secret))
    assert api_token_from_env() == "from-file-7781"
    path = tmp_path / "p.yaml"
    path.write_text("server: {host: 0.0.0.0, port: 8080}\n")
    assert load_config(path).server.token.get_secret_value() == "from-file-7781"
    monkeypatch.setenv("RPN_API_TOKEN", "from-env")  # the variable itself wins
    assert api_token_from_env() == "from-env"
    monkeypatch.delenv("RPN_API_TOKEN")
    secret.write_text("\n")
    with pytest.raises(ConfigError, match=f"RPN_API_TOKEN_FILE {secret}: the file is empty"):
        api_token_from_env()
    monkeypatch.setenv("RPN_API_TOKEN_FILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_config(path)


def test_cli_takes_the_token_file_and_rate_limits_failed_authentications(
    make_video: Callable[..., Path], tmp_path: Path, redis_url: str, prefix: str
) -> None:
    token = "k8s-secret-token-5521"
    secret = tmp_path / "token"
    secret.write_text(token + "\n")
    missing = CliProcess("run", "--source", str(make_video(10)), "--http", "0.0.0.0:0", "--redis-url", redis_url,
                         env={"RPN_API_TOKEN": "", "RPN_API_TOKEN_FILE": str(tmp_path / "absent")})
    assert missing.wait(120) == 2
    assert f"RPN_API_TOKEN_FILE {tmp_path / 'absent'}: cannot read" in missing.stderr

    with CliProcess("run", "--keep-running", "--http", "127.0.0.1:0", "--redis-url", redis_url, "--prefix", prefix,
                    env={"RPN_API_TOKEN": "", "RPN_API_TOKEN_FILE": str(secret)}) as proc:
        base = proc.http_base()
        good = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        bad = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token[:-1]}X"}, timeout=30)
        with good, bad:
            assert good.get("/api/cameras").status_code == 200
            for _ in range(AUTH_FAILURES_ALLOWED):
                assert bad.get("/api/cameras").status_code == 401
            r = bad.get("/api/cameras")
            assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
            assert "too many failed authentications from 127.0.0.1" in r.json()["detail"]
            # While limited, even the right token is refused: guessing cannot go on at full speed.
            assert good.get("/api/cameras").status_code == 429
            assert good.get("/healthz").status_code == 200
        proc.wait_for(f"API: failed authentication from 127.0.0.1 on GET /api/cameras ({AUTH_FAILURES_ALLOWED} in")
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr
        assert token not in proc.stderr + proc.stdout
        assert token[:-1] not in proc.stderr + proc.stdout
