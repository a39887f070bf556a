"""A bounded, ordered outbox between the pipeline and Redis, drained by one writer thread.

Producers (the publisher stage, event callbacks from any thread) `put` entries and return at once: no pipeline
thread ever waits on Redis. One writer thread sends entries in the order they were put, as pipelined XADDs in
chunks, and sends a chunk only after the previous one has been answered, so each stream's entries arrive in order.

While Redis is unreachable the entries wait, up to `max_entries` and `max_bytes`; beyond either bound the oldest
waiting entry is dropped and counted. The writer retries with exponential backoff and jitter, logs once when Redis
goes away and once when the backlog is delivered.

Delivery is exactly-once per entry that is delivered: every entry gets an explicit stream id `<ms>-<seq>` when it
is put (wall-clock milliseconds, increasing per stream). If a connection breaks while a chunk is in flight, some
of its XADDs may have been applied; the chunk is re-sent with the same ids, Redis refuses the ids it already has
("equal or smaller than the target stream top item"), and the writer confirms with XRANGE that those entries are
there. Entries whose fate is unknown in this way are never dropped by the bound: they stay until Redis answers.
If a stream's top id is ahead of ours (another writer, or the clock was set back), the waiting entries of that
stream are renumbered after it.

Shared streams (`shared_keys`, e.g. `<prefix>:events`, written by every worker of a cluster) get Redis-assigned ids
(`*`) instead, so concurrent writers never conflict; exactly-once on re-send is kept by a per-writer sequence number
that a Lua script checks and records atomically with the XADD (`<seq_prefix><writer>`, expiring after a day).

Fencing (cluster mode): `fence(key, fields)` may name an owner key and the token this writer holds for an entry; the
same script appends it only while Redis still holds that token there, else the entry is refused ("FENCED") and
counted as dropped under `FENCED_REASON`: a worker whose placement was revoked never writes again.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from redis.connection import AbstractConnection

from pipeline.events.contract import parse_stream_id

log = logging.getLogger(__name__)

# Errors that say "not now" rather than "never": the entry is retried after a backoff.
_TRANSIENT = ("OOM", "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "NOREPLICAS", "CLUSTERDOWN", "NOAUTH")
_ID_TOO_SMALL = "equal or smaller than the target stream top item"
_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
FENCED_REASON = "fenced: placement revoked"
_FENCED = "FENCED"
# KEYS: stream, owner key (or ""), writer sequence key (or ""). ARGV: token (or ""), id, maxlen (or ""), writer
# sequence number (or ""), then field, value, ... The checks and the XADD are one atomic step.
APPEND_SCRIPT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. KEYS[1] .. ': ' .. KEYS[2] .. ' no longer holds ' .. ARGV[1])
end
if ARGV[4] ~= '' and tonumber(redis.call('GET', KEYS[3]) or '-1') >= tonumber(ARGV[4]) then
  return 'DUP'
end
local r
if ARGV[3] ~= '' then
  r = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], ARGV[2], unpack(ARGV, 5))
else
  r = redis.pcall('XADD', KEYS[1], ARGV[2], unpack(ARGV, 5))
end
if type(r) == 'table' and r.err then return r end
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'EX', 86400) end
return r
"""


@dataclass(frozen=True)
class PublisherStats:
    """The publisher's view of Redis, for metrics and readiness checks."""

    connected: bool  # the last exchange with Redis succeeded
    buffered_entries: int  # waiting to be delivered (including a chunk in flight)
    buffered_bytes: int
    max_entries: int  # the bounds beyond which the oldest waiting entries are dropped
    max_bytes: int
    delivered_entries: int  # written to Redis since the start
    dropped_entries: int  # never written: buffer full, rejected by Redis, or undelivered at shutdown
    errors: int  # failed exchanges with Redis (connection errors, timeouts, rejected commands)


@dataclass(slots=True)
class Entry:
    """One stream entry waiting for Redis."""

    key: str
    fields: dict[str, str]
    id: str
    size: int  # bytes of key, field names and values (UTF-8)
    tag: object = None  # the producer's, handed back in on_delivered / on_dropped
    capture_ts: float | None = None  # frames: `publish_ts` and `latency_ms` are stamped when sent
    fence: tuple[str, str] | None = None  # (owner key, token): written only while Redis holds the token there
    seq: int | None = None  # shared streams: this writer's sequence number (the id is `*`)


