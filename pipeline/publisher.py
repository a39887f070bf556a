"""Publisher stage: one XADD per processed frame to the camera's Redis Stream, pipelined per batch."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from pipeline.events import detections_key, events_key, frame_entry
from pipeline.frame import BatchResult
from pipeline.stage import Channel, RunContext, Stage

log = logging.getLogger(__name__)


@dataclass
class PublisherStats:
    """The publisher's health, for /readyz and /metrics (this publisher keeps no buffer: buffered and max are 0)."""

    connected: bool
    buffered_entries: int
    buffered_bytes: int
    max_entries: int
    max_bytes: int
    delivered_entries: int
    dropped_entries: int
    errors: int


class PublisherStage(Stage):
    def __init__(
        self,
        inbox: Channel[object],
        ctx: RunContext,
        client: redis.Redis,
        label_names: Sequence[str],
        prefix: str = "rpn",
        maxlen: int = 10_000,
    ) -> None:
        super().__init__("publisher", inbox, None, ctx)
        self.client = client
        self.label_names = label_names
        self.prefix = prefix
        self.maxlen = maxlen
        self._failing = False
        self._errors = 0

    def stats(self) -> PublisherStats:
        return PublisherStats(
            connected=not self._failing, buffered_entries=0, buffered_bytes=0, max_entries=0, max_bytes=0,
            delivered_entries=self.counters.frames_out, dropped_entries=self.counters.dropped, errors=self._errors,
        )

    def process(self, item: object) -> None:
        assert isinstance(item, BatchResult)
        pipe = self.client.pipeline(transaction=False)
        publish_ts = time.time()
        for result in item.results:
            key = detections_key(self.prefix, result.frame.stream)
            pipe.xadd(key, frame_entry(result, self.label_names, publish_ts), maxlen=self.maxlen, approximate=True)
        frames = [r.frame for r in item.results]
        try:
            pipe.execute()
        except redis.RedisError as exc:
            self._errors += 1
            if not self._failing:
                log.error("publisher: Redis unavailable (%s); dropping frames until it is back", exc)
            self._failing = True
            self.drop(frames, "redis unavailable")
            return
        if self._failing:
            log.info("publisher: Redis is back")
            self._failing = False
        for result in item.results:
            self.ctx.count(result.frame.stream, "published")
            self.ctx.count(result.frame.stream, "objects", len(result.detections))
        self.counters.frames_out += len(frames)


class EventPublisher:
    """Writes events (camera state changes) to `<prefix>:events`; callable from any thread."""

    def __init__(self, client: redis.Redis, prefix: str = "rpn", maxlen: int = 10_000) -> None:
        self.client = client
        self.key = events_key(prefix)
        self.maxlen = maxlen
        self.failed = 0

    def publish(self, fields: dict[str, str]) -> None:
        try:
            self.client.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
        except redis.RedisError as exc:
            self.failed += 1
            log.error("could not publish %s event of %s: %s", fields.get("type"), fields.get("camera"), exc)
