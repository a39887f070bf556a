"""Subscriber client: read published frames from Redis, as dicts.

```python
from pipeline.client import DetectionSubscriber
sub = DetectionSubscriber.from_url("redis://localhost:6379/0", cameras=["lobby"])
for entry in sub.iter(timeout_s=5):
    print(entry["camera"], entry["frame"], entry["objects"])
```
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import redis

from pipeline.events import detections_key, parse_frame_entry


class DetectionSubscriber:
    """Follows the detections streams of some cameras (or all, discovering new ones as they appear)."""

    def __init__(
        self, client: redis.Redis, prefix: str = "rpn", cameras: Sequence[str] | None = None, from_start: bool = False
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.cameras = list(cameras) if cameras else None
        self.from_start = from_start
        self._positions: dict[str, str] = {}  # stream key -> id of the last entry read
        self._last_scan = 0.0
        self._first_scan = True  # streams found by the first scan start at their end unless from_start

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> DetectionSubscriber:
        return cls(redis.Redis.from_url(url, decode_responses=True), **kwargs)  # type: ignore[arg-type]

    def _discover(self) -> None:
        if self.cameras is not None:
            keys = [detections_key(self.prefix, c) for c in self.cameras]
        elif self._first_scan or time.monotonic() - self._last_scan >= 1.0:
            self._last_scan = time.monotonic()
            keys = list(self.client.scan_iter(match=detections_key(self.prefix, "*"), _type="stream"))
        else:
            return
        first, self._first_scan = self._first_scan, False
        for key in keys:
            if key in self._positions:
                continue
            if self.from_start or not first:
                self._positions[key] = "0-0"  # a camera that appeared after we started: read all of it
            else:
                last = self.client.xrevrange(key, count=1)
                self._positions[key] = last[0][0] if last else "0-0"

    def read(self, block_ms: int = 1000, count: int = 100) -> list[dict[str, object]]:
        """Entries newer than the last read, oldest first per camera; waits up to `block_ms` for some."""
        self._discover()
        if not self._positions:
            time.sleep(block_ms / 1000)
            return []
        reply = self.client.xread(self._positions, count=count, block=block_ms)
        entries = []
        for key, items in reply or []:
            for entry_id, fields in items:
                self._positions[key] = entry_id
                entries.append(parse_frame_entry(entry_id, fields))
        return entries

    def iter(self, timeout_s: float | None = None) -> Iterator[dict[str, object]]:
        """Yield entries as they arrive; stop after `timeout_s` seconds without any (None: never)."""
        idle_since = time.monotonic()
        while True:
            entries = self.read(block_ms=500)
            if entries:
                idle_since = time.monotonic()
                yield from entries
            elif timeout_s is not None and time.monotonic() - idle_since >= timeout_s:
                return
