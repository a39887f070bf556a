"""Synthetic street-scene video generator with exact ground truth.

There are no downloadable datasets or weights in this project, so the default
detector is trained on video rendered here, the demo clip is rendered here and
the pipeline tests run on clips made here.

A scene is a textured, noisy background with static clutter (muted blobs,
poles, lines, facades, road markings -- never objects) plus moving objects of
three classes with distinct shapes and aspect ratios:

* ``person`` (label 1): tall, w:h ~ 1:2.5 -- head disc, rounded torso, legs.
* ``car``    (label 2): wide, w:h ~ 2:1 -- body, cabin with dark windows, wheels.
* ``sign``   (label 3): square plate with a bold border and a pictogram.

Objects enter and leave the frame, move with near-constant velocity plus a
small random acceleration, and cross/occlude each other (each has a fixed
depth; sprites are alpha-composited back to front).  Per frame we apply a slow
global brightness/tint drift, cheap motion blur for fast objects, Gaussian
sensor noise, and finally H.264 compression by the encoder.

Ground truth conventions
------------------------
* ``box`` is the *full* (unblurred) object extent ``x1, y1, x2, y2`` in pixel
  edge coordinates (``x2``/``y2`` exclusive, so ``w = x2 - x1``) clipped to
  the frame.  Objects entirely outside the frame get no entry.
* ``visibility`` = (object mask pixels inside the frame and not covered by an
  object drawn in front) / (all object mask pixels) -- so both occlusion and
  truncation by the frame border reduce it, as in MOT17.
* Boxes with ``visibility < IGNORE_VISIBILITY`` (0.2) are **kept but marked
  ignored** (:attr:`ObjectTruth.ignored`): ``conf = 0`` in the MOT file (the
  MOTChallenge "do not consider" flag) and ``iscrowd = 1`` in COCO, so
  training can skip them and evaluation neither rewards nor penalises them.

Everything is reproducible from ``seed`` (one :class:`numpy.random.Generator`).
Rendering is vectorised numpy: per-object sprites (premultiplied RGB + alpha)
are drawn once at creation and composited by slicing; the background is built
once per video and per-frame noise comes from a small pre-generated bank
sampled at random offsets.  Encoding fills ``yuv420p`` frames straight from
numpy (BT.601 limited range) instead of going through swscale.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import chain
from pathlib import Path

import av
import numpy as np

from pipeline.monitor.yuv import rgb_to_yuv420p

__all__ = [
    "CLASSES",
    "IGNORE_VISIBILITY",
    "ASPECT_RANGES",
    "SceneSpec",
    "ObjectTruth",
    "VideoTruth",
    "render_frames",
    "write_video",
    "write_mot",
    "read_mot",
    "write_coco",
    "encode_frames",
    "rgb_to_yuv420p",
]

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("person", "car", "sign")
"""Class names; label id of ``CLASSES[i]`` is ``i + 1`` (0 is background)."""

IGNORE_VISIBILITY: float = 0.2
"""Boxes less visible than this are marked ignored (MOT conf 0 / COCO iscrowd 1)."""

PERSON, CAR, SIGN = 1, 2, 3

# Width/height aspect ranges per label (box w / box h).
ASPECT_RANGES: dict[int, tuple[float, float]] = {
    PERSON: (0.36, 0.44),
    CAR: (1.8, 2.3),
    SIGN: (0.9, 1.1),
}
_CLASS_PROBS = np.array([0.45, 0.35, 0.20])
# Speed ranges as a fraction of frame width per frame.
_SPEED_RANGES: dict[int, tuple[float, float]] = {
    PERSON: (0.0025, 0.008),
    CAR: (0.008, 0.03),
    SIGN: (0.001, 0.005),
}
_SS = 3  # sprite supersampling factor (anti-aliasing)
_NOISE_BANK = 4
_NOISE_PAD = 16


@dataclass(frozen=True)
class SceneSpec:
    """Parameters of one synthetic clip."""

    width: int = 640
    height: int = 360
    fps: float = 25.0
    frames: int = 250
    max_objects: int = 8  # concurrently in view (approx)
    min_size: int = 12  # px, object height lower bound
    max_size_frac: float = 1 / 3  # of frame height
    noise_std: float = 4.0
    blur: bool = True
    lighting: bool = True
    gop: int | None = None  # None -> round(fps)
    crf: int = 23

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.width < 32 or self.height < 32:
            raise ValueError(f"width/height must be even and >= 32, got {self.width}x{self.height}")
        if self.frames < 1 or self.fps <= 0 or self.max_objects < 0:
            raise ValueError("frames must be >= 1, fps > 0, max_objects >= 0")
        if self.min_size < 4 or self.max_size_frac <= 0:
            raise ValueError("min_size must be >= 4 and max_size_frac > 0")

    @property
    def keyint(self) -> int:
        """Effective GOP length in frames."""
        return max(1, int(round(self.fps)) if self.gop is None else int(self.gop))


@dataclass
class ObjectTruth:
    """Ground truth of one object in one frame."""

    frame_index: int  # 0-based
    track_id: int  # positive
    label: int  # 1..len(CLASSES)
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, clipped to frame
    visibility: float  # 0..1

    @property
    def ignored(self) -> bool:
        """True when too occluded/truncated to count (visibility < IGNORE_VISIBILITY)."""
        return self.visibility < IGNORE_VISIBILITY

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        """Box as ``x, y, w, h``."""
        x1, y1, x2, y2 = self.box
        return (x1, y1, x2 - x1, y2 - y1)

    @property
    def class_name(self) -> str:
        """Name of :attr:`label`."""
        return CLASSES[self.label - 1]


@dataclass
class VideoTruth:
    """Ground truth of a whole rendered clip."""

    path: Path
    spec: SceneSpec
    seed: int
    objects: list[ObjectTruth] = field(default_factory=list)

    def per_frame(self) -> list[list[ObjectTruth]]:
        """Objects grouped by frame index (``spec.frames`` lists, possibly empty)."""
        out: list[list[ObjectTruth]] = [[] for _ in range(self.spec.frames)]
        for o in self.objects:
            out[o.frame_index].append(o)
        return out

    def track_ids(self) -> list[int]:
        """Sorted distinct track ids."""
        return sorted({o.track_id for o in self.objects})


# --------------------------------------------------------------------------- drawing helpers


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV (0..1) -> RGB float32 0..255."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255.0


def _vivid(rng: np.random.Generator) -> np.ndarray:
    return _hsv(float(rng.random()), float(rng.uniform(0.65, 1.0)), float(rng.uniform(0.6, 1.0)))


def _grid(w: int, h: int, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates (in sprite pixel units)."""
    ys = (np.arange(h * ss, dtype=np.float32) + 0.5) / ss
    xs = (np.arange(w * ss, dtype=np.float32) + 0.5) / ss
    return ys[:, None], xs[None, :]


