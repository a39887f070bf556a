"""Decoder-side scaling: each decoded picture is converted once, by FFmpeg's swscale, straight to the engine's size.

A 1080p or 4K camera costs the engine what a 640x360 one does: swscale scales and converts YUV to RGB in one pass,
instead of a full-resolution RGB frame being made and then resized by the engine. The conversion is deferred
(`Frame.pending`) until the batcher takes the frame, so frames dropped by `max_fps` or by a full live queue are never
converted at all. Boxes are still published in source pixels: the frame keeps its source size and the scale factors.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.frame import Frame

#: (source width, source height) -> (width, height) the engine wants its frames in, or None for unscaled.
FitSize = Callable[[int, int], "tuple[int, int] | None"]

#: swscale's filter for downscaling: "AREA" averages every source pixel (no aliasing at 1/3 or 1/6 scale, what
#: torch's bilinear resize with antialias would give) and is as fast as "BILINEAR" for large factors.
INTERPOLATION = "AREA"


#: Per thread, the swscale contexts of each (source size, format, target size): `VideoFrame.reformat` makes a new
#: context for every frame, and setting one up (filter coefficients, buffers) cost about a quarter of the conversion
#: of a 1080p frame to 512x288 (1.0 -> 0.78 CPU ms measured). swscale contexts are not thread-safe: one set per thread.
_reformatters = threading.local()


def _reformatters_for(key: tuple[object, ...]) -> tuple[VideoReformatter, VideoReformatter]:
    cache: dict[tuple[object, ...], tuple[VideoReformatter, VideoReformatter]] | None = getattr(
        _reformatters, "cache", None)
    if cache is None:
        cache = _reformatters.cache = {}
    pair = cache.get(key)
    if pair is None:
        if len(cache) >= 16:  # cameras come and go (and change size): keep the set small
            cache.clear()
        pair = cache[key] = (VideoReformatter(), VideoReformatter())
    return pair


def convert(av_frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """The picture as uint8 HxWx3 RGB, scaled to `size` (width, height) in the same swscale pass."""
    if size is None or size == (av_frame.width, av_frame.height):
        return av_frame.to_ndarray(format="rgb24")
    width, height = size
    scaler, to_rgb = _reformatters_for((av_frame.width, av_frame.height, av_frame.format.name, width, height))
    # Scale in the decoder's own pixel format first (YUV: chroma has a quarter of the pixels), then convert the small
    # picture: measured 1.9 ms instead of 2.7 ms for a 1080p frame in one rgb24 pass.
    small = scaler.reformat(av_frame, width=width, height=height, interpolation=INTERPOLATION)
    return to_rgb.reformat(small, format="rgb24").to_ndarray()


def make_frame(
    stream: str, index: int, pts: float, capture_time: float, av_frame: av.VideoFrame, fit: FitSize | None,
    display_width: int | None = None,
) -> Frame:
    """A Frame whose image is converted (and scaled to `fit`'s size) on first use, not here.

    `display_width`: the width in square pixels when the stream's pixels are not square; the frame's source size
    (what boxes are published in) is then display_width x height, and the picture is resampled to it."""
    width, height = display_width or av_frame.width, av_frame.height
    size = fit(width, height) if fit is not None else None
    if size is None and width != av_frame.width:
        size = (width, height)
    out_w, out_h = size if size is not None else (width, height)
    return Frame(
        stream, index, pts, capture_time, None, width=width, height=height,
        scale=(width / out_w, height / out_h), pending=lambda: convert(av_frame, size),
    )


#: The camera setting `skip_frames` -> FFmpeg's `skip_frame` (what the decoder does not decode at all).
SKIP_FRAMES: dict[str, str] = {"none": "DEFAULT", "nonref": "NONREF", "nonkey": "NONKEY"}


def skip_frame_setting(skip_frames: str, max_fps: float | None, rate: float) -> str:
    """FFmpeg `skip_frame` for a camera: "auto" skips non-reference frames when max_fps is at most half the rate.

    Non-reference frames (B-frames, and the frames of streams coded with reference-free layers) can be skipped
    without harming any other frame. Keyframes only ("nonkey") gives one picture per GOP: only on request.
    """
    if skip_frames == "auto":
        return "NONREF" if max_fps is not None and max_fps <= rate / 2 else "DEFAULT"
    try:
        return SKIP_FRAMES[skip_frames]
    except KeyError:
        raise ValueError(f"skip_frames must be one of auto, {', '.join(SKIP_FRAMES)}; got {skip_frames!r}") from None
