"""Decoder stage: PyAV reads a file, a network stream or a webcam and emits RGB `Frame`s.

A source is a thread of its own; it writes into its own queue of the batcher's inbox (`CameraQueues`). It ends its
stream with a `StreamEnd` marker so that later stages can release per-stream state.

- Files are read once, as fast as the pipeline takes them (lossless: a full queue blocks), or paced to their native
  frame rate with `realtime` (then they behave like a camera).
- Live sources (rtsp://, http(s):// incl. HLS playlists and MJPEG streams, /dev/videoN, ...) reconnect forever with exponential backoff and jitter, reset
  after a healthy period. Their queue is tiny and drops the oldest frame, so the engine always gets fresh frames.
  Each state change (connecting -> online -> offline -> online ...) is reported once through `on_state`: an outage
  gives one "offline" and, when the camera is back, one "online", however many attempts it takes.

Failures never affect other sources; every message names the source, with credentials redacted.

What real footage and cameras showed, and how frames are made uniform here (each has a test):
- Timestamps: raw streams (Annex-B .h264) have none, MJPEG over HTTP has none worth the name (FFmpeg counts frames at
  a made-up 25 fps), and live timelines restart at every reconnect or jump at an encoder restart. `StreamClock` gives
  every frame a stream time that never goes back; see there.
- Frame rate: for a file without timestamps the rate in the bitstream (H.264 VUI) is used, not the demuxer's 25 fps
  default.
- Non-square pixels (a sample aspect ratio other than 1:1, e.g. anamorphic DVB/DV): frames are resampled to square
  pixels at their display size, so the detector sees undistorted objects and boxes match what players show.
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av

from pipeline.frame import StreamEnd
from pipeline.stage import RunContext
from pipeline.sources.scaling import FitSize, make_frame, skip_frame_setting
from pipeline.sources.urls import guess_format, is_local_path, redact_url

log = logging.getLogger(__name__)
MAX_FRAME_SIDE = 8192  # wider or taller frames come from corrupt headers: refused, not decoded at 100+ MB each


class SourceError(Exception):
    """A source cannot be opened or read; the message says why."""


class PermanentSourceError(SourceError):
    """Retrying cannot help (unsupported scheme, no video stream, a broken file)."""


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: `initial` doubling up to `maximum`, +-`jitter` (a fraction), reset after `healthy_s` online."""

    initial_s: float = 0.5
    maximum_s: float = 30.0
    jitter: float = 0.2
    healthy_s: float = 10.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.maximum_s, self.initial_s * (2 ** max(0, attempt)))
        return base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))


@dataclass(frozen=True)
class SourceSpec:
    name: str
    url: str
    options: dict[str, str] = field(default_factory=dict)  # extra FFmpeg demuxer options; they win
    transport: str = "tcp"  # RTSP transport: tcp or udp
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0  # a live source that delivers nothing for this long is declared offline
    realtime: bool = False  # pace a file to its native frame rate (it then stands in for a camera)
    max_fps: float | None = None  # detect at most this many frames per second of this source
    backoff: Backoff = field(default_factory=Backoff)
    format: str | None = None  # FFmpeg input format; None: guessed from the URL (guess_format), else probed
    start_after: int | None = None  # files: frames up to this index were published before (resume); skip them
    fit: FitSize | None = None  # the engine's frame size for a source size: frames are scaled to it when decoded
    skip_frames: str = "auto"  # what the decoder may skip at a low max_fps (pipeline/sources/scaling.py)

    @property
    def input_format(self) -> str | None:
        return self.format or guess_format(self.url)

    @property
    def is_file(self) -> bool:
        return is_local_path(self.url) and not self.url.startswith("/dev/")

    @property
    def live(self) -> bool:
        """Live sources drop the oldest frame when the pipeline falls behind; files wait for it."""
        return not self.is_file or self.realtime


