"""NIQE, the no-reference Natural Image Quality Evaluator, as LIVE's MATLAB release computes it.

Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer" (2013);
the steps are those of ``computequality.m`` in LIVE's ``niqe_release`` (which BasicSR and pyiqa
port): a grey or Y plane, rounded; cropped to whole 96x96 blocks; at two scales the MSCN
coefficients ``(I - mu) / (sigma + 1)`` (7x7 Gaussian window, replicated borders), per block 18
features (an asymmetric generalised Gaussian fit of the coefficients and of the products of
neighbours in 4 directions, shape alpha on the grid 0.2:0.001:10); between the scales MATLAB's
``imresize(0.5)``; then the Mahalanobis-like distance between the features' Gaussian and the
pristine one, ``sqrt(d pinv((cov_p + cov_d) / 2) d')``.  Lower is more natural.

The pristine model (``mu_pris_param``, ``cov_pris_param``, ``gaussian_window``: LIVE's
``modelparameters.mat``) comes with :class:`NiqeParams`; :func:`default_params` reads the copy
``vsr.perceptual.fetch`` converts from the basicsr 1.4.2 sdist.

Precision.  Everything is float64, as in MATLAB: on TID2013's I04 (no flat areas) this gives
MATLAB's published value to 4e-14, while float32 filtering (BasicSR's path) is 7e-4 off.  One
place is not a matter of precision: where a 7x7 window is flat, ``I - mu`` is 0 in exact
arithmetic but a rounding residue of either sign in floating point (its sign depends on the
order of the filter's additions), and the AGGD fit counts strictly negative and strictly positive
coefficients, so a flat area's residues decide how many samples the left and right spreads are
averaged over.  That moves scores on pictures with flat areas by up to 0.4 (TID2013's I19),
depending only on rounding.  Here residues below 1e-9 (a thousand times any rounding residue on
a 0..255 scale, and far below any real difference, >= 1e-4 for whole grey levels) are set to 0,
the exact-arithmetic value; float32 filtering does the same by accident (its rounding absorbs
the residue), which is why BasicSR's float32 path lands near MATLAB on such pictures.  MATLAB's
own residues come from its imfilter internals and cannot be reproduced, so on pictures with flat
areas a score matches MATLAB to 1e-3..3e-2 (TID2013: I06 0.001, I03 0.008, I08 0.018, I19 0.030),
not to the last digit.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .matlab import imresize, rgb2gray, rgb2y

log = logging.getLogger(__name__)

__all__ = ["BLOCK", "NiqeParams", "default_params", "niqe"]

#: Block size at the first scale (LIVE's recommended 96x96, without overlap); 48 at the second.
BLOCK = 96
_FEATURES = 18
# |I - mu| at or below this is rounding noise of a flat window (see the module docstring).
_FLAT = 1e-9
# Neighbour directions of the pairwise products (row, column), as circshift in computefeature.m.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@dataclass(frozen=True)
class NiqeParams:
    """The pristine model: ``mu`` (36,), ``cov`` (36, 36) and the Gaussian ``window`` (7, 7),
    read-only float64 arrays."""

    mu: np.ndarray
    cov: np.ndarray
    window: np.ndarray

    def __post_init__(self) -> None:
        n = 2 * _FEATURES
        object.__setattr__(self, "mu", _read_only(np.reshape(self.mu, -1), "mu", (n,)))
        object.__setattr__(self, "cov", _read_only(self.cov, "cov", (n, n)))
        side = np.shape(self.window)[0] if np.ndim(self.window) == 2 else 0
        if side % 2 != 1:
            raise ValueError(f"NiqeParams.window must be square with an odd side, got {np.shape(self.window)}")
        window = np.array(self.window, dtype=np.float64)
        # computequality.m divides the window by its sum; that also makes a window that went
        # through float32 sum to 1 again, else a flat area's I - mu is 1e-6, not a rounding
        # residue, and the score moves by up to 0.4 (I19).
        object.__setattr__(self, "window", _read_only(window / window.sum(), "window", (side, side)))

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, object]) -> NiqeParams:
        """From LIVE's/BasicSR's names: ``mu_pris_param`` (1, 36), ``cov_pris_param`` (36, 36),
        ``gaussian_window`` (7, 7); numpy arrays or CPU torch tensors, used in float64 (parameters
        that went through float32 move scores by less than 1e-5)."""
        missing = sorted({"mu_pris_param", "cov_pris_param", "gaussian_window"} - set(arrays))
        if missing:
            raise KeyError(f"NIQE parameters lack {', '.join(missing)} (have: {', '.join(sorted(arrays))})")
        return cls(
            mu=np.asarray(arrays["mu_pris_param"], dtype=np.float64),
            cov=np.asarray(arrays["cov_pris_param"], dtype=np.float64),
            window=np.asarray(arrays["gaussian_window"], dtype=np.float64),
        )


def _read_only(value: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.array(value, dtype=np.float64)  # a private copy
    if array.shape != shape:
        raise ValueError(f"NiqeParams.{name} must have shape {shape}, got {array.shape}")
    array.flags.writeable = False
    return array


def default_params() -> NiqeParams:
    """LIVE's pristine model, as ``vsr.perceptual.fetch`` keeps it in ``$VSR_HOME/perceptual``."""
    from .fetch import load  # the registry/converter machinery is only needed here

    return NiqeParams.from_arrays(load("niqe"))


