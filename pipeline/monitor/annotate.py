"""Annotated frames: boxes, labels and track ids drawn by torchvision, JPEG (Pillow) for the web view, H.264 MP4.

`AnnotatedVideoWriter` encodes in a thread of its own behind a bounded queue, so encoding never slows detection:
live cameras' frames are dropped (and counted) when it falls behind; files wait for it, so a file's annotated video
has every frame, like its published results.
"""
from __future__ import annotations

import logging
import io
import queue
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import draw_bounding_boxes

from pipeline.analytics.camera import Overlay
from pipeline.events.contract import label_name
from pipeline.frame import boxes_to_image
from pipeline.monitor.yuv import rgb_to_yuv420p

log = logging.getLogger(__name__)

#: Box colour of each label id (1 person, 2 car, 3 sign for the default model; more cycle through the rest).
#: Fully saturated colours, which the page's own grey chrome never uses.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 255),  # magenta
    (0, 255, 255),  # cyan
    (255, 255, 0),  # yellow
    (255, 128, 0),  # orange
    (0, 255, 0),  # green
    (255, 0, 0),  # red
    (0, 128, 255),  # azure
)
VIDEO_TIME_BASE = Fraction(1, 90_000)  # MPEG's: pts from the source's own seconds, variable frame rate


def label_colour(label: int) -> tuple[int, int, int]:
    return PALETTE[(max(label, 1) - 1) % len(PALETTE)]


def line_width(width: int, height: int) -> int:
    """Box line width that stays visible as frames get larger: 2 px up to 360p, 6 px at 1080p."""
    return max(2, round(min(width, height) / 180))


def annotate(
    image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, track_ids: np.ndarray,
    label_names: Sequence[str], overlay: Overlay | None = None, scale: tuple[float, float] = (1.0, 1.0),
    predicted: np.ndarray | None = None,
) -> torch.Tensor:
    """The frame (uint8 HxWx3 RGB) with each detection's box and `label #track score` drawn (`label #track
    predicted` on a box the tracker predicted for a missed object, `predicted` [N] bool), over the camera's zones
    and lines if it has any; uint8 3xHxW. Boxes and zones are in source pixels, `scale` source pixels per image
    pixel (x, y): the image may be the engine-sized one the detector saw."""
    if overlay is not None:
        image = draw_overlay(image, overlay, scale)
    boxes = boxes_to_image(boxes, scale)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if len(boxes) == 0:
        return tensor
    texts, colours = [], []
    guessed = [False] * len(boxes) if predicted is None or len(predicted) != len(boxes) else predicted.tolist()
    for score, label, track_id, guess in zip(scores.tolist(), labels.tolist(), track_ids.tolist(), guessed):
        name = label_name(label_names, label)
        ident = f" #{track_id}" if track_id > 0 else ""  # not yet on a confirmed track: no id
        texts.append(f"{name}{ident} predicted" if guess else f"{name}{ident} {score:.2f}")
        colours.append(label_colour(int(label)))
    return draw_bounding_boxes(
        tensor, torch.as_tensor(boxes, dtype=torch.float32), labels=texts, colors=colours,
        width=line_width(image.shape[1], image.shape[0]), fill_labels=True, label_colors="black",
    )


ZONE_COLOUR, CROWDED_COLOUR, LINE_COLOUR = (0, 200, 80), (255, 40, 40), (255, 255, 255)