def demuxer_options(spec: SourceSpec) -> tuple[str | None, dict[str, str]]:
    """FFmpeg input format and options for a source: short probing and socket timeouts for network streams."""
    scheme = urlsplit(spec.url).scheme.lower()
    options: dict[str, str] = {}
    if scheme in ("rtsp", "rtsps"):
        options = {"rtsp_transport": spec.transport, "timeout": str(int(spec.read_timeout_s * 1e6))}
    elif scheme in ("http", "https"):
        # The HTTP protocol's own socket timeout (µs); the HLS demuxer passes it on to each playlist and segment.
        options = {"rw_timeout": str(int(spec.read_timeout_s * 1e6))}
    if not spec.is_file:
        options.update(analyzeduration="500000", probesize="500000")
    options.update(spec.options)  # the user's options win
    return spec.input_format, options


def read_timeout(spec: SourceSpec, fmt: str | None) -> float:
    """PyAV's per-read timeout, such that a camera is declared offline after `read_timeout_s` of silence, not before
    (measured against a server stopped by SIGSTOP). Over RTSP (TCP or UDP) the first interrupted read still returns
    the partial frame the RTP depacketizer held and the error comes with the second, after twice PyAV's timeout: so
    half of ours. Other reads (MJPEG over HTTP) fail after one timeout; one read of a live HLS playlist blocks until
    the next segment is published (read_timeout_s must exceed the segment duration): the whole read_timeout_s."""
    return spec.read_timeout_s / 2 if urlsplit(spec.url).scheme.lower() in ("rtsp", "rtsps") else spec.read_timeout_s


# Formats whose timestamps are made up by FFmpeg (frames counted at a default rate): timed by arrival instead.
UNTIMED_FORMATS = frozenset({"mpjpeg", "mjpeg", "jpeg_pipe", "image2pipe"})


class StreamClock:
    """The stream time, in seconds, of each decoded frame of one source: the `pts` of its published entry.

    - Files: the container's timestamps. A frame without one (raw Annex-B H.264, some AVI muxers), or with one that
      does not advance, gets the previous time plus one frame interval.
    - Live sources: one increasing timeline for the whole run. Each connection starts where the last frame left off
      plus the wall-clock time in between (an outage is a gap of its length in stream time, not a restart at 0, so
      the tracker ages lost tracks correctly), and follows the camera's timestamps from there. Frames without
      timestamps, and formats whose timestamps are made up (MJPEG over HTTP), are timed by their arrival. A timestamp
      that goes back, or jumps ahead of the wall clock by more than `max_jump_s` (an encoder restart, an HLS
      discontinuity, a wrapped MPEG-TS clock), is re-based the same way as a reconnect.
    """

    def __init__(self, live: bool, max_jump_s: float = 5.0) -> None:
        self.live = live
        self.max_jump_s = max_jump_s
        self.last: float | None = None  # output time of the last frame
        self._last_wall = 0.0  # monotonic arrival of the last frame
        self._last_raw = 0.0  # the last frame's time on the connection's own timeline
        self._offset: float | None = None  # output - raw, per connection
        self._interval = 0.04
        self._timed = True

    def connect(self, rate: float, timed: bool) -> None:
        """A new connection (or file) at `rate` frames/s; `timed`: its timestamps are real."""
        self._interval = 1.0 / rate if rate > 0 else 0.04
        self._timed = timed
        self._offset = None

    def __call__(self, pts: float | None, now: float) -> float:
        """Stream time of a frame with container time `pts` (None: none) that arrived at monotonic `now`."""
        last = self.last
        if not self.live:
            t = pts if pts is not None else (last + self._interval if last is not None else 0.0)
            if last is not None and t <= last:
                t = last + self._interval
        else:
            raw = pts if pts is not None and self._timed else now
            if self._offset is not None:
                step = raw - self._last_raw
                if step <= 0 or step - (now - self._last_wall) > self.max_jump_s:
                    self._offset = None  # the camera's clock jumped: re-base
            if self._offset is None:
                anchor = 0.0 if last is None else last + max(now - self._last_wall, self._interval)
                self._offset = anchor - raw
            t = raw + self._offset
            self._last_raw = raw
        self.last, self._last_wall = t, now
        return t


