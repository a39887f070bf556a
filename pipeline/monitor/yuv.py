"""RGB -> yuv420p conversion for H.264 encoding (BT.601 limited range), without an rgb24 -> yuv420p swscale pass.

Used by the annotated-video writer; the synthetic scene generator (lab/synth.py) encodes with it too.
"""
from __future__ import annotations

import numpy as np

__all__ = ["rgb_to_yuv420p"]

_Y_COEF = np.array([0.257, 0.504, 0.098], np.float32)
_U_COEF = np.array([-0.148, -0.291, 0.439], np.float32) / 4  # applied to 2x2 sums
_V_COEF = np.array([0.439, -0.368, -0.071], np.float32) / 4


def _mix(f: np.ndarray, coef: np.ndarray, offset: float) -> np.ndarray:
    """``f[..., 0] * c0 + f[..., 1] * c1 + f[..., 2] * c2 + offset`` without temporaries galore."""
    acc = f[..., 0] * coef[0]
    tmp = np.empty_like(acc)
    for k in (1, 2):
        np.multiply(f[..., k], coef[k], out=tmp)
        acc += tmp
    if offset:
        acc += np.float32(offset)
    return acc


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range RGB (H, W, 3) uint8 -> yuv420p array of shape (H*3//2, W).

    Chroma is computed from 2x2-averaged RGB. Layout is Y (H*W), U, V (H*W/4 each),
    as expected by ``av.VideoFrame.from_ndarray(..., format="yuv420p")``.
    """
    h, w = rgb.shape[:2]
    out = np.empty((h * 3 // 2, w), np.uint8)
    f = rgb.astype(np.float32)
    # Per-channel math on strided views: no BLAS (OpenBLAS threading is slow on a busy 2-core box).
    y = _mix(f, _Y_COEF, 16.5)
    out[:h] = y  # always within 16..235: no clipping needed
    rows = f.reshape(h // 2, 2, w * 3).sum(axis=1).reshape(h // 2, w, 3)  # vertical pair sums
    n = (h // 2) * (w // 2)
    flat = out.reshape(-1)
    for coef, start in ((_U_COEF, h * w), (_V_COEF, h * w + n)):
        c = _mix(rows, coef, 0.0)
        c = c[:, 0::2] + c[:, 1::2]  # horizontal pair sums -> 2x2 block average (coef is /4)
        c += np.float32(128.5)
        flat[start:start + n] = c.reshape(-1)
    return out