def niqe(picture: np.ndarray, params: NiqeParams, *, crop_border: int = 0, convert: str = "y") -> float:
    """NIQE of one picture, as LIVE's MATLAB code gives it (lower is more natural).

    ``picture``: RGB (H, W, 3), uint8 or float in [0, 1], or a grey/Y plane (H, W) or (H, W, 1)
    in the same ranges.  ``convert`` turns RGB into the plane: ``"y"``, the BT.601 Y of MATLAB's
    ``rgb2ycbcr`` (BasicSR's default and what SR papers report), or ``"gray"``, MATLAB's
    ``rgb2gray`` (LIVE's original); both are rounded to whole levels as MATLAB's uint8 results
    are.  ``crop_border`` pixels are removed from each side first (papers crop the scale factor),
    then the plane is cut to whole 96x96 blocks from the top left; at least two blocks must remain.
    Returns NaN (and logs a warning) when fewer than two blocks have finite features (flat
    pictures; MATLAB stops there with an error in ``pinv``).
    """
    plane = _plane(picture, convert)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        plane = plane[crop_border:-crop_border, crop_border:-crop_border]
    rows, cols = plane.shape[0] // BLOCK, plane.shape[1] // BLOCK
    if rows * cols < 2:
        raise ValueError(
            f"NIQE needs at least two {BLOCK}x{BLOCK} blocks; the picture is {plane.shape[1]}x{plane.shape[0]} "
            f"after cropping {crop_border} pixels per side"
        )
    plane = plane[: rows * BLOCK, : cols * BLOCK]
    features = np.concatenate(
        [_block_features(plane, params.window, BLOCK), _block_features(imresize(plane, 0.5), params.window, BLOCK // 2)],
        axis=1,
    )
    return _distance(features, params)


def _plane(picture: np.ndarray, convert: str) -> np.ndarray:
    """The rounded 0..255 float64 plane NIQE looks at."""
    if convert not in ("y", "gray"):
        raise ValueError(f'convert must be "y" or "gray", got {convert!r}')
    picture = np.asarray(picture)
    if picture.dtype == np.uint8:
        values = picture.astype(np.float64)
    elif np.issubdtype(picture.dtype, np.floating):
        values = picture.astype(np.float64) * 255.0
    else:
        raise ValueError(f"expected uint8 or float pixels, got {picture.dtype}")
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[..., 0]
    if values.ndim == 2:
        return np.floor(values + 0.5)  # MATLAB's round (half away from zero) of the given plane
    if values.ndim == 3 and values.shape[2] == 3:
        return rgb2y(values) if convert == "y" else rgb2gray(values)
    raise ValueError(f"expected an (H, W, 3) RGB picture or an (H, W) plane, got shape {picture.shape}")


def _filter(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``imfilter(img, window, 'replicate')``: correlation, borders replicated."""
    r = window.shape[0] // 2
    padded = np.pad(img, r, mode="edge")
    out = np.zeros_like(img)
    h, w = img.shape
    for i in range(window.shape[0]):
        for j in range(window.shape[1]):
            out += window[i, j] * padded[i : i + h, j : j + w]
    return out


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients, (I - mu) / (sigma + 1)."""
    mu = _filter(img, window)
    sigma = np.sqrt(np.abs(_filter(img * img, window) - mu * mu))
    centred = img - mu
    centred[np.abs(centred) <= _FLAT] = 0.0
    return centred / (sigma + 1.0)


@functools.cache
def _alpha_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The alpha grid 0.2:0.001:10, r(alpha) = G(2/a)^2 / (G(1/a) G(3/a)), sqrt(G(1/a) / G(3/a))
    (sigma -> beta) and G(2/a) / G(1/a) (the pairwise mean), read-only."""
    alpha = np.linspace(0.2, 10.0, 9801)  # MATLAB's colon ends exactly on 10 as linspace does
    g1 = np.array([math.gamma(1.0 / a) for a in alpha])
    g2 = np.array([math.gamma(2.0 / a) for a in alpha])
    g3 = np.array([math.gamma(3.0 / a) for a in alpha])
    r = g2 * g2 / (g1 * g3)
    # The nearest-grid-point search below relies on r increasing (it does, by >= 1.6e-6 a step).
    if not np.all(np.diff(r) > 0):
        raise AssertionError("r(alpha) is not increasing on the grid")
    tables = (alpha, r, np.sqrt(g1 / g3), g2 / g1)
    for table in tables:
        table.flags.writeable = False
    return tables


def _nearest(r: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the grid point minimising (r - value)^2, the first on a tie, as MATLAB's ``min``;
    index 0 for NaN (MATLAB's ``min`` of an all-NaN vector)."""
    hi = np.clip(np.searchsorted(r, np.nan_to_num(values, nan=-np.inf)), 1, len(r) - 1)
    lo = hi - 1
    with np.errstate(invalid="ignore"):
        pick = np.where((r[lo] - values) ** 2 <= (r[hi] - values) ** 2, lo, hi)
    return np.where(np.isnan(values), 0, pick)


def _aggd(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit of each row of ``samples`` (n, m), as LIVE's
    ``estimateaggdparam``: (alpha, beta_left, beta_right, grid index), each (n,)."""
    alpha, r, beta_of_sigma, _ = _alpha_tables()
    squares = samples * samples
    negative, positive = samples < 0, samples > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.where(negative, squares, 0.0).sum(axis=1) / negative.sum(axis=1))
        right = np.sqrt(np.where(positive, squares, 0.0).sum(axis=1) / positive.sum(axis=1))
        gamma_hat = left / right
        r_hat = np.abs(samples).mean(axis=1) ** 2 / squares.mean(axis=1)
        r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    index = _nearest(r, r_norm)
    return alpha[index], left * beta_of_sigma[index], right * beta_of_sigma[index], index


def _block_features(img: np.ndarray, window: np.ndarray, block: int) -> np.ndarray:
    """The 18 features of each ``block`` x ``block`` tile of ``img``: (tiles, 18)."""
    mscn = _mscn(img, window)
    rows, cols = mscn.shape[0] // block, mscn.shape[1] // block
    tiles = mscn.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(rows * cols, block, block)
    flat = tiles.reshape(len(tiles), -1)
    alpha, left, right, _ = _aggd(flat)
    columns = [alpha, (left + right) / 2]
    _, _, _, mean_of_beta = _alpha_tables()
    for shift in _SHIFTS:
        # circshift within each block (blkproc hands computefeature one block at a time)
        pairs = (tiles * np.roll(tiles, shift, axis=(1, 2))).reshape(len(tiles), -1)
        alpha, left, right, index = _aggd(pairs)
        columns += [alpha, (right - left) * mean_of_beta[index], left, right]
    return np.stack(columns, axis=1)


def _distance(features: np.ndarray, params: NiqeParams) -> float:
    """sqrt(d pinv((cov_p + cov_d) / 2) d'), with nanmean and the covariance of the rows
    without NaN (MATLAB's nanmean and nancov)."""
    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) < 2:
        log.warning("NIQE is undefined: %d of %d blocks have finite features (a flat picture?)", len(complete), len(features))
        return math.nan
    mean = np.nanmean(features, axis=0)
    cov = np.cov(complete, rowvar=False)
    d = params.mu - mean
    return float(np.sqrt(d @ np.linalg.pinv((params.cov + cov) / 2) @ d))