class VideoSource(threading.Thread):
    def __init__(
        self,
        spec: SourceSpec,
        put: Callable[[object, threading.Event | None], bool],
        ctx: RunContext,
        on_finished: Callable[[VideoSource], None] | None = None,
        on_state: Callable[[VideoSource, str, str, str | None], None] | None = None,
    ) -> None:
        super().__init__(name=f"source-{spec.name}", daemon=True)
        self.spec = spec
        self._put = put
        self.ctx = ctx
        self.on_finished = on_finished
        self.on_state = on_state
        self.stop_event = threading.Event()  # this source alone (camera removed); ctx.stop stops all
        self.stats = ctx.stream(spec.name)
        self.stats.source = redact_url(spec.url)
        self.index = 0  # frames decoded by this source, across reconnects
        self.clock = StreamClock(live=spec.live and not spec.is_file)
        self._rng = random.Random(hash(spec.name))

    @property
    def label(self) -> str:
        return f"camera {self.spec.name!r} ({self.stats.source})"

    def stopping(self) -> bool:
        return self.stop_event.is_set() or self.ctx.stop.is_set()

    def stop(self) -> None:
        self.stop_event.set()

    def _set_state(self, state: str, reason: str | None = None) -> None:
        previous, self.stats.state = self.stats.state, state
        if state == "offline" and reason:
            self.stats.error = reason
        if previous != state and self.on_state is not None:
            self.on_state(self, previous, state, reason)

    def run(self) -> None:
        try:
            if self.spec.live and not self.spec.is_file:
                self._run_live()
            else:
                self._run_once()
        except Exception as exc:  # a bug or an unexpected library error: still only this source fails
            self.stats.state, self.stats.error = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
            log.exception("%s: unexpected error", self.label)
        finally:
            self._put(StreamEnd(self.spec.name), self.ctx.discard)
            if self.on_finished is not None:
                self.on_finished(self)

    # --- files: read once -------------------------------------------------------------------------------------
    def _run_once(self) -> None:
        try:
            container = self._open()
            self.stats.state = "running"
            log.info("%s: opened, %s", self.label, _describe(container))
            try:
                self._decode(container)
            finally:
                container.close()
            self.stats.state = "finished" if not self.stopping() else "stopped"
            log.info("%s: %s after %d frames", self.label, self.stats.state, self.stats.decoded)
        except SourceError as exc:
            self.stats.state, self.stats.error = "failed", str(exc)
            log.error("%s: %s", self.label, exc)

    # --- live: reconnect forever ------------------------------------------------------------------------------
    def _run_live(self) -> None:
        backoff, attempt = self.spec.backoff, 0
        self._set_state("connecting")
        while not self.stopping():
            online_at = None
            try:
                container = self._open()
                try:
                    log.info("%s: connected, %s", self.label, _describe(container))
                    online_at = self._decode(container, on_first_frame=lambda: self._set_state("online"))
                finally:
                    container.close()
                if self.stopping():
                    break
                reason = "stream ended"
            except PermanentSourceError as exc:
                self.stats.error = str(exc)
                self._set_state("failed", str(exc))  # published, as docs/events.md promises
                log.error("%s: %s (not retrying)", self.label, exc)
                return
            except SourceError as exc:
                reason = str(exc)
            if self.stopping():
                break
            if online_at is not None and time.monotonic() - online_at >= backoff.healthy_s:
                attempt = 0  # it was healthy for a while: start the backoff over
            delay = backoff.delay(attempt, self._rng)
            attempt += 1
            if self.stats.state != "offline":
                log.warning("%s: offline (%s); reconnecting in %.1f s", self.label, reason, delay)
            else:
                log.info("%s: still offline (%s); next attempt in %.1f s", self.label, reason, delay)
            self._set_state("offline", reason)
            self.stop_event.wait(delay)
            if not self.stopping():
                self.ctx.count(self.spec.name, "reconnects")
        self.stats.state = "stopped"

    # --- shared -----------------------------------------------------------------------------------------------
    def _open(self) -> av.container.InputContainer:
        url = self.spec.url
        if self.spec.is_file:
            _check_file(Path(url.removeprefix("file:")))
        fmt, options = demuxer_options(self.spec)
        timeout = (self.spec.open_timeout_s, read_timeout(self.spec, fmt))
        if fmt is not None:
            _check_format(fmt)
        try:
            container = av.open(url, format=fmt, options=options, timeout=timeout)
        except av.error.ProtocolNotFoundError as exc:
            raise PermanentSourceError(f"unsupported URL scheme {urlsplit(url).scheme!r}") from exc
        except av.error.InvalidDataError as exc:
            cause = "not a video, or truncated or corrupt" if self.spec.is_file else "bad stream data"
            error = PermanentSourceError if self.spec.is_file else SourceError
            raise error(f"not a readable video: FFmpeg found invalid data ({cause})") from exc
        except (av.FFmpegError, OSError) as exc:
            if self.spec.is_file:
                raise PermanentSourceError(f"cannot open: {_reason(exc)}") from exc
            _check_host(url)  # FFmpeg reports an unknown host as a mere I/O error
            raise SourceError(f"cannot open: {_reason(exc)}") from exc
        if not container.streams.video:
            container.close()
            raise PermanentSourceError("has no video stream")
        return container

    def _decode(
        self, container: av.container.InputContainer, on_first_frame: Callable[[], None] | None = None
    ) -> float | None:
        """Decode until the input ends or the source stops; returns when the first frame came (monotonic)."""
        stream = container.streams.video[0]
        # The bitstream's rate (guessed_rate: H.264 VUI) before the demuxer's: a raw stream's average_rate is
        # FFmpeg's 25 fps default whatever the camera sends.
        rate = float(stream.guessed_rate or stream.average_rate or 25)
        self.clock.connect(rate, timed=container.format.name not in UNTIMED_FORMATS)
        pixel_aspect = _pixel_aspect(stream)
        first_at: float | None = None
        pace_start: float | None = None
        decoded_here, pts = 0, 0.0
        skip = skip_frame_setting(self.spec.skip_frames, self.spec.max_fps, rate)
        if skip != "DEFAULT":
            stream.codec_context.skip_frame = skip
            log.info("%s: decoder skips %s frames (max_fps %s of %.1f fps)", self.label, skip, self.spec.max_fps, rate)
        try:
            for packet in container.demux(stream):
                for av_frame in packet.decode():
                    if max(av_frame.width, av_frame.height) > MAX_FRAME_SIDE:  # a corrupt header (video fuzzing):
                        error = PermanentSourceError if self.spec.is_file else SourceError  # 113 MB frames, slowly
                        raise error(f"truncated or corrupt: frame size {av_frame.width}x{av_frame.height} beyond "
                                    f"{MAX_FRAME_SIDE} px")
                    pts = self.clock(float(av_frame.time) if av_frame.time is not None else None, time.monotonic())
                    if self.spec.start_after is not None and self.index <= self.spec.start_after and self.spec.is_file:
                        self.index += 1  # published by an earlier run: decoded only to reach the next frame
                        decoded_here += 1
                        continue
                    if self.spec.realtime:  # a file standing in for a camera: release frames at their pts
                        pace_start = pace_start if pace_start is not None else time.monotonic() - pts
                        wait = pace_start + pts - time.monotonic()
                        if wait > 0 and self.stop_event.wait(wait):
                            return first_at
                    frame = make_frame(self.spec.name, self.index, pts, time.time(), av_frame, self.spec.fit,
                                       _display_width(av_frame, pixel_aspect))
                    self.index += 1
                    decoded_here += 1
                    self.ctx.count(self.spec.name, "decoded")
                    if first_at is None:
                        first_at = time.monotonic()
                        if on_first_frame is not None:
                            on_first_frame()
                    if not self._put(frame, self.ctx.stop if not self.spec.live else None):
                        self.ctx.drop([frame], "stopped before processing")
                if self.stopping():
                    log.info("%s: stop requested after %d frames", self.label, self.index)
                    return first_at
        except av.FFmpegError as exc:
            if not self.spec.is_file:
                raise SourceError(f"read failed: {_reason(exc)}") from exc
            raise PermanentSourceError(
                f"truncated or corrupt: reading failed after {decoded_here} frames ({_reason(exc)})"
            ) from exc
        if self.spec.is_file:  # a file cut short often just ends early; compare with what its header promised
            if not decoded_here:  # e.g. an empty raw .h264 file: FFmpeg opens it and finds nothing (video fuzzing)
                raise PermanentSourceError("truncated or corrupt: not a single frame could be decoded")
            declared_frames = stream.frames
            declared_s = container.duration / 1_000_000 if container.duration else 0.0
            if skip != "DEFAULT":  # skipped frames are not a truncation
                declared_frames, declared_s = 0, 0.0
            if declared_frames and decoded_here < declared_frames:
                raise PermanentSourceError(
                    f"truncated or corrupt: decoded {decoded_here} of the {declared_frames} frames its header declares"
                )
            # Two frames of slack at the slower of the two rates (a variable-rate file's guessed rate can be high).
            slowest = min(float(r) for r in (stream.average_rate, stream.guessed_rate, rate) if r)
            if declared_s and pts + 2.0 / slowest < declared_s:
                raise PermanentSourceError(
                    f"truncated or corrupt: video ends at {pts:.2f} s of the {declared_s:.2f} s its header declares"
                )
        return first_at