def _rrect(y: np.ndarray, x: np.ndarray, x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
    """Rounded rectangle mask."""
    r = max(0.0, min(r, (x1 - x0) / 2, (y1 - y0) / 2))
    dx = np.maximum(np.maximum(x0 + r - x, x - (x1 - r)), 0.0)
    dy = np.maximum(np.maximum(y0 + r - y, y - (y1 - r)), 0.0)
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (dx * dx + dy * dy <= r * r + 1e-6)


def _ellipse(y: np.ndarray, x: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / max(rx, 1e-3)) ** 2 + ((y - cy) / max(ry, 1e-3)) ** 2 <= 1.0


def _convex(y: np.ndarray, x: np.ndarray, pts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Mask of a convex polygon given counter-clockwise or clockwise points (x, y)."""
    n = len(pts)
    inside_pos = np.ones(np.broadcast_shapes(y.shape, x.shape), bool)
    inside_neg = inside_pos.copy()
    for i in range(n):
        (ax, ay), (bx, by) = pts[i], pts[(i + 1) % n]
        cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax)
        inside_pos &= cross >= 0
        inside_neg &= cross <= 0
    return inside_pos | inside_neg


@dataclass
class _Sprite:
    """Premultiplied RGB + alpha of one object (float32), plus a hard mask for visibility."""

    prem: np.ndarray  # (h, w, 3)
    inv_alpha: np.ndarray  # (h, w, 1) = 1 - alpha
    mask: np.ndarray  # (h, w) bool, alpha >= 0.5
    area: int


def _finish(layers: list[tuple[np.ndarray, np.ndarray]], w: int, h: int, shade: np.ndarray | None) -> _Sprite:
    """Paint (mask, colour) layers at supersampled resolution and downsample."""
    hs, ws = h * _SS, w * _SS
    rgb = np.zeros((hs, ws, 3), np.float32)
    alpha = np.zeros((hs, ws), np.float32)
    for mask, colour in layers:
        m = np.broadcast_to(mask, (hs, ws))
        rgb[m] = colour
        alpha[m] = 1.0
    if shade is not None:
        rgb *= shade[..., None] if shade.ndim == 2 else shade
    prem = (rgb * alpha[..., None]).reshape(h, _SS, w, _SS, 3).mean(axis=(1, 3))
    a = alpha.reshape(h, _SS, w, _SS).mean(axis=(1, 3))
    mask = a >= 0.5
    if not mask.any():  # degenerate tiny sprite: keep at least the centre pixel
        mask[h // 2, w // 2] = True
    return _Sprite(
        prem=np.ascontiguousarray(prem, np.float32),
        inv_alpha=np.ascontiguousarray((1.0 - a)[..., None], np.float32),
        mask=mask,
        area=int(mask.sum()),
    )


def _person_sprite(w: int, h: int, rng: np.random.Generator) -> _Sprite:
    y, x = _grid(w, h, _SS)
    skins = [(224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (110, 70, 40)]
    skin = np.array(skins[int(rng.integers(len(skins)))], np.float32)
    shirt = _vivid(rng)
    pants = _hsv(float(rng.random()), float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.15, 0.45)))
    hair = np.array((30, 20, 10), np.float32) * float(rng.uniform(0.5, 2.5))
    r_head = min(0.105 * h, 0.5 * w)
    cx = w / 2
    # legs (slightly apart; random stride so not all people look alike)
    stride = float(rng.uniform(0.0, 0.12)) * w
    leg_w = 0.36 * w
    layers = [
        (_rrect(y, x, 0.08 * w - stride, 0.55 * h, 0.08 * w - stride + leg_w, h, 0.1 * w), pants),
        (_rrect(y, x, 0.92 * w + stride - leg_w, 0.55 * h, 0.92 * w + stride, h, 0.1 * w), pants),
        (y >= 0.96 * h, np.array((25, 25, 25), np.float32)),  # shoes (intersected below)
        (_rrect(y, x, 0.0, 0.2 * h, w, 0.62 * h, 0.3 * w), shirt),
        (_ellipse(y, x, cx, r_head, r_head, r_head), skin),
        (_ellipse(y, x, cx, r_head * 0.75, r_head, r_head * 0.8) & (y < r_head * 0.8), hair),
    ]
    legs = layers[0][0] | layers[1][0]
    layers[2] = (layers[2][0] & legs, layers[2][1])
    shade = (1.12 - 0.25 * (y / h)) * np.ones_like(x)
    return _finish(layers, w, h, shade)


def _car_sprite(w: int, h: int, rng: np.random.Generator, facing_left: bool) -> _Sprite:
    y, x = _grid(w, h, _SS)
    if facing_left:
        x = w - x
    body = _vivid(rng) if rng.random() < 0.75 else _hsv(0.0, 0.0, float(rng.choice([0.15, 0.85, 0.6])))
    glass = np.array((40, 55, 75), np.float32) * float(rng.uniform(0.7, 1.3))
    tyre = np.array((22, 22, 24), np.float32)
    hub = np.array((150, 150, 155), np.float32)
    top = float(rng.uniform(0.28, 0.36))
    cab = [(0.30 * w, 0.0), (0.70 * w, 0.0), (0.86 * w, 0.42 * h), (0.16 * w, 0.42 * h)]
    win_l = [(0.33 * w, 0.07 * h), (0.48 * w, 0.07 * h), (0.48 * w, 0.38 * h), (0.22 * w, 0.38 * h)]
    win_r = [(0.52 * w, 0.07 * h), (0.67 * w, 0.07 * h), (0.79 * w, 0.38 * h), (0.52 * w, 0.38 * h)]
    rw = 0.19 * h
    layers = [
        (_convex(y, x, cab), body),
        (_rrect(y, x, 0.0, top * h + 0.08 * h, w, 0.86 * h, 0.14 * h), body),
        (_convex(y, x, win_l) | _convex(y, x, win_r), glass),
        (_rrect(y, x, 0.0, 0.72 * h, w, 0.80 * h, 0.04 * h), body * 0.55),  # bumper line
        (_ellipse(y, x, 0.2 * w, h - rw, rw, rw) | _ellipse(y, x, 0.8 * w, h - rw, rw, rw), tyre),
        (_ellipse(y, x, 0.2 * w, h - rw, rw * 0.45, rw * 0.45) | _ellipse(y, x, 0.8 * w, h - rw, rw * 0.45, rw * 0.45), hub),
        (_rrect(y, x, 0.955 * w, 0.50 * h, w, 0.62 * h, 0.02 * h), np.array((255, 240, 150), np.float32)),
        (_rrect(y, x, 0.0, 0.50 * h, 0.035 * w, 0.62 * h, 0.02 * h), np.array((200, 20, 20), np.float32)),
    ]
    shade = (1.15 - 0.3 * (y / h)) * np.ones_like(x)
    return _finish(layers, w, h, shade)


def _sign_sprite(w: int, h: int, rng: np.random.Generator) -> _Sprite:
    y, x = _grid(w, h, _SS)
    s = min(w, h)
    bw = max(0.12 * s, 1.5)  # border width, at least ~1.5 px
    white = np.array((245, 245, 240), np.float32)
    black = np.array((20, 20, 20), np.float32)
    style = int(rng.integers(4))
    plate = _rrect(y, x, 0.0, 0.0, w, h, 0.12 * s)
    inner = _rrect(y, x, bw, bw, w - bw, h - bw, 0.08 * s)
    cx = w / 2
    if style == 0:  # red border, white field, black bar
        layers = [(plate, np.array((210, 20, 30), np.float32)), (inner, white),
                  (_rrect(y, x, 0.25 * w, 0.42 * h, 0.75 * w, 0.58 * h, 0.0), black)]
    elif style == 1:  # blue plate, white border, white arrow
        arrow = _convex(y, x, [(0.5 * w, 0.2 * h), (0.78 * w, 0.5 * h), (0.22 * w, 0.5 * h)]) | _rrect(
            y, x, 0.41 * w, 0.45 * h, 0.59 * w, 0.8 * h, 0.0)
        layers = [(plate, white), (inner, np.array((20, 70, 200), np.float32)), (arrow, white)]
    elif style == 2:  # yellow warning plate with black border and triangle
        tri = _convex(y, x, [(cx, 0.22 * h), (0.78 * w, 0.74 * h), (0.22 * w, 0.74 * h)])
        layers = [(plate, black), (inner, np.array((250, 205, 20), np.float32)), (tri, black)]
    else:  # green plate, white border, white text bars
        layers = [(plate, white), (inner, np.array((10, 130, 60), np.float32)),
                  (_rrect(y, x, 0.25 * w, 0.3 * h, 0.75 * w, 0.42 * h, 0.0), white),
                  (_rrect(y, x, 0.25 * w, 0.55 * h, 0.62 * w, 0.67 * h, 0.0), white)]
    return _finish(layers, w, h, None)


def _make_sprite(label: int, w: int, h: int, rng: np.random.Generator, facing_left: bool) -> _Sprite:
    if label == PERSON:
        return _person_sprite(w, h, rng)
    if label == CAR:
        return _car_sprite(w, h, rng, facing_left)
    return _sign_sprite(w, h, rng)


def _blurred(sp: _Sprite, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Average of shifted copies of a sprite along (dx, dy); returns prem, inv_alpha, offset x, y."""
    n = int(min(5, max(2, math.ceil(max(abs(dx), abs(dy)) / 2) + 1)))
    offs = [(round(dx * (i / (n - 1) - 0.5)), round(dy * (i / (n - 1) - 0.5))) for i in range(n)]
    ox0, oy0 = min(o[0] for o in offs), min(o[1] for o in offs)
    h, w = sp.mask.shape
    W = w + max(o[0] for o in offs) - ox0
    H = h + max(o[1] for o in offs) - oy0
    prem = np.zeros((H, W, 3), np.float32)
    alpha = np.zeros((H, W, 1), np.float32)
    a = 1.0 - sp.inv_alpha
    for ox, oy in offs:
        xs, ys = ox - ox0, oy - oy0
        prem[ys:ys + h, xs:xs + w] += sp.prem
        alpha[ys:ys + h, xs:xs + w] += a
    prem /= n
    alpha /= n
    return prem, 1.0 - alpha, ox0, oy0


# --------------------------------------------------------------------------- background


def _upsample(small: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear upsampling of a (h, w[, c]) array to (H, W[, c])."""
    h, w = small.shape[:2]
    ys = np.linspace(0, h - 1, H, dtype=np.float32)
    xs = np.linspace(0, w - 1, W, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), h - 2)
    x0 = np.minimum(xs.astype(np.int64), w - 2)
    fy = (ys - y0).reshape((H, 1) + (1,) * (small.ndim - 2))
    fx = (xs - x0).reshape((1, W) + (1,) * (small.ndim - 2))
    rows = small[y0] * (1 - fy) + small[y0 + 1] * fy
    return (rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx).astype(np.float32)


def _blend_mask(img: np.ndarray, x0: int, y0: int, cov: np.ndarray, colour: np.ndarray, opacity: float) -> None:
    """Blend colour into img[y0:, x0:] with per-pixel coverage cov (clipped to img)."""
    H, W = img.shape[:2]
    h, w = cov.shape
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if xa >= xb or ya >= yb:
        return
    c = cov[ya - y0:yb - y0, xa - x0:xb - x0, None] * opacity
    reg = img[ya:yb, xa:xb]
    reg *= 1.0 - c
    reg += c * colour


def _muted(rng: np.random.Generator, ref: np.ndarray, spread: float) -> np.ndarray:
    """A desaturated colour near a reference colour."""
    grey = float(ref.mean()) + float(rng.uniform(-spread, spread))
    tint = rng.uniform(-12, 12, 3).astype(np.float32)
    return np.clip(grey + tint + 0.3 * (ref - ref.mean()), 10, 245).astype(np.float32)


def _make_background(W: int, H: int, rng: np.random.Generator) -> np.ndarray:
    """Street-like textured background with static clutter, float32 (H, W, 3)."""
    horizon = int(H * rng.uniform(0.28, 0.45))
    sky_top = _hsv(float(rng.uniform(0.5, 0.65)), float(rng.uniform(0.05, 0.25)), float(rng.uniform(0.55, 0.8)))
    ground = _hsv(float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.0, 0.12)), float(rng.uniform(0.3, 0.5)))
    t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    sky = sky_top * (1.0 - 0.25 * t)
    img = np.where(np.arange(H)[:, None, None] < horizon, sky, ground * (0.9 + 0.2 * t)).astype(np.float32)
    img = np.broadcast_to(img, (H, W, 3)).copy()

    # Facades above the horizon (muted, large, with window grids).
    x = int(rng.integers(-20, 10))
    while x < W:
        bw = int(rng.integers(max(8, W // 12), max(10, W // 4)))
        top = int(rng.integers(0, max(1, horizon - 10)))
        col = _muted(rng, sky_top, 45)
        cov = np.ones((horizon - top, bw), np.float32)
        _blend_mask(img, x, top, cov, col, 0.95)
        wc = _muted(rng, col, 30)
        step = int(rng.integers(6, 14))
        wy, wx = np.mgrid[0:horizon - top, 0:bw]
        win = (((wy % step) < step // 2) & ((wx % step) < step // 2)).astype(np.float32)
        _blend_mask(img, x, top, win, wc, 0.5)
        x += bw + int(rng.integers(0, 20))

    # Road band with dashed lane markings.
    r0 = int(rng.uniform(horizon + 0.1 * H, horizon + 0.3 * H))
    r1 = min(H, r0 + int(rng.uniform(0.25, 0.45) * H))
    road = _muted(rng, ground, 15) * 0.8
    _blend_mask(img, 0, r0, np.ones((r1 - r0, W), np.float32), road, 0.9)
    lane_y = (r0 + r1) // 2
    dash, gap = int(rng.integers(15, 40)), int(rng.integers(10, 30))
    xs = np.arange(W)
    lane = np.broadcast_to(((xs % (dash + gap)) < dash).astype(np.float32), (max(2, H // 120), W))
    _blend_mask(img, 0, lane_y, np.ascontiguousarray(lane), np.array((200, 200, 190), np.float32), 0.45)

    # Multi-octave texture (luminance) + low-frequency colour variation.
    tex = np.zeros((H, W), np.float32)
    for (gh, gw), amp in (((4, 6), 14.0), ((12, 20), 8.0), ((40, 70), 5.0), ((H // 3, W // 3), 3.0)):
        tex += _upsample(rng.standard_normal((gh, gw)).astype(np.float32), H, W) * amp
    img += tex[..., None]
    img += _upsample(rng.standard_normal((3, 4, 3)).astype(np.float32) * 6.0, H, W)

    # Static clutter: blobs, poles/lines, rectangles -- muted, never object-like.
    n = int((W * H) / 2500 * rng.uniform(0.6, 1.2))
    for _ in range(n):
        kind = rng.choice(4, p=[0.35, 0.3, 0.2, 0.15])
        cx, cy = float(rng.uniform(0, W)), float(rng.uniform(0, H))
        ref = img[int(cy) % H, int(cx) % W]
        col = _muted(rng, ref, 40)
        op = float(rng.uniform(0.35, 0.85))
        if kind == 0:  # soft irregular blob (rotated ellipse with noisy radius)
            rx, ry = float(rng.uniform(3, W / 14)), float(rng.uniform(3, H / 14))
            R = int(max(rx, ry)) + 2
            yy, xx = np.mgrid[-R:R + 1, -R:R + 1].astype(np.float32)
            a = float(rng.uniform(0, np.pi))
            u = (xx * math.cos(a) + yy * math.sin(a)) / rx
            v = (-xx * math.sin(a) + yy * math.cos(a)) / ry
            ang = np.arctan2(yy, xx)
            wob = 1.0 + 0.15 * np.sin(3 * ang + float(rng.uniform(0, 6))) + 0.1 * np.sin(5 * ang)
            d = np.sqrt(u * u + v * v) / wob
            cov = np.clip((1.0 - d) * min(rx, ry) + 0.5, 0, 1)
            _blend_mask(img, int(cx) - R, int(cy) - R, cov, col, op)
        elif kind == 1:  # line / pole
            if rng.random() < 0.4:  # vertical pole (thin, long: a hard negative for persons)
                L, a = float(rng.uniform(0.1, 0.5) * H), math.pi / 2 + float(rng.normal(0, 0.03))
                th = float(rng.uniform(1, 3))
            else:
                L, a = float(rng.uniform(10, W / 4)), float(rng.uniform(0, np.pi))
                th = float(rng.uniform(1, 4))
            dx, dy = L * math.cos(a), L * math.sin(a)
            x0i, y0i = int(min(cx, cx + dx) - th - 2), int(min(cy, cy + dy) - th - 2)
            x1i, y1i = int(max(cx, cx + dx) + th + 3), int(max(cy, cy + dy) + th + 3)
            yy, xx = np.mgrid[y0i:y1i, x0i:x1i].astype(np.float32)
            tt = np.clip(((xx - cx) * dx + (yy - cy) * dy) / (L * L), 0, 1)
            dist = np.hypot(xx - (cx + tt * dx), yy - (cy + tt * dy))
            cov = np.clip(th / 2 + 0.5 - dist, 0, 1)
            _blend_mask(img, x0i, y0i, cov, col, op)
        elif kind == 2:  # flat or outlined low-contrast rectangle (thin or large, not car/sign-like)
            rw, rh = int(rng.uniform(6, W / 6)), int(rng.uniform(3, H / 10))
            cov = np.ones((rh, rw), np.float32)
            if rng.random() < 0.5 and rw > 6 and rh > 6:
                cov[2:-2, 2:-2] = 0.0  # outline only
            _blend_mask(img, int(cx), int(cy), cov, col, op * 0.7)
        else:  # speckle cluster (leaves, litter)
            k = int(rng.integers(10, 40))
            R = int(rng.uniform(6, 25))
            cov = np.zeros((2 * R + 3, 2 * R + 3), np.float32)
            pts = rng.integers(0, 2 * R + 1, (k, 2))
            cov[pts[:, 0], pts[:, 1]] = 1.0
            cov[pts[:, 0] + 1, pts[:, 1]] = 1.0
            cov[pts[:, 0], pts[:, 1] + 1] = 1.0
            _blend_mask(img, int(cx) - R, int(cy) - R, cov, col, op)
    return np.clip(img, 0, 255).astype(np.float32)


# --------------------------------------------------------------------------- scene simulation


@dataclass
class _Obj:
    track_id: int
    label: int
    w: int
    h: int
    x: float
    y: float
    vx: float
    vy: float
    v0x: float
    v0y: float
    depth: float
    sprite: _Sprite
    entered: bool
    age: int = 0
    blur_key: tuple[int, int] | None = None
    blur_cache: tuple[np.ndarray, np.ndarray, int, int] | None = None


class _Scene:
    """Object population and dynamics for one clip."""

    def __init__(self, spec: SceneSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.rng = rng
        self.W, self.H = spec.width, spec.height
        self.objs: list[_Obj] = []
        self.next_id = 1
        self.target = self._new_target()

    def _new_target(self) -> int:
        m = self.spec.max_objects
        return int(self.rng.integers(max(1, m // 2), m + 1)) if m > 0 else 0

    def spawn(self, label: int, inside: bool) -> None:
        rng, W, H = self.rng, self.W, self.H
        lo, hi = float(self.spec.min_size), max(float(self.spec.min_size), self.spec.max_size_frac * H)
        h = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        if label == SIGN:
            h = int(round(max(lo, h * 0.7)))
        a = float(rng.uniform(*ASPECT_RANGES[label]))
        w = max(3, int(round(h * a)))
        if w > 0.7 * W:  # keep very wide cars reasonable on narrow frames
            w = int(0.7 * W)
            h = max(int(lo), int(round(w / a)))
        speed = float(rng.uniform(*_SPEED_RANGES[label])) * W
        if label == CAR:
            ang = float(rng.normal(0, 0.08))
        elif label == PERSON:
            ang = float(rng.normal(0, 0.35))
        else:
            ang = float(rng.uniform(-math.pi, math.pi))
        sgn = 1.0 if label == SIGN or rng.random() < 0.5 else -1.0
        vx, vy = sgn * speed * math.cos(ang), speed * math.sin(ang)
        # target point inside the frame; entering objects start just outside, on the way to it
        tx, ty = float(rng.uniform(-0.3 * w, W - 0.7 * w)), float(rng.uniform(-0.3 * h, H - 0.7 * h))
        if inside:
            x, y = tx, ty
        else:
            s = math.inf
            if vx > 1e-6:
                s = min(s, (tx + w) / vx)
            elif vx < -1e-6:
                s = min(s, (W - tx) / -vx)
            if vy > 1e-6:
                s = min(s, (ty + h) / vy)
            elif vy < -1e-6:
                s = min(s, (H - ty) / -vy)
            s = 0.0 if not math.isfinite(s) else s
            x, y = tx - vx * s, ty - vy * s
        sprite = _make_sprite(label, w, h, rng, facing_left=vx < 0)
        self.objs.append(_Obj(self.next_id, label, w, h, x, y, vx, vy, vx, vy,
                              float(rng.random()), sprite, entered=inside))
        self.next_id += 1

    def in_view(self, o: _Obj) -> bool:
        ix, iy = int(round(o.x)), int(round(o.y))
        return ix < self.W and iy < self.H and ix + o.w > 0 and iy + o.h > 0

    def populate(self) -> None:
        """Initial objects inside the frame; the first three cover every class."""
        n = self.target
        first = list(self.rng.permutation(len(CLASSES)) + 1) if n >= len(CLASSES) else []
        for i in range(n):
            label = int(first[i]) if i < len(first) else int(self.rng.choice(len(CLASSES), p=_CLASS_PROBS)) + 1
            self.spawn(label, inside=True)

    def step(self, t: int) -> None:
        """Advance dynamics by one frame, remove departed objects and spawn new ones."""
        rng = self.rng
        for o in self.objs:
            speed0 = math.hypot(o.v0x, o.v0y)
            ax, ay = rng.normal(0.0, 0.03 * speed0 + 0.01, 2)
            o.vx += float(ax) + 0.05 * (o.v0x - o.vx)
            o.vy += float(ay) + 0.05 * (o.v0y - o.vy)
            o.x += o.vx
            o.y += o.vy
            o.age += 1
        keep = []
        for o in self.objs:
            vis = self.in_view(o)
            o.entered |= vis
            if (o.entered and not vis) or (not o.entered and o.age > 200):
                continue
            keep.append(o)
        self.objs = keep
        if t % 50 == 0:
            self.target = self._new_target()
        n_view = sum(self.in_view(o) for o in self.objs)
        if n_view < self.target and rng.random() < 0.2:
            self.spawn(int(rng.choice(len(CLASSES), p=_CLASS_PROBS)) + 1, inside=False)


def _composite(buf: np.ndarray, prem: np.ndarray, inv_alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-composite a premultiplied sprite into buf at (x, y), clipped to the frame."""
    H, W = buf.shape[:2]
    h, w = inv_alpha.shape[:2]
    xa, ya, xb, yb = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if xa >= xb or ya >= yb:
        return
    reg = buf[ya:yb, xa:xb]
    reg *= inv_alpha[ya - y:yb - y, xa - x:xb - x]
    reg += prem[ya - y:yb - y, xa - x:xb - x]


def _lighting(spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """Per-frame RGB gains (frames, 3): slow brightness drift plus a faint tint drift."""
    t = np.arange(spec.frames, dtype=np.float64)[:, None]
    base = float(rng.uniform(0.85, 1.1))
    p1, p2 = rng.uniform(4 * spec.fps, 16 * spec.fps, 2)
    a1, a2 = rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.06)
    ph = rng.uniform(0, 2 * np.pi, 6)
    tint_p = rng.uniform(6 * spec.fps, 20 * spec.fps)
    g = base * (1 + a1 * np.sin(2 * np.pi * t / p1 + ph[0]) + a2 * np.sin(2 * np.pi * t / p2 + ph[1]))
    tint = 1 + 0.03 * np.sin(2 * np.pi * t / tint_p + ph[None, 3:6])
    gains = (g * tint).astype(np.float32)
    return gains if spec.lighting else np.ones_like(gains)


def render_frames(spec: SceneSpec, seed: int) -> Iterator[tuple[np.ndarray, list[ObjectTruth]]]:
    """Yield (rgb uint8 HxWx3, truths) per frame, without encoding (used for training and tests).

    Each yielded array is a fresh array owned by the caller.
    """
    rng = np.random.default_rng(seed)
    W, H = spec.width, spec.height
    bg = _make_background(W, H, rng)
    gains = _lighting(spec, rng)
    bank: np.ndarray | None = None
    if spec.noise_std > 0:
        bank = rng.standard_normal((_NOISE_BANK, H + _NOISE_PAD, W + _NOISE_PAD, 3), dtype=np.float32)
        bank *= np.float32(spec.noise_std)
        bank += np.float32(0.5)  # rounding offset for the float -> uint8 truncation
    scene = _Scene(spec, rng)
    scene.populate()
    buf = np.empty((H, W, 3), np.float32)
    blur_thresh = 2.5  # px per frame; below this no blur
    for t in range(spec.frames):
        np.copyto(buf, bg)
        order = sorted(scene.objs, key=lambda o: o.depth)
        idbuf = np.zeros((H, W), np.int16)
        placed: list[tuple[_Obj, int, int, int]] = []
        for slot, o in enumerate(order, start=1):
            ix, iy = int(round(o.x)), int(round(o.y))
            if not (ix < W and iy < H and ix + o.w > 0 and iy + o.h > 0):
                continue
            sp = o.sprite
            speed = math.hypot(o.vx, o.vy)
            if spec.blur and speed > blur_thresh:
                key = (int(round(0.5 * o.vx)), int(round(0.5 * o.vy)))  # half-frame shutter
                if key != o.blur_key:
                    o.blur_key, o.blur_cache = key, _blurred(sp, *key)
                prem, inv, ox, oy = o.blur_cache  # type: ignore[misc]
                _composite(buf, prem, inv, ix + ox, iy + oy)
            else:
                _composite(buf, sp.prem, sp.inv_alpha, ix, iy)
            xa, ya, xb, yb = max(ix, 0), max(iy, 0), min(ix + o.w, W), min(iy + o.h, H)
            idbuf[ya:yb, xa:xb][sp.mask[ya - iy:yb - iy, xa - ix:xb - ix]] = slot
            placed.append((o, slot, ix, iy))
        truths: list[ObjectTruth] = []
        for o, slot, ix, iy in placed:
            xa, ya, xb, yb = max(ix, 0), max(iy, 0), min(ix + o.w, W), min(iy + o.h, H)
            visible = int(np.count_nonzero(idbuf[ya:yb, xa:xb] == slot))
            truths.append(ObjectTruth(t, o.track_id, o.label, (float(xa), float(ya), float(xb), float(yb)),
                                      round(visible / o.sprite.area, 4)))
        truths.sort(key=lambda tr: tr.track_id)
        buf *= gains[t]
        if bank is not None:
            k = int(rng.integers(_NOISE_BANK))
            dy, dx = (int(v) for v in rng.integers(0, _NOISE_PAD + 1, 2))
            buf += bank[k, dy:dy + H, dx:dx + W]
        else:
            buf += np.float32(0.5)
        np.clip(buf, 0.0, 255.0, out=buf)
        yield buf.astype(np.uint8), truths
        scene.step(t + 1)


# --------------------------------------------------------------------------- encoding




def _fps_fraction(fps: float) -> Fraction:
    """Exact frame rate: NTSC-style rates (29.97, 23.976, 59.94) snap to N*1000/1001."""
    ntsc = round(fps * 1.001)
    if ntsc > 0 and abs(fps - ntsc * 1000 / 1001) < 5e-3 and abs(fps - round(fps)) > 5e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def encode_frames(path: str | Path, frames: Iterable[np.ndarray], fps: float, gop: int | None = None,
                  crf: int = 23) -> int:
    """Encode RGB frames to H.264; return the number of frames written. Reused by tests to make videos.

    The container follows the file extension (``.mp4``, ``.mkv``, raw Annex-B
    ``.h264``/``.264``, ...). libx264 with ``preset=ultrafast, tune=zerolatency``
    (no B-frames), ``yuv420p``, time base ``1/fps`` with ``pts = index`` and a
    fixed keyframe interval ``gop`` (default ``round(fps)``; no scene-cut keyframes).
    All frames must share one even width/height.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("encode_frames: no frames given")
    h, w = first.shape[:2]
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise ValueError(f"expected uint8 HxWx3 RGB frames, got {first.dtype} {first.shape}")
    if w % 2 or h % 2:
        raise ValueError(f"width/height must be even for yuv420p, got {w}x{h}")
    rate = _fps_fraction(fps)
    tb = Fraction(rate.denominator, rate.numerator)
    keyint = max(1, int(round(fps)) if gop is None else int(gop))
    fmt = "h264" if path.suffix.lower() in (".h264", ".264") else None
    n = 0
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        stream.codec_context.gop_size = keyint
        stream.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "crf": str(int(crf)),
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0",
        }
        for rgb in chain([first], it):
            if rgb.shape != first.shape:
                raise ValueError(f"frame {n} has shape {rgb.shape}, expected {first.shape}")
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(np.ascontiguousarray(rgb)), format="yuv420p")
            frame.pts = n
            frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        for packet in stream.encode(None):
            container.mux(packet)
    log.debug("encoded %d frames %dx%d to %s", n, w, h, path)
    return n


def write_video(path: str | Path, spec: SceneSpec = SceneSpec(), seed: int = 0) -> VideoTruth:
    """Render and encode a video; return its ground truth."""
    truth = VideoTruth(path=Path(path), spec=spec, seed=seed, objects=[])

    def frames() -> Iterator[np.ndarray]:
        for rgb, objs in render_frames(spec, seed):
            truth.objects.extend(objs)
            yield rgb

    n = encode_frames(path, frames(), spec.fps, gop=spec.keyint, crf=spec.crf)
    log.info("wrote %s: %d frames %dx%d, %d boxes, %d tracks (seed %d)", path, n, spec.width, spec.height,
             len(truth.objects), len(truth.track_ids()), seed)
    return truth


# --------------------------------------------------------------------------- ground-truth files


def write_mot(truth: VideoTruth, path: str | Path) -> None:
    """Write MOTChallenge-style ``frame,id,x,y,w,h,conf,class,visibility`` lines.

    ``frame`` is 1-based; ``x, y`` are the 0-based pixel coordinates of the box's
    top-left corner (same as :attr:`ObjectTruth.box`); ``conf`` is 1, or 0 for
    ignored boxes (visibility < IGNORE_VISIBILITY); ``class`` is the label id.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for o in sorted(truth.objects, key=lambda o: (o.frame_index, o.track_id)):
        x, y, w, h = o.xywh
        lines.append(f"{o.frame_index + 1},{o.track_id},{x:.2f},{y:.2f},{w:.2f},{h:.2f},"
                     f"{0 if o.ignored else 1},{o.label},{o.visibility:.4f}\n")
    path.write_text("".join(lines))


def read_mot(path: str | Path) -> list[ObjectTruth]:
    """Parse a file written by :func:`write_mot` back into :class:`ObjectTruth` records."""
    out = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        f, tid, x, y, w, h, _conf, cls, vis = line.split(",")[:9]
        x1, y1 = float(x), float(y)
        out.append(ObjectTruth(int(f) - 1, int(tid), int(float(cls)), (x1, y1, x1 + float(w), y1 + float(h)),
                               float(vis)))
    return out


def write_coco(truths: Sequence[VideoTruth], path: str | Path) -> None:
    """Write a COCO detection JSON covering every frame of every video.

    images: ``id, file_name="<video_stem>/<frame_index:06d>", width, height,
    frame_index`` (0-based), ``video`` (video file name), ``video_id``.
    annotations: ``id, image_id, bbox=[x, y, w, h], area, category_id, iscrowd``
    (1 for ignored low-visibility boxes), ``track_id`` (per video), ``visibility``.
    A top-level ``videos`` list holds per-video metadata (path, seed, fps, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images, anns, videos = [], [], []
    img_id = ann_id = 0
    for vid, truth in enumerate(truths, start=1):
        spec = truth.spec
        videos.append({"id": vid, "name": truth.path.stem, "file_name": truth.path.name, "path": str(truth.path),
                       "seed": truth.seed, "width": spec.width, "height": spec.height, "fps": spec.fps,
                       "frames": spec.frames})
        base = img_id
        for fi in range(spec.frames):
            img_id += 1
            images.append({"id": img_id, "file_name": f"{truth.path.stem}/{fi:06d}", "width": spec.width,
                           "height": spec.height, "frame_index": fi, "video": truth.path.name, "video_id": vid})
        for o in sorted(truth.objects, key=lambda o: (o.frame_index, o.track_id)):
            ann_id += 1
            x, y, w, h = o.xywh
            anns.append({"id": ann_id, "image_id": base + o.frame_index + 1, "bbox": [x, y, w, h],
                         "area": w * h, "category_id": o.label, "iscrowd": int(o.ignored),
                         "track_id": o.track_id, "visibility": o.visibility})
    cats = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(CLASSES)]
    doc = {"info": {"description": "lab.synth synthetic street scenes"}, "videos": videos,
           "images": images, "annotations": anns, "categories": cats}
    path.write_text(json.dumps(doc))