def draw_overlay(image: np.ndarray, overlay: Overlay, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Zones shaded with their name and occupancy (red when overcrowded); lines with an arrow pointing to their
    `in` side and their in/out totals. Points are in source pixels (`scale`: source pixels per image pixel).
    Returns a new uint8 HxWx3 array."""
    sx, sy = scale
    base = Image.fromarray(np.ascontiguousarray(image)).convert("RGBA")
    shade = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(shade)
    width = line_width(base.width, base.height)
    for name, source_points, occupancy, crowded in overlay.zones:
        points = [(x / sx, y / sy) for x, y in source_points]
        colour = CROWDED_COLOUR if crowded else ZONE_COLOUR
        draw.polygon(points, fill=(*colour, 60), outline=(*colour, 255), width=width)
        x, y = min(points, key=lambda p: (p[1], p[0]))
        draw.text((x + 3, y + 2), f"{name}: {occupancy}", fill=(*colour, 255), stroke_width=1, stroke_fill=(0, 0, 0, 255))
    for name, ((ax, ay), (bx, by)), total_in, total_out in overlay.lines:
        ax, ay, bx, by = ax / sx, ay / sy, bx / sx, by / sy
        draw.line([(ax, ay), (bx, by)], fill=(*LINE_COLOUR, 255), width=width)
        length = max(float(np.hypot(bx - ax, by - ay)), 1e-6)
        nx, ny = -(by - ay) / length, (bx - ax) / length  # towards the line's right: the `in` side
        mx, my = (ax + bx) / 2, (ay + by) / 2
        k = 6.0 * width
        tip = (mx + nx * k, my + ny * k)
        draw.line([(mx, my), tip], fill=(*LINE_COLOUR, 255), width=width)
        wing = k / 2.5
        dx, dy = (bx - ax) / length, (by - ay) / length
        draw.polygon([tip, (tip[0] - nx * wing + dx * wing / 1.5, tip[1] - ny * wing + dy * wing / 1.5),
                      (tip[0] - nx * wing - dx * wing / 1.5, tip[1] - ny * wing - dy * wing / 1.5)],
                     fill=(*LINE_COLOUR, 255))
        text = f"{name} in {total_in} out {total_out}"
        left, top, right, bottom = draw.textbbox((0, 0), text)
        x = min(max(ax + 4, 2), base.width - (right - left) - 2)  # next to the line's first point, inside the frame
        y = min(max(ay + 2, 2), base.height - (bottom - top) - 4)
        draw.text((x, y), text, fill=(*LINE_COLOUR, 255), stroke_width=1, stroke_fill=(0, 0, 0, 255))
    return np.array(Image.alpha_composite(base, shade).convert("RGB"))


def to_jpeg(chw: torch.Tensor, quality: int = 85) -> bytes:
    # Pillow, not torchvision.io.encode_jpeg: torchvision deprecated its image codecs in 0.29. No chroma
    # subsampling: 2 px box lines keep their colour (4:2:0 smears it into the picture).
    out = io.BytesIO()
    Image.fromarray(chw.permute(1, 2, 0).numpy()).save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()


@dataclass
class AnnotatedJob:
    """One frame to draw and encode; holds its own reference to the image (the frame's is released)."""

    camera: str
    image: np.ndarray
    pts: float
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    overlay: Overlay | None = None
    scale: tuple[float, float] = (1.0, 1.0)  # source pixels per image pixel (boxes and zones are in source pixels)
    predicted: np.ndarray | None = None  # per box: predicted by the tracker for a missed object (FrameResult)


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0  # live frames the writer had no room for
    errors: int = 0
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Close:
    camera: str


_STOP = object()


class _Output:
    """One MP4 file being written: libx264 ultrafast, yuv420p, pts from the source's seconds."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path, self.width, self.height = path, width, height
        self.container = av.open(str(path), mode="w")
        try:
            self.stream = self.container.add_stream("libx264", rate=25)  # nominal; the pts carry the real timing
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
            self.stream.time_base = VIDEO_TIME_BASE
            self.stream.codec_context.time_base = VIDEO_TIME_BASE
            self.stream.options = {"preset": "ultrafast", "crf": "23"}
        except Exception:
            self.container.close()
            raise
        self.first_pts: float | None = None
        self.last_ticks = -1
        self.frames = 0

    def write(self, rgb: np.ndarray, pts: float) -> None:
        if self.first_pts is None:
            self.first_pts = pts
        # A reconnecting camera may restart its clock: keep the file's pts strictly increasing.
        ticks = max(round((pts - self.first_pts) / VIDEO_TIME_BASE), self.last_ticks + 1)
        self.last_ticks = ticks
        frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(np.ascontiguousarray(rgb)), format="yuv420p")
        frame.pts, frame.time_base = ticks, VIDEO_TIME_BASE
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()


class AnnotatedVideoWriter(threading.Thread):
    """Writes `DIR/<camera>.mp4` per camera; a camera's later segments in the same run (it was removed and added
    again, or its frame size changed) go to `<camera>-2.mp4`, `<camera>-3.mp4`, ..."""

    def __init__(self, directory: Path, label_names: Sequence[str], queue_size: int = 32) -> None:
        super().__init__(name="annotated-writer", daemon=True)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.label_names = label_names
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._outputs: dict[str, _Output] = {}
        self._failed: set[str] = set()  # cameras whose file failed: skipped until their stream ends
        self._segments: dict[str, int] = {}
        self._lock = threading.Lock()
        self.stats: dict[str, WriterStats] = {}

    def _stats(self, camera: str) -> WriterStats:
        with self._lock:
            return self.stats.setdefault(camera, WriterStats())

    def snapshot(self) -> dict[str, WriterStats]:
        with self._lock:
            return {name: WriterStats(s.written, s.dropped, s.errors, list(s.files)) for name, s in self.stats.items()}

    def submit(self, job: AnnotatedJob, wait: bool, stop: threading.Event | None = None) -> bool:
        """Queue a frame. Without `wait` a full queue drops it (counted); with it, wait for room unless `stop` is
        set. Returns whether it was queued."""
        if not wait:
            try:
                self._queue.put_nowait(job)
                return True
            except queue.Full:
                self._stats(job.camera).dropped += 1
                return False
        while True:
            try:
                self._queue.put(job, timeout=0.1)
                return True
            except queue.Full:
                if stop is not None and stop.is_set():
                    self._stats(job.camera).dropped += 1
                    return False

    def end_stream(self, camera: str) -> None:
        """The camera's stream ended: finish its file."""
        self._queue.put(_Close(camera))

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish every file and end the thread."""
        if self.is_alive():
            self._queue.put(_STOP)
            self.join(timeout)
            if self.is_alive():
                log.warning("annotated video writer did not finish within %.0f s; its files may be incomplete",
                            timeout)

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                for camera in list(self._outputs):
                    self._finish(camera)
                return
            if isinstance(item, _Close):
                self._finish(item.camera)
                self._failed.discard(item.camera)
                continue
            assert isinstance(item, AnnotatedJob)
            if item.camera in self._failed:
                continue
            try:
                self._write(item)
            except Exception as exc:  # disk full, codec trouble: this camera's file stops, nothing else does
                self._stats(item.camera).errors += 1
                self._failed.add(item.camera)
                out = self._outputs.pop(item.camera, None)
                where = out.path if out is not None else self.directory
                log.error("camera %r: annotated video %s failed (%s: %s); not writing it any more",
                          item.camera, where, type(exc).__name__, exc)
                if out is not None:
                    try:
                        out.container.close()
                    except Exception:  # already broken; the first error is the one worth reporting
                        pass

    def _write(self, job: AnnotatedJob) -> None:
        h, w = job.image.shape[:2]
        h, w = h - h % 2, w - w % 2  # yuv420p needs even sizes: drop an odd last row / column
        out = self._outputs.get(job.camera)
        if out is not None and (out.width, out.height) != (w, h):
            log.info("camera %r: frame size changed to %dx%d; starting a new annotated video", job.camera, w, h)
            self._finish(job.camera)
            out = None
        if out is None:
            out = self._outputs[job.camera] = _Output(self._next_path(job.camera), w, h)
            self._stats(job.camera).files.append(str(out.path))
            log.info("camera %r: writing annotated video to %s", job.camera, out.path)
        drawn = annotate(job.image, job.boxes, job.scores, job.labels, job.track_ids, self.label_names, job.overlay,
                          job.scale, job.predicted)
        out.write(drawn.permute(1, 2, 0).numpy()[:h, :w], job.pts)
        self._stats(job.camera).written += 1

    def _next_path(self, camera: str) -> Path:
        n = self._segments[camera] = self._segments.get(camera, 0) + 1
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", camera)  # camera names are already safe; be sure anyway
        return self.directory / (f"{stem}.mp4" if n == 1 else f"{stem}-{n}.mp4")

    def _finish(self, camera: str) -> None:
        out = self._outputs.pop(camera, None)
        if out is None:
            return
        try:
            out.close()
            log.info("camera %r: annotated video %s finished (%d frames)", camera, out.path, out.frames)
        except Exception as exc:
            self._stats(camera).errors += 1
            log.error("camera %r: could not finish annotated video %s: %s", camera, out.path, exc)