def check_source(spec: SourceSpec) -> None:
    """The checks that need no connection to the camera, for refusing a bad camera up front (the HTTP API).

    Raises PermanentSourceError (missing file or device, a URL scheme or input format FFmpeg cannot read) or
    SourceError (unknown host). A camera that passes may still be offline: it is then retried like any other.
    """
    if spec.format is not None:
        _check_format(spec.format)
    if spec.is_file:
        _check_file(Path(spec.url.removeprefix("file:")))
        return
    if "://" not in spec.url:  # a device such as /dev/video0
        if not Path(spec.url).exists():
            raise PermanentSourceError("device not found")
        return
    _check_scheme(spec.url)
    _check_host(spec.url)


def _check_format(name: str) -> None:
    try:
        av.format.ContainerFormat(name)
    except ValueError as exc:
        raise PermanentSourceError(f"unknown input format {name!r}") from exc


def _check_file(path: Path) -> None:
    if not path.exists():
        raise PermanentSourceError("file not found")
    if not path.is_file():
        raise PermanentSourceError("not a regular file")


def _check_scheme(url: str) -> None:
    """Ask FFmpeg itself whether it reads this scheme, without connecting: with a protocol whitelist that allows
    nothing, a known protocol fails at once with EINVAL and an unknown one with ProtocolNotFoundError."""
    try:
        av.open(url, options={"protocol_whitelist": "none"}, timeout=(1.0, 1.0)).close()
    except av.error.ProtocolNotFoundError as exc:
        raise PermanentSourceError(f"unsupported URL scheme {urlsplit(url).scheme!r}") from exc
    except (av.FFmpegError, OSError):
        pass  # known to FFmpeg, refused by the whitelist: fine


