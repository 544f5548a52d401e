"""The few MATLAB Image Processing Toolbox functions NIQE's published values depend on.

Published no-reference scores (LIVE's NIQE, and the SR papers that report it) were computed in
MATLAB, so a number that is meant to be comparable must be computed the way MATLAB computes it:

* :func:`imresize`: ``imresize(img, scale)``, bicubic (Keys, a = -0.5), antialiased when shrinking
  (the kernel is stretched by ``1/scale``), symmetric padding; not what OpenCV, PIL or torch's
  ``interpolate`` compute.
* :func:`rgb2gray`: ``rgb2gray`` on uint8 (the NTSC weights from the inverse of the YIQ matrix,
  rounded to uint8), and :func:`rgb2y`: the Y of ``rgb2ycbcr`` on uint8 (BT.601 studio range,
  16..235, rounded).

All in float64: MATLAB computes in double.  Pure functions of numpy arrays.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["GRAY_WEIGHTS", "Y_WEIGHTS", "imresize", "rgb2gray", "rgb2y"]

#: ``rgb2gray``'s weights: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]),
#: 0.298936..., 0.587043..., 0.114020... (not the rounded 0.299/0.587/0.114 of OpenCV).
GRAY_WEIGHTS: np.ndarray = np.linalg.inv(
    np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])
)[0]
GRAY_WEIGHTS.flags.writeable = False

#: ``rgb2ycbcr``'s Y row for RGB in 0..255, offset 16: (1/255) * (65.481, 128.553, 24.966), formed
#: as MATLAB forms it (its uint8 scale factor times the matrix), to the last bit.
Y_WEIGHTS: np.ndarray = (1.0 / 255.0) * np.array([65.481, 128.553, 24.966])
Y_WEIGHTS.flags.writeable = False


def _round(x: np.ndarray) -> np.ndarray:
    # MATLAB rounds half away from zero (numpy's round is half to even); the values here are >= 0.
    return np.floor(x + 0.5)


def _weighted_sum(rgb: np.ndarray, weights: np.ndarray, offset: float) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    # imlincomb's order: the three products summed left to right, then the offset.
    return rgb[..., 0] * weights[0] + rgb[..., 1] * weights[1] + rgb[..., 2] * weights[2] + offset


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of uint8 RGB: (H, W, 3) values 0..255 -> (H, W) float64 integers 0..255."""
    return np.clip(_round(_weighted_sum(rgb, GRAY_WEIGHTS, 0.0)), 0, 255)


def rgb2y(rgb: np.ndarray) -> np.ndarray:
    """The Y plane of MATLAB ``rgb2ycbcr`` of uint8 RGB: (H, W, 3) values 0..255 -> (H, W) float64
    integers 16..235 (BT.601: 16 + (65.481 R + 128.553 G + 24.966 B) / 255)."""
    return np.clip(_round(_weighted_sum(rgb, Y_WEIGHTS, 16.0)), 0, 255)


def _cubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic convolution kernel with a = -0.5, MATLAB's "bicubic".
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = 1.5 * ax3 - 2.5 * ax2 + 1.0
    outer = -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    return np.where(ax <= 1.0, inner, np.where(ax <= 2.0, outer, 0.0))


def _contributions(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: (n_out, taps) weights and 0-based input indices, symmetric padding."""
    antialias = scale < 1.0
    width = 4.0 / scale if antialias else 4.0
    x = np.arange(1, n_out + 1, dtype=np.float64)
    # Output pixel x (1-based) sits at input coordinate u: pixel centres, not corners, line up.
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    index = left[:, None] + np.arange(taps)[None, :]
    distance = u[:, None] - index
    weights = scale * _cubic(scale * distance) if antialias else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Indices outside 1..n_in mirror back in (1 2 .. n n .. 2 1 1 2 ..): MATLAB's 'symmetric'.
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    index = mirror[np.mod(index.astype(np.int64) - 1, 2 * n_in)]
    used = np.any(weights != 0.0, axis=0)  # MATLAB drops the all-zero columns
    return weights[:, used], index[:, used]


def _resize_axis(img: np.ndarray, axis: int, n_out: int, scale: float) -> np.ndarray:
    weights, index = _contributions(img.shape[axis], n_out, scale)
    moved = np.moveaxis(img, axis, 0)
    out = np.zeros((n_out,) + moved.shape[1:], dtype=np.float64)
    shape = (n_out,) + (1,) * (moved.ndim - 1)
    for k in range(weights.shape[1]):  # tap by tap, in MATLAB's order of summation
        out += weights[:, k].reshape(shape) * moved[index[:, k]]
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` with its defaults (bicubic, antialiasing), in float64.

    ``img`` is (H, W) or (H, W, C) of any real dtype, resized over its first two axes to
    ``ceil(H * scale)`` x ``ceil(W * scale)``, without rounding or clipping (as MATLAB for double
    input).  Rows are resized first, then columns (MATLAB's order for equal scales).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = np.asarray(img, dtype=np.float64)
    if out.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {out.shape}")
    for axis in (0, 1):
        out = _resize_axis(out, axis, math.ceil(out.shape[axis] * scale), scale)
    return out
