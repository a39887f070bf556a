"""Decoder stage: PyAV reads a file or network stream and emits RGB `Frame`s.

A source is a thread of its own with no inbox. It ends its stream with a `StreamEnd` marker so that later stages
can release per-stream state. Failures are recorded on the stream's stats with a message that names the input;
they never affect other sources.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av

from pipeline.frame import Frame, StreamEnd
from pipeline.stage import Channel, RunContext
from pipeline.urls import is_local_path, redact_url

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source cannot be opened or read; the message says why."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    url: str
    options: dict[str, str] = field(default_factory=dict)  # FFmpeg demuxer options, e.g. rtsp_transport
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0


class VideoSource(threading.Thread):
    def __init__(
        self,
        spec: SourceSpec,
        outbox: Channel[object],
        ctx: RunContext,
        on_finished: Callable[[VideoSource], None] | None = None,
    ) -> None:
        super().__init__(name=f"source-{spec.name}", daemon=True)
        self.spec = spec
        self.outbox = outbox
        self.ctx = ctx
        self.on_finished = on_finished
        self.stats = ctx.stream(spec.name)
        self.stats.source = redact_url(spec.url)

    @property
    def label(self) -> str:
        return f"source {self.spec.name!r} ({self.stats.source})"

    def run(self) -> None:
        try:
            container = self._open()
            self.stats.state = "running"
            log.info("%s: opened, %s", self.label, _describe(container))
            try:
                self._decode(container)
            finally:
                container.close()
            self.stats.state = "finished"
            log.info("%s: finished after %d frames", self.label, self.stats.decoded)
        except SourceError as exc:
            self.stats.state, self.stats.error = "failed", str(exc)
            log.error("%s: %s", self.label, exc)
        except Exception as exc:  # a bug or an unexpected library error: still only this source fails
            self.stats.state, self.stats.error = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
            log.exception("%s: unexpected error", self.label)
        finally:
            self.outbox.put(StreamEnd(self.spec.name))
            if self.on_finished is not None:
                self.on_finished(self)

    def _open(self) -> av.container.InputContainer:
        url = self.spec.url
        if is_local_path(url):
            path = Path(url.removeprefix("file:"))
            if not path.exists():
                raise SourceError("file not found")
            if not path.is_file():
                raise SourceError("not a regular file")
        try:
            container = av.open(
                url, options=self.spec.options, timeout=(self.spec.open_timeout_s, self.spec.read_timeout_s)
            )
        except av.error.InvalidDataError as exc:
            raise SourceError("not a readable video: FFmpeg found invalid data (not a video, or truncated or corrupt)") from exc
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open: {_reason(exc)}") from exc
        if not container.streams.video:
            container.close()
            raise SourceError("has no video stream")
        return container

    def _decode(self, container: av.container.InputContainer) -> None:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        index, pts = 0, 0.0
        try:
            for packet in container.demux(stream):
                for av_frame in packet.decode():
                    image = av_frame.to_ndarray(format="rgb24")
                    pts = float(av_frame.time) if av_frame.time is not None else index / rate
                    frame = Frame(self.spec.name, index, pts, time.time(), image)
                    index += 1
                    self.ctx.count(self.spec.name, "decoded")
                    if not self.outbox.put(frame, stop=self.ctx.stop):
                        self.ctx.drop([frame], "stopped before processing")
                if self.ctx.stop.is_set():
                    log.info("%s: stop requested after %d frames", self.label, index)
                    return
        except av.FFmpegError as exc:
            raise SourceError(f"truncated or corrupt: reading failed after {index} frames ({_reason(exc)})") from exc
        # A file cut short often just ends early; compare with what its header promised.
        declared_frames = stream.frames
        declared_s = container.duration / 1_000_000 if container.duration else 0.0
        if declared_frames and index < declared_frames:
            raise SourceError(f"truncated or corrupt: decoded {index} of the {declared_frames} frames its header declares")
        if declared_s and pts + 2.0 / rate < declared_s:
            raise SourceError(f"truncated or corrupt: video ends at {pts:.2f} s of the {declared_s:.2f} s its header declares")


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _describe(container: av.container.InputContainer) -> str:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    rate = f"{float(stream.average_rate):.2f} fps" if stream.average_rate else "unknown fps"
    return f"{ctx.name} {ctx.width}x{ctx.height}, {rate}"