def _check_host(url: str) -> None:
    """Name resolution failures from FFmpeg read 'Input/output error'; say what it is."""
    host = urlsplit(url).hostname
    if not host:
        return
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise SourceError(f"unknown host {host!r} ({exc.strerror})") from exc


def _reason(exc: BaseException) -> str:
    # strerror only: str(exc) would repeat the URL, password included.
    return getattr(exc, "strerror", None) or type(exc).__name__


def _pixel_aspect(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The stream's sample (pixel) aspect ratio when it is known and not square; None otherwise."""
    sar = stream.codec_context.sample_aspect_ratio or stream.sample_aspect_ratio
    if sar is None or sar.numerator <= 0 or sar.numerator == sar.denominator:
        return None
    return Fraction(sar.numerator, sar.denominator)


def _display_width(av_frame: av.VideoFrame, pixel_aspect: Fraction | None) -> int | None:
    """The width in square pixels of a stream whose pixels are not square (height kept); None when they are."""
    if pixel_aspect is None:
        return None
    return max(2, round(av_frame.width * pixel_aspect / 2) * 2)


def _describe(container: av.container.InputContainer) -> str:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    rate = stream.guessed_rate or stream.average_rate
    parts = [f"{ctx.name} {ctx.width}x{ctx.height}", f"{float(rate):.2f} fps" if rate else "unknown fps"]
    sar = _pixel_aspect(stream)
    if sar is not None:
        parts.append(f"pixel aspect {sar.numerator}:{sar.denominator}")
    if ctx.has_b_frames:
        parts.append("B-frames")
    if container.format.name in ("hls", "mpjpeg"):
        parts.append(container.format.name)
    return ", ".join(parts)