@dataclass
class _Outage:
    since: float  # time.monotonic()
    dropped_before: int
    reported_full: bool = False
    backlog: int | None = None  # entries still to deliver once Redis answers again
    delivered: int = 0


def entry_size(key: str, fields: dict[str, str]) -> int:
    """Bytes of the key, field names and values (UTF-8): what the byte bound counts."""
    size = len(key)
    try:
        for name, value in fields.items():
            size += len(name) + (len(value) if value.isascii() else len(value.encode()))
    except AttributeError:
        raise TypeError(f"stream entry fields must be strings: {fields!r}") from None
    return size


class Outbox:
    """Bounded FIFO of stream entries plus the thread that writes them to Redis; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        maxlen: int | None = 10_000,
        max_entries: int = 100_000,
        max_bytes: int = 64 * 2**20,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        chunk_entries: int = 500,
        chunk_bytes: int = 2**20,
        where: str = "redis",
        on_delivered: Callable[[list[Entry]], None] | None = None,
        on_dropped: Callable[[list[Entry], str], None] | None = None,
        mirror: Callable[[Entry], str] | None = None,
        health_check_s: float = 2.0,
        owns_client: bool = False,
        shared_keys: Sequence[str] = (),
        seq_prefix: str = "rpn:writer:",
        fence: Callable[[str, dict[str, str]], tuple[str, str] | None] | None = None,
    ) -> None:
        """`owns_client`: disconnect `client` at close (a client made for this outbox). `shared_keys`: streams other
        writers append to as well; `fence`: see the module docstring."""
        self.client = client
        self.shared_keys = frozenset(shared_keys)
        self.writer_id = uuid.uuid4().hex[:16]
        self._seq_key = f"{seq_prefix}{self.writer_id}"
        self._seq = 0
        self.fence = fence
        self._script = client.register_script(APPEND_SCRIPT)
        self.owns_client = owns_client
        self.maxlen = maxlen
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        # Entries in flight cannot be dropped, so a chunk is kept well below the bound.
        self.chunk_entries = max(1, min(chunk_entries, max_entries // 4))
        self.chunk_bytes = chunk_bytes
        self.where = where  # for log lines: a URL without password
        self.on_delivered = on_delivered
        self.on_dropped = on_dropped
        self.mirror = mirror  # Pub/Sub: payload to PUBLISH on the entry's key, fire and forget
        self.health_check_s = health_check_s
        lock = threading.RLock()  # guards all state below
        self._cond = threading.Condition(lock)  # progress: wait_idle, close
        self._work = threading.Condition(lock)  # wakes an idle writer
        self._queue: deque[Entry] = deque()
        # The chunk being sent, or sent when the connection broke: maybe written, so never dropped for the bound.
        self._inflight: list[Entry] = []
        self._bytes = 0  # of queue + inflight
        self._last_ids: dict[str, tuple[int, int]] = {}
        self._delivered = 0
        self._dropped = 0
        self._dropped_by_reason: dict[str, int] = {}
        self._errors = 0
        self._dropped_at_contact = 0  # drops up to the last good exchange: later ones belong to an outage
        self.confirmed_on_resend = 0  # entries a re-sent chunk found already written (not duplicated)
        self._acked: dict[str, str] = {}  # per stream, the newest id Redis acknowledged
        self.went_backwards = 0  # streams Redis came back without (restarted empty): acknowledged entries lost there
        # redis-py's pool silently replaces a connection the server closed, so a server restarted between two writes
        # looks like no outage at all. Its connect hook tells us of every new connection: Redis may have restarted.
        self._reconnected = False
        client.connection_pool.connection_kwargs["redis_connect_func"] = self._on_connect
        self._connected = False
        self._outage: _Outage | None = None
        self._closing = False
        self._abandoned = False
        self._wake = threading.Event()  # cuts a backoff sleep short (close)
        self._full_logged = -1e9  # time.monotonic() of the last "buffer full" warning outside an outage
        self._rejected_logged: dict[str, float] = {}  # error message -> time.monotonic() it was last logged
        self._rejected_count: dict[str, int] = {}
        self._last_contact = 0.0
        self._rng = random.Random()
        self._backoff = retry_initial_s
        self._thread = threading.Thread(target=self._run, name="redis-writer", daemon=True)
        self._started = False

    # --- producer side: any thread, never waits on Redis -----------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if not self._started:
                self._started = True
                self._thread.start()

    def put(self, key: str, fields: dict[str, str], tag: object = None, capture_ts: float | None = None) -> str | None:
        """Queue an entry; returns its stream id (`*` on a shared stream: Redis assigns it), or None when the outbox
        is closed (the entry counts as dropped)."""
        size = entry_size(key, fields)
        with self._cond:
            if self._closing:
                entry = Entry(key, fields, "", size, tag, capture_ts)
                dropped, reason = [entry], "publisher closed"
                self._count_dropped(dropped, reason)
            else:
                fence = self.fence(key, fields) if self.fence is not None else None
                if key in self.shared_keys:
                    entry = Entry(key, fields, "*", size, tag, capture_ts, fence, self._seq)
                    self._seq += 1
                else:
                    entry = Entry(key, fields, self._next_id(key), size, tag, capture_ts, fence)
                self._queue.append(entry)
                self._bytes += size
                dropped, reason = self._enforce_bound(), "redis buffer full"
                if len(self._queue) == 1 and not self._inflight:
                    self._work.notify()  # only an idle writer waits; a busy one takes what is there next
        if dropped and self.on_dropped is not None:
            self.on_dropped(dropped, reason)
        return entry.id or None

    def _next_id(self, key: str) -> str:
        ms = int(time.time() * 1000)
        last = self._last_ids.get(key)
        seq = 0
        if last is not None and ms <= last[0]:
            ms, seq = last[0], last[1] + 1  # same millisecond, or the clock went back: stay increasing
        self._last_ids[key] = (ms, seq)
        return f"{ms}-{seq}"

    def _enforce_bound(self) -> list[Entry]:
        dropped = []
        while self._queue and (
            len(self._queue) + len(self._inflight) > self.max_entries or self._bytes > self.max_bytes
        ):
            entry = self._queue.popleft()
            self._bytes -= entry.size
            dropped.append(entry)
        if dropped:
            self._count_dropped(dropped, "redis buffer full")
            outage, now = self._outage, time.monotonic()
            if (outage is not None and not outage.reported_full) or (outage is None and now - self._full_logged > 10):
                if outage is not None:
                    outage.reported_full = True
                else:
                    self._full_logged = now
                log.warning(
                    "Redis publish buffer full (%d entries / %.1f MB): dropping the oldest entries%s",
                    self.max_entries, self.max_bytes / 2**20, " until Redis is back" if outage else "",
                )
        return dropped

    def _count_dropped(self, entries: list[Entry], reason: str) -> None:
        self._dropped += len(entries)
        self._dropped_by_reason[reason] = self._dropped_by_reason.get(reason, 0) + len(entries)

    # --- introspection and shutdown ----------------------------------------------------------------------------------
    def stats(self) -> PublisherStats:
        with self._cond:
            return PublisherStats(
                connected=self._connected,
                buffered_entries=len(self._queue) + len(self._inflight),
                buffered_bytes=self._bytes,
                max_entries=self.max_entries,
                max_bytes=self.max_bytes,
                delivered_entries=self._delivered,
                dropped_entries=self._dropped,
                errors=self._errors,
            )

    def dropped_by_reason(self) -> dict[str, int]:
        with self._cond:
            return dict(self._dropped_by_reason)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything put so far has been delivered or dropped; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is buffered, for at most `timeout` seconds, then stop the writer.

        Returns how many entries could not be delivered; they are also reported through `on_dropped`.
        """
        with self._cond:
            if self._closing:
                return 0
            self._closing = True
            started = self._started
            backlog, connected = len(self._queue) + len(self._inflight), self._connected
            self._work.notify_all()
        if started and backlog and not connected:  # say why the end of the run waits
            log.info("Redis at %s: delivering %d buffered entries before shutdown (at most %.1f s)",
                     self.where, backlog, timeout)
        self._wake.set()  # retry now rather than at the end of a long backoff
        if started:
            self._thread.join(timeout)
        with self._cond:
            self._abandoned = True  # a send still in progress reports nothing more
            groups = [(list(self._queue), "undelivered at shutdown (Redis unavailable)"),
                      (self._inflight, "undelivered at shutdown (connection lost while sending: maybe written)")]
            self._queue.clear()
            self._inflight = []
            self._bytes = 0
            for entries, reason in groups:
                if entries:
                    self._count_dropped(entries, reason)
            self._cond.notify_all()
        self._wake.set()  # a writer still sleeping exits
        if self.owns_client and not self._thread.is_alive():
            self.client.connection_pool.disconnect()
        undelivered = sum(len(entries) for entries, _ in groups)
        if undelivered:
            log.error("Redis at %s: %d entries could not be delivered before shutdown (waited %.1f s)",
                      self.where, undelivered, timeout)
        for entries, reason in groups:
            if entries and self.on_dropped is not None:
                self.on_dropped(entries, reason)
        return undelivered

    # --- writer thread -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        self._backoff = self.retry_initial_s
        self._probe()
        while True:
            try:
                if self._step():
                    return
            except Exception:  # a bug must not silence the publisher for the rest of the run
                self._errors += 1
                log.exception("Redis writer: unexpected error; going on")
                self._backoff = self._sleep(self._backoff)

    def _step(self) -> bool:
        """One round of the writer: wait for work, probe during an outage, send a chunk. True: time to exit."""
        with self._cond:
            if not (self._queue or self._inflight or self._closing or self._outage):
                self._work.wait(self.health_check_s)
            if self._abandoned or (self._closing and not (self._queue or self._inflight)):
                return True
            work = bool(self._queue or self._inflight)
        if self._outage is not None:
            if not self._probe():
                self._backoff = self._sleep(self._backoff)
                return False
            self._backoff = self.retry_initial_s
        if not work:
            if time.monotonic() - self._last_contact >= self.health_check_s:
                self._probe()  # idle: keeps `connected` true to life
            return False
        with self._cond:
            if not self._inflight:
                self._inflight = self._take_chunk()
            chunk = list(self._inflight)
        try:
            self._check_if_reconnected()
            results = self._send(chunk)
        except _CONNECTION_ERRORS as exc:
            self._went_down(exc)  # the chunk stays in flight: re-sent with the same ids
            self._backoff = self._sleep(self._backoff)
            return False
        except (redis.RedisError, ValueError, TypeError) as exc:  # data Redis or redis-py cannot take: not retried
            log.exception("Redis writer: cannot send %d entries (dropped them)", len(chunk))
            self._drop_inflight(chunk, f"cannot send: {type(exc).__name__}")
            return False
        if not self._handle_results(chunk, results):
            self._backoff = self._sleep(self._backoff)
        return False

    def _drop_inflight(self, chunk: list[Entry], reason: str) -> None:
        with self._cond:
            if self._abandoned:
                return
            self._inflight = []
            self._bytes -= sum(e.size for e in chunk)
            self._count_dropped(chunk, reason)
            self._errors += 1
            if self.on_dropped is not None:
                self.on_dropped(chunk, reason)
            self._cond.notify_all()

    def _take_chunk(self) -> list[Entry]:
        chunk: list[Entry] = []
        size = 0
        while self._queue and len(chunk) < self.chunk_entries and (not chunk or size < self.chunk_bytes):
            entry = self._queue.popleft()
            chunk.append(entry)
            size += entry.size
        return chunk

    def _send(self, chunk: Sequence[Entry]) -> list[object]:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for entry in chunk:
            if entry.capture_ts is not None:
                entry.fields["publish_ts"] = f"{now:.6f}"
                entry.fields["latency_ms"] = f"{max(0.0, now - entry.capture_ts) * 1000:.1f}"
            if entry.fence is None and entry.seq is None:
                pipe.xadd(entry.key, entry.fields, id=entry.id, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            else:
                owner, token = entry.fence or (entry.key, "")
                seq = "" if entry.seq is None else str(entry.seq)
                args = [token, entry.id, "" if self.maxlen is None else str(self.maxlen), seq]
                for name, value in entry.fields.items():
                    args += (name, value)
                # A key the script does not touch is given as the entry's own stream, never "": Redis checks ACL
                # key patterns on every key named, and "" matches none (an ACL user's writes were all refused).
                self._script(keys=[entry.key, owner, self._seq_key if seq else entry.key], args=args, client=pipe)
            if self.mirror is not None:
                pipe.publish(entry.key, self.mirror(entry))
        results = pipe.execute(raise_on_error=False)
        return results[::2] if self.mirror is not None else results  # PUBLISH replies: fire and forget

    def _handle_results(self, chunk: list[Entry], results: list[object]) -> bool:
        """Sort a chunk's replies into delivered, retried and rejected entries. False when Redis said "not now"."""
        delivered: list[Entry] = []
        retry: list[int] = []  # positions in the chunk
        rejected: dict[str, list[Entry]] = {}
        transient: BaseException | None = None
        stale_keys: set[str] = set()
        for i, (entry, result) in enumerate(zip(chunk, results)):
            if not isinstance(result, BaseException):
                if result in ("DUP", b"DUP"):
                    self.confirmed_on_resend += 1  # an earlier attempt of this shared-stream entry wrote it
                delivered.append(entry)
            elif isinstance(result, redis.ResponseError) and str(result).startswith(_FENCED):
                rejected.setdefault(FENCED_REASON, []).append(entry)
            elif isinstance(result, redis.ResponseError) and _ID_TOO_SMALL in str(result):
                if self._already_written(entry):
                    delivered.append(entry)  # an earlier attempt wrote it: exactly once
                    self.confirmed_on_resend += 1
                else:
                    stale_keys.add(entry.key)
                    retry.append(i)
            elif isinstance(result, _CONNECTION_ERRORS) or str(result).startswith(_TRANSIENT):
                transient = transient or result
                retry.append(i)
            else:
                rejected.setdefault(str(result), []).append(entry)
        tops = {key: top for key in stale_keys if (top := self._stream_top(key)) is not None}
        with self._cond:
            if self._abandoned:
                return True
            self._inflight = []
            for i in reversed(retry):  # Redis answered that it does not have these: back to the head, droppable
                self._queue.appendleft(chunk[i])
            for key, top in tops.items():
                self._renumber(key, top)
            done = delivered + [e for entries in rejected.values() for e in entries]
            self._bytes -= sum(e.size for e in done)
            self._delivered += len(delivered)
            for entry in delivered:
                if entry.seq is None:  # shared streams (`*` ids) get their ids from Redis: nothing to compare
                    self._acked[entry.key] = entry.id
            for message, entries in rejected.items():
                self._count_dropped(entries, _reject_reason(message))
                self._errors += 1
            if transient is None:
                self._connected = True
                self._last_contact = time.monotonic()
                if self._outage is None:
                    self._dropped_at_contact = self._dropped
            backlog_done = transient is None and self._backlog_progress(len(delivered))
            # Reported before the lock is released, so that close() cannot count these entries a second time
            # and wait_idle() returns only once the counts are final.
            if delivered and self.on_delivered is not None:
                self.on_delivered(delivered)
            for message, entries in rejected.items():
                if self.on_dropped is not None:
                    self.on_dropped(entries, _reject_reason(message))
            self._cond.notify_all()
        now = time.monotonic()
        for message, entries in rejected.items():
            self._rejected_count[message] = self._rejected_count.get(message, 0) + len(entries)
            if now - self._rejected_logged.get(message, -1e9) >= 10:  # a misconfigured ACL: not a line per chunk
                self._rejected_logged[message] = now
                if message == FENCED_REASON:  # cluster mode: another worker owns the camera now
                    log.warning("Redis at %s: %d entries refused so far (%s)", self.where,
                                self._rejected_count[message], message)
                else:
                    log.error("Redis at %s rejected %d entries so far (dropped them): %s", self.where,
                              self._rejected_count[message], message)
        if transient is not None:
            self._went_down(transient)
            return False
        if backlog_done:
            self._report_back()
        return True

    def _on_connect(self, connection: AbstractConnection) -> None:
        """redis-py's connect hook (`redis_connect_func`) on this outbox's client: the usual handshake, noted."""
        connection.on_connect()
        self._reconnected = True

    def _check_if_reconnected(self) -> None:
        """Before a chunk: if the pool had to reconnect since the last check, does Redis still hold what it
        acknowledged?"""
        pool = self.client.connection_pool
        pool.release(pool.get_connection())  # a connection the server closed is replaced here, not inside the send
        if self._reconnected:
            self._reconnected = False
            self._check_kept()

    def _check_kept(self) -> None:
        """After an outage or a reconnect: does Redis still hold what it acknowledged? A server restarted without its
        data (no persistence, a lost volume) comes back with streams missing or shorter: say so loudly, once per stream.
        The entries that follow keep increasing ids, so old and new never interleave; the gap is logged and counted
        (`went_backwards`), not silently mixed."""
        for key, acked in list(self._acked.items()):
            try:
                top = str(self.client.xinfo_stream(key)["last-generated-id"])
            except redis.ResponseError:  # "no such key": the stream is gone
                top = "none (the stream is gone)"
            if top.startswith("none") or parse_stream_id(top) < parse_stream_id(acked):
                self.went_backwards += 1
                del self._acked[key]
                log.error("Redis stream %s went backwards at %s: the server's last id is %s, but it had acknowledged "
                          "%s: it restarted without its data, and the entries it acknowledged up to there are lost "
                          "on the server; new entries continue after %s", key, self.where, top, acked, acked)

    def _backlog_progress(self, delivered: int) -> bool:
        """Count delivered backlog entries; True once the outage's backlog is all delivered (or dropped)."""
        outage = self._outage
        if outage is None:
            return False
        if outage.backlog is None:
            outage.backlog = delivered + len(self._queue)
        outage.backlog -= delivered
        outage.delivered += delivered
        return outage.backlog <= 0 or not self._queue

    def _already_written(self, entry: Entry) -> bool:
        try:
            return bool(self.client.xrange(entry.key, entry.id, entry.id, count=1))
        except redis.RedisError:
            return False  # asked again at the next attempt

    def _stream_top(self, key: str) -> tuple[int, int] | None:
        try:
            top = str(self.client.xinfo_stream(key)["last-generated-id"])
        except (redis.RedisError, KeyError):
            return None
        log.warning("Redis stream %s already has ids up to %s, ahead of this publisher's (another writer, or the "
                    "clock was set back): numbering the following entries after it", key, top)
        return parse_stream_id(top)

    def _renumber(self, key: str, top: tuple[int, int]) -> None:
        """Give the waiting entries of `key`, in order, ids after `top`. Called with the lock held."""
        self._last_ids[key] = max(top, self._last_ids.get(key, top))
        last = top
        for entry in self._queue:
            if entry.key == key:
                ms = max(int(time.time() * 1000), last[0])
                last = (ms, last[1] + 1 if ms == last[0] else 0)
                entry.id = f"{last[0]}-{last[1]}"
        self._last_ids[key] = max(last, self._last_ids[key])

    def _probe(self) -> bool:
        """PING Redis. A failure starts (or continues) an outage; True when Redis answered."""
        try:
            self.client.ping()
            if self._outage is not None or self._reconnected:
                self._reconnected = False
                self._check_kept()
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            return False
        with self._cond:
            self._connected = True
            self._last_contact = time.monotonic()
            if self._outage is None:
                self._dropped_at_contact = self._dropped
            done = self._outage is not None and not (self._queue or self._inflight)
        if done:
            self._report_back()
        return True

    def _went_down(self, exc: BaseException) -> None:
        with self._cond:
            self._connected = False
            self._errors += 1
            first = self._outage is None
            if first:
                self._outage = _Outage(time.monotonic(), self._dropped_at_contact)
            else:
                self._outage.backlog = None  # type: ignore[union-attr]  # down again while delivering the backlog
            buffered = len(self._queue) + len(self._inflight)
        if first:
            log.warning("Redis unavailable at %s (%s): buffering up to %d entries / %.1f MB (%d waiting now)",
                        self.where, _describe(exc), self.max_entries, self.max_bytes / 2**20, buffered)

    def _report_back(self) -> None:
        with self._cond:
            outage, self._outage = self._outage, None
            if outage is None:
                return
            dropped = self._dropped - outage.dropped_before
        log.info("Redis back at %s after %.1f s: delivered %d buffered entries, dropped %d",
                 self.where, time.monotonic() - outage.since, outage.delivered, dropped)

    def _sleep(self, backoff: float) -> float:
        """Wait `backoff` +-20 % (cut short once by close), return the next backoff."""
        delay = backoff * (1 + self._rng.uniform(-0.2, 0.2))
        if self._wake.wait(delay):
            self._wake.clear()
            return self.retry_initial_s
        return min(backoff * 2, self.retry_max_s)


def _reject_reason(message: str) -> str:
    return FENCED_REASON if message == FENCED_REASON else "rejected by Redis"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def json_payload(entry: Entry, decode: Callable[[str, dict[str, str]], dict[str, object]]) -> str:
    """The Pub/Sub mirror's message: the entry decoded as `subscribe` prints it, with its id and stream key."""
    return json.dumps({"id": entry.id, "stream": entry.key, **decode(entry.id, entry.fields)}, separators=(",", ":"))
