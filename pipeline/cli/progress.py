"""Progress bars for file sources when `run` writes to a terminal (tqdm), one per file.

A bar counts a file's frames done (processed or dropped) against the frame count its header declares. Log lines
go through `tqdm.contrib.logging.logging_redirect_tqdm` meanwhile, so they print above the bars, not through them.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

import av
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline.sources.urls import is_local_path

if TYPE_CHECKING:
    from pipeline.runner import Pipeline

ENDED = ("finished", "failed", "stopped")


def frame_count(path: str) -> int | None:
    """The file's frame count from its header (or duration x rate); None when it cannot be told."""
    try:
        with av.open(path.removeprefix("file:")) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            if container.duration and stream.average_rate:
                return round(container.duration / 1_000_000 * float(stream.average_rate))
    except (av.FFmpegError, OSError, IndexError):
        pass
    return None


class FileProgress:
    """Bars for the pipeline's file sources, updated by `update()` from the run loop."""

    def __init__(self, pipeline: Pipeline, stream: TextIO | None = None) -> None:
        self.pipeline = pipeline
        self.stream = stream if stream is not None else sys.stderr
        self._bars: dict[str, tqdm] = {}

    def update(self) -> None:
        for name, camera in self.pipeline.listed_cameras().items():
            if not is_local_path(camera.url) or camera.url.startswith("/dev/"):
                continue
            stats = self.pipeline.ctx.stream(name)
            bar = self._bars.get(name)
            if bar is None:
                bar = self._bars[name] = tqdm(
                    total=frame_count(camera.url), desc=name, unit="frame", file=self.stream, dynamic_ncols=True,
                    position=len(self._bars), leave=True,
                )
            done = stats.published + stats.dropped
            if done != bar.n:
                bar.update(done - bar.n)
            if stats.state in ENDED and done >= stats.decoded and bar.postfix != stats.state:
                bar.set_postfix_str(stats.state)  # every decoded frame is accounted for: the file is done

    def close(self) -> None:
        self.update()
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@contextlib.contextmanager
def file_progress(pipeline: Pipeline, enabled: bool) -> Iterator[FileProgress | None]:
    """FileProgress with logging redirected through tqdm, or None when disabled."""
    if not enabled:
        yield None
        return
    progress = FileProgress(pipeline)
    with logging_redirect_tqdm():
        try:
            yield progress
        finally:
            progress.close()


def wants_progress(flag: bool | None, stream: TextIO | None = None) -> bool:
    """On by default when stderr is a terminal; `--progress` / `--no-progress` decide otherwise."""
    if flag is not None:
        return flag
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())
