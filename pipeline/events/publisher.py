"""Publishing to Redis: the publisher stage (one entry per processed frame) and the event publisher.

Both feed one `Outbox` (pipeline/events/outbox.py): a bounded, ordered buffer drained by a single writer thread, so no
pipeline thread ever waits on Redis and each stream's entries arrive in order, also across a Redis outage.
A frame counts as `published` once Redis has it; a frame the outbox had to drop counts as `dropped`, with the
reason, so decoded == published + dropped holds per camera at the end of a run.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis

from pipeline.events.bus import dedicated_client, describe
from pipeline.config import RedisConfig
from pipeline.events.contract import detections_key, events_key, frame_entry, parse_entry
from pipeline.frame import BatchResult
from pipeline.events.outbox import Entry, Outbox, PublisherStats, json_payload
from pipeline.stage import Channel, RunContext, Stage

__all__ = ["EventPublisher", "PublisherStage", "PublisherStats", "make_outbox"]

log = logging.getLogger(__name__)


class _FrameTag:
    """What the outbox hands back for a frame entry: its camera and object count."""

    __slots__ = ("camera", "objects")

    def __init__(self, camera: str, objects: int) -> None:
        self.camera = camera
        self.objects = objects


def make_outbox(client: redis.Redis, config: RedisConfig, ctx: RunContext | None = None,
                where: str | None = None,
                fence: Callable[[str, dict[str, str]], tuple[str, str] | None] | None = None) -> Outbox:
    """The outbox of one run, writing through a dedicated client (own pool, timeouts, no hidden retries).

    With `ctx`, delivered frames count as published and dropped frames as dropped, per camera. `<prefix>:events` is
    a shared stream (several pipelines or cluster workers may write it); `fence` fences entries (cluster mode).
    """

    def delivered(entries: list[Entry]) -> None:
        if ctx is None:
            return
        per_camera: dict[str, list[int]] = {}  # camera -> [frames, objects]: one counter update per chunk
        for entry in entries:
            tag = entry.tag
            if isinstance(tag, _FrameTag):
                counts = per_camera.setdefault(tag.camera, [0, 0])
                counts[0] += 1
                counts[1] += tag.objects
        for camera, (frames, objects) in per_camera.items():
            ctx.count(camera, "published", frames)
            ctx.count(camera, "objects", objects)

    def dropped(entries: list[Entry], reason: str) -> None:
        frames: dict[str, int] = {}
        events = 0
        for entry in entries:
            if isinstance(entry.tag, _FrameTag):
                frames[entry.tag.camera] = frames.get(entry.tag.camera, 0) + 1
            else:
                events += 1
        if ctx is not None:
            for camera, n in frames.items():
                ctx.drop_count(camera, reason, n)
        log.debug("dropped %d frame and %d event entries: %s", sum(frames.values()), events, reason)

    writer = dedicated_client(client, config.socket_timeout_s, min(config.socket_timeout_s, 5.0))
    return Outbox(
        writer,
        maxlen=config.maxlen,
        max_entries=config.buffer_max_entries,
        max_bytes=config.buffer_max_bytes,
        retry_initial_s=config.retry_initial_s,
        retry_max_s=config.retry_max_s,
        where=where or describe(client),
        on_delivered=delivered,
        on_dropped=dropped,
        mirror=(lambda entry: json_payload(entry, parse_entry)) if config.pubsub else None,
        owns_client=writer is not client,
        shared_keys=[events_key(config.prefix)],
        seq_prefix=f"{config.prefix}:writer:",
        fence=fence,
    )


class PublisherStage(Stage):
    """Hands one entry per processed frame to the outbox; never waits on Redis."""

    def __init__(
        self,
        inbox: Channel[object],
        ctx: RunContext,
        outbox: Outbox,
        label_names: Sequence[str],
        prefix: str = "rpn",
        flush_timeout_s: float = 5.0,
    ) -> None:
        super().__init__("publisher", inbox, None, ctx)
        self.sink = outbox  # not `outbox`: that is the Stage's output channel (none here)
        self.label_names = label_names
        self.prefix = prefix
        self.flush_timeout_s = flush_timeout_s

    def process(self, item: object) -> None:
        assert isinstance(item, BatchResult)
        now = time.time()
        for result in item.results:
            frame = result.frame
            self.sink.put(
                detections_key(self.prefix, frame.stream),
                frame_entry(result, self.label_names, now),
                tag=_FrameTag(frame.stream, len(result.detections)),
                capture_ts=frame.capture_time,
            )
        self.counters.frames_out += len(item.results)

    def flush(self) -> None:
        """End of input: deliver what is buffered (at most `flush_timeout_s`); the rest counts as dropped."""
        self.sink.close(self.flush_timeout_s)

    def stats(self) -> PublisherStats:
        return self.sink.stats()


class EventPublisher:
    """Writes events (camera state changes, track lifecycle) to `<prefix>:events`; callable from any thread."""

    def __init__(self, outbox: Outbox, prefix: str = "rpn") -> None:
        self.outbox = outbox
        self.key = events_key(prefix)

    def publish(self, fields: dict[str, str]) -> None:
        self.outbox.put(self.key, fields)
