"""Subscriber client: read what the pipeline publishes (frames per camera, or events) as typed dicts.

```python
import logging
from pipeline.client import Subscriber
sub = Subscriber.from_url("redis://localhost:6379/0", cameras=["lobby"])
for entry in sub.iter(timeout_s=5):          # stops after 5 s without entries; None: never
    logging.info("%s frame %s: %d objects", entry["camera"], entry["frame"], len(entry["objects"]))
```

Two ways to read (docs/events.md, "Reading"):

- Alone (default): every subscriber sees every entry. It starts at the end of the streams (new entries only),
  at the start (`from_start=True`) or at a point in time (`since=`), and keeps its position in memory.
- In a consumer group (`group=`, `consumer=`): the group's consumers share the entries, Redis remembers what each
  consumer was given, and an entry stays pending until acknowledged. A consumer that restarts under the same name
  first gets its own pending entries again, then new ones: at-least-once delivery, with duplicates only of
  entries it had not acknowledged. `iter()` acknowledges an entry when the next one is asked for (so once the loop
  body has handled it); `iter(auto_ack=False)` leaves it to you: call `ack(entry)` when done with it.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import redis

from pipeline.events.contract import detections_key, events_key, parse_entry

log = logging.getLogger(__name__)

_MAX_SEQ = 2**64 - 1
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_since(text: str, now: float | None = None) -> float:
    """A point in time as Unix seconds, from ISO 8601 (`2026-11-24T10:00:00Z`; no offset: local time), a
    duration ago (`90s`, `10m`, `2h`, `1d`, `1h30m`) or Unix seconds (`1795472042.5`). Raises ValueError."""
    text = text.strip()
    now = time.time() if now is None else now
    match = _DURATION.match(text)
    if text and match and any(match.groups()):
        d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
        return now - timedelta(days=d, hours=h, minutes=m, seconds=s).total_seconds()
    if re.fullmatch(r"\d{9,}(\.\d+)?", text):
        return float(text)
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2026-11-24T10:00:00Z), a duration ago (90s, 10m, 2h, 1d) "
            "or Unix seconds"
        ) from None
    return stamp.timestamp()  # naive: local time


def since_id(since: float | datetime) -> str:
    """The stream id just before `since`: reading after it yields the entries published at or after `since`."""
    seconds = since.timestamp() if isinstance(since, datetime) else float(since)
    ms = int(seconds * 1000)
    return f"{ms - 1}-{_MAX_SEQ}" if ms > 0 else "0-0"


class Subscriber:
    """Follows the detections streams of some cameras (or all, discovering new ones), or the events stream."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "rpn",
        cameras: Sequence[str] | None = None,
        from_start: bool = False,
        *,
        since: float | datetime | None = None,
        events: bool = False,
        group: str | None = None,
        consumer: str | None = None,
        types: Sequence[str] | None = None,
    ) -> None:
        """`events`: read `<prefix>:events` instead of frames (`cameras` then filters events by camera, `types` by
        event type, e.g. ["line_cross"]).
        `since`: Unix seconds or a datetime. `group` needs `consumer`, a name stable across restarts."""
        if (group is None) != (consumer is None):
            raise ValueError("a consumer group needs both a group name and a consumer name")
        if from_start and since is not None:
            raise ValueError("from_start and since exclude each other")
        self.client = client
        self.prefix = prefix
        self.cameras = list(cameras) if cameras else None
        self.events = events
        if types and not events:
            raise ValueError("filtering by event type needs events=True")
        self.types = set(types) if types else None
        self.group = group
        self.consumer = consumer
        self.start_id = "0-0" if from_start else since_id(since) if since is not None else None  # None: the end
        self._positions: dict[str, str] = {}  # stream key -> last id read (alone) or pending cursor (group)
        self._pending: set[str] = set()  # group: keys whose own pending entries are still being re-read
        self._last_scan = 0.0
        self._first_scan = True  # streams found by the first scan start at `start_id`; later ones at their start
        self._retry_s = 0.0

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> Subscriber:
        return cls(redis.Redis.from_url(url, decode_responses=True), **kwargs)  # type: ignore[arg-type]

    # --- streams -----------------------------------------------------------------------------------------------------
    def _discover(self) -> None:
        if self.events:
            keys = [events_key(self.prefix)]
        elif self.cameras is not None:
            keys = [detections_key(self.prefix, c) for c in self.cameras]
        elif self._first_scan or time.monotonic() - self._last_scan >= 1.0:
            self._last_scan = time.monotonic()
            keys = sorted(self.client.scan_iter(match=detections_key(self.prefix, "*"), _type="stream"))
        else:
            return
        first, self._first_scan = self._first_scan, False
        for key in keys:
            if key not in self._positions:
                self._open(key, first)

    def _open(self, key: str, first: bool) -> None:
        start = self.start_id if first else "0-0"  # a camera that appeared after we started: all of it
        if self.group is None:
            if start is None:
                last = self.client.xrevrange(key, count=1)
                start = last[0][0] if last else "0-0"
            self._positions[key] = start
            return
        try:
            self.client.xgroup_create(key, self.group, id=start or "$", mkstream=True)
            log.info("created consumer group %r on %s at %s", self.group, key, start or "the end")
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            if first and self.start_id is not None:
                log.info("consumer group %r on %s exists: resuming where it left off (the start position only "
                         "applies when a group is created)", self.group, key)
        self._positions[key] = "0-0"
        self._pending.add(key)

    # --- reading -----------------------------------------------------------------------------------------------------
    def read(self, block_ms: int = 1000, count: int = 100) -> list[dict[str, object]]:
        """Entries newer than the last read, oldest first per stream; waits up to `block_ms` for some.

        In a group, this consumer's unacknowledged entries from before come first.
        """
        self._discover()
        if not self._positions:
            time.sleep(block_ms / 1000)
            return []
        if self.group is None:
            reply = self.client.xread(self._positions, count=count, block=block_ms)
            return self._decode(reply, advance=True)
        try:
            if self._pending:
                entries = self._read_pending(count)
                if entries or self._pending:
                    return entries
            reply = self.client.xreadgroup(self.group, self.consumer, {k: ">" for k in self._positions},
                                           count=count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group %r is gone (Redis restarted without its data?): creating it again", self.group)
            self._positions.clear()
            self._pending.clear()
            return []
        return self._decode(reply, advance=False)

    def _read_pending(self, count: int) -> list[dict[str, object]]:
        """Re-read this consumer's own pending entries (delivered before, never acknowledged)."""
        streams = {k: self._positions[k] for k in sorted(self._pending)}
        reply = self.client.xreadgroup(self.group, self.consumer, streams, count=count)
        got = {key: items for key, items in reply or []}
        for key in streams:
            items = got.get(key) or []
            if not items:
                self._pending.discard(key)  # caught up: new entries from now on
            else:
                self._positions[key] = items[-1][0]
        return self._decode(reply, advance=False)

    def _decode(self, reply: object, advance: bool) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        skipped: dict[str, list[str]] = {}
        for key, items in reply or []:  # type: ignore[attr-defined]
            for entry_id, fields in items:
                if advance:
                    self._positions[key] = entry_id
                if not fields or (self.events and self.cameras and fields.get("camera") not in self.cameras) or (
                        self.types is not None and fields.get("type") not in self.types):
                    skipped.setdefault(key, []).append(entry_id)  # trimmed away while pending, or filtered out
                    continue
                entry = parse_entry(entry_id, fields)
                entry["stream"] = key
                entries.append(entry)
        if self.group is not None:
            for key, ids in skipped.items():
                self.client.xack(key, self.group, *ids)
        return entries

    def ack(self, *entries: dict[str, object]) -> int:
        """Acknowledge handled entries (group mode); returns how many Redis acknowledged."""
        if self.group is None or not entries:
            return 0
        by_key: dict[str, list[str]] = {}
        for entry in entries:
            by_key.setdefault(str(entry["stream"]), []).append(str(entry["id"]))
        return sum(int(self.client.xack(key, self.group, *ids)) for key, ids in by_key.items())

    def iter(self, timeout_s: float | None = None, auto_ack: bool = True, block_ms: int = 500,
             count: int = 100) -> Iterator[dict[str, object]]:
        """Yield entries as they arrive; stop after `timeout_s` seconds without any (None: never).

        In a group with `auto_ack`, an entry is acknowledged once the next one is asked for; entries are read
        `count` at a time, so a reader that stops early leaves at most that many delivered but unacknowledged.
        Redis going away is waited out (retrying with backoff); the position is kept.
        """
        idle_since = time.monotonic()
        handled: list[dict[str, object]] = []
        try:
            while True:
                if handled:
                    self.ack(*handled)
                    handled.clear()
                entries = self._read_retrying(block_ms, count)
                if entries:
                    idle_since = time.monotonic()
                    for entry in entries:
                        yield entry
                        if auto_ack:
                            handled.append(entry)  # the caller asked for more: it is done with this one
                elif timeout_s is not None and time.monotonic() - idle_since >= timeout_s:
                    return
        finally:
            if handled:
                try:
                    self.ack(*handled)
                except redis.RedisError as exc:
                    log.warning("could not acknowledge %d entries (they will be delivered again): %s",
                                len(handled), exc)

    def _read_retrying(self, block_ms: int, count: int) -> list[dict[str, object]]:
        try:
            entries = self.read(block_ms=block_ms, count=count)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not self._retry_s:
                log.warning("Redis unavailable (%s): retrying", exc)
            self._retry_s = min(max(self._retry_s * 2, 0.25), 5.0)
            time.sleep(self._retry_s)
            return []
        if self._retry_s:
            log.info("Redis back: reading on")
            self._retry_s = 0.0
        return entries


#: The original name, for frames only; same class.
DetectionSubscriber = Subscriber

__all__ = ["DetectionSubscriber", "Subscriber", "parse_since", "since_id"]
