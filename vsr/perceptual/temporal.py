"""Temporal consistency of a video: TecoGAN's tOF and the flow-warping error of Lai et al.

A per-frame metric cannot see flicker: a GAN that invents different detail in every frame scores
as well as one that keeps it steady.  Both metrics here compare how frames change over time.

* :func:`tof` (Chu et al., "Learning Temporal Coherence via Self-Supervision for GAN-based Video
  Generation", TecoGAN's ``metrics.py``): the mean distance between the optical flow of the
  output and that of the ground truth (Farneback, on grey frames), so it needs the ground truth.
  Lower is better; 0 when the output moves exactly as the ground truth does.
* :func:`warp_error` (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018,
  ``evaluate_WarpError.py``): warp each output frame onto the previous one along the flow of the
  reference frames (the input video, or the output itself), and take the mean squared difference
  over the pixels that are neither occluded nor on a motion boundary.  No ground truth needed.
  Lower is better.

Frames are RGB ``uint8`` numpy arrays of shape (H, W, 3), given as a list or any iterable (they
are read once, in order, two to four at a time, so a decoder's generator works without holding
the clip).  OpenCV does the optical flow and the warping; it is the optional dependency
``vsr[metrics]`` and is imported inside the functions.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from types import ModuleType

import numpy as np

from ..errors import BackendUnavailable

log = logging.getLogger(__name__)

__all__ = ["CUT_FRAMES", "occluded", "tof", "tof_crop", "warp_error", "warp_error_pair"]

#: tOF leaves out this many frames at each end of the clip (TecoGAN's ``cutfr``).
CUT_FRAMES = 2
# TecoGAN's Farneback parameters: pyramid scale 0.5, 3 levels, window 15, 3 iterations,
# poly_n 5, poly_sigma 1.2, no flags.
_FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


def _cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise BackendUnavailable(
            'the temporal metrics need OpenCV (cv2), which is not installed: pip install "vsr[metrics]"'
        ) from exc
    return cv2


def _checked(frame: np.ndarray, what: str, index: int, shape: tuple[int, ...] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{what} frame {index}: expected an (H, W, 3) uint8 RGB array, got {frame.dtype} {frame.shape}")
    if shape is not None and frame.shape != shape:
        raise ValueError(f"{what} frame {index} is {frame.shape}, the frames before it {shape}: one size per clip")
    return frame


def _frames(frames: Iterable[np.ndarray], what: str) -> Iterator[np.ndarray]:
    """The frames, checked: uint8 RGB, all of the first frame's shape."""
    shape = None
    for index, frame in enumerate(frames):
        frame = _checked(frame, what, index, shape)
        shape = frame.shape
        yield frame


def tof_crop(height: int, width: int) -> tuple[slice, slice]:
    """TecoGAN's ``crop_8x8``: the centred window whose sides are multiples of 32 and at least
    16 pixels short of the frame's, as (rows, columns) slices."""

    def side(n: int) -> int:
        m = n // 32 * 32
        while m > n - 16:
            m -= 32
        return m

    h, w = side(height), side(width)
    if h <= 0 or w <= 0:
        raise ValueError(f"tOF needs frames of at least 48x48 pixels (TecoGAN's centre crop), got {width}x{height}")
    y, x = (height - h) // 2, (width - w) // 2
    return slice(y, y + h), slice(x, x + w)


def tof(outputs: Iterable[np.ndarray], references: Iterable[np.ndarray]) -> float:
    """TecoGAN's tOF: the mean per-pixel L2 distance between the Farneback flows of consecutive
    output frames and of consecutive ground-truth frames.

    ``outputs`` and ``references``: the same number of (H, W, 3) uint8 RGB frames, all of one
    size.  As TecoGAN's ``metrics.py``: the first and last :data:`CUT_FRAMES` frames are left
    out, frames go grey with ``COLOR_RGB2GRAY``, the flows are centre-cropped by :func:`tof_crop`,
    and the per-pair means are averaged, so the clip needs at least 6 frames.  Lower is better.
    """
    cv2 = _cv2()
    greys: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=4)
    crop: tuple[slice, slice] | None = None
    values: list[float] = []
    count = 0
    for j, (out, ref) in enumerate(zip(_frames(outputs, "output"), _frames(references, "reference"), strict=True)):
        if out.shape != ref.shape:
            raise ValueError(f"output frame {j} is {out.shape}, its reference {ref.shape}: tOF compares frames of one size")
        if crop is None:
            crop = tof_crop(out.shape[0], out.shape[1])
        greys.append((cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY)))
        count = j + 1
        # Frame k = j - 2 has two frames after it, so it is not among the last CUT_FRAMES; its
        # pair (k - 1, k) counts when k - 1 is not among the first CUT_FRAMES either.
        k = j - CUT_FRAMES
        if k - 1 >= CUT_FRAMES:
            (prev_out, prev_ref), (cur_out, cur_ref) = greys[0], greys[1]
            flow_out = cv2.calcOpticalFlowFarneback(prev_out, cur_out, None, *_FARNEBACK)[crop]
            flow_ref = cv2.calcOpticalFlowFarneback(prev_ref, cur_ref, None, *_FARNEBACK)[crop]
            diff = (flow_ref - flow_out).astype(np.float64)
            values.append(float(np.sqrt((diff * diff).sum(axis=-1)).mean()))
    if not values:
        raise ValueError(f"tOF needs at least {2 * CUT_FRAMES + 2} frames, got {count}")
    log.debug("tOF over %d frame pairs of %d frames", len(values), count)
    return float(np.mean(values))


def _remap(cv2: ModuleType, image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at x + flow(x): bilinear, borders replicated (FlowNet2's Resample2d clamps
    to the edge the same way)."""
    h, w = flow.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=-1)
    return cv2.remap(image, grid + flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def occluded(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Lai et al.'s occlusion mask (``utils.detect_occlusion``, as ``compute_flow_occlusion.py``
    calls it), in the first frame's coordinates: (H, W) bool.

    ``forward``: the flow from frame t-1 to t, (H, W, 2) float32 (x, y) in frame t-1's pixels;
    ``backward``: from t to t-1, in frame t's.  Occluded where the backward flow, fetched along
    the forward flow, does not lead back: |F + B(x + F)|^2 > 0.01 (|F|^2 + |B(x + F)|^2) + 0.5;
    and on motion boundaries: |grad F_x|^2 + |grad F_y|^2 > 0.01 |F|^2 + 0.002 (forward
    differences, 0 on the last row and column).  Unlike the original, pixels the forward flow
    carries outside frame t are occluded too (they have no counterpart there).
    """
    cv2 = _cv2()
    forward = np.asarray(forward, dtype=np.float32)
    fetched = _remap(cv2, np.asarray(backward, dtype=np.float32), forward).astype(np.float64)
    f = forward.astype(np.float64)
    back_and_forth = ((f + fetched) ** 2).sum(axis=-1)
    magnitude = (f * f).sum(axis=-1)
    inconsistent = back_and_forth > 0.01 * (magnitude + (fetched * fetched).sum(axis=-1)) + 0.5
    du = np.zeros_like(f)
    dv = np.zeros_like(f)
    du[:, :-1] = f[:, :-1] - f[:, 1:]
    dv[:-1, :] = f[:-1, :] - f[1:, :]
    boundary = (du * du + dv * dv).sum(axis=-1) > 0.01 * magnitude + 0.002
    # Not in the original: pixels that the forward flow carries out of the frame.  Resample2d
    # (and remap with replicated borders) fetches the edge for them, the backward flow fetched at
    # the clamped edge agrees with the forward flow in a steady pan, so the check above keeps
    # them, and every frame pair of a pan would add the mismatch of a strip of content that has
    # left the picture (a 3-pixel pan of 128x96 frames: 5.7e-4, the size of the error of 4-level
    # noise).  They have no counterpart in frame t: occluded by definition.
    h, w = f.shape[:2]
    x = np.arange(w)[None, :] + f[..., 0]
    y = np.arange(h)[:, None] + f[..., 1]
    outside = (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
    return inconsistent | boundary | outside


def warp_error_pair(previous: np.ndarray, current: np.ndarray, forward: np.ndarray, backward: np.ndarray) -> float:
    """The warping error of one frame pair: ``current`` warped onto ``previous`` along
    ``forward`` (bilinear), squared difference averaged over the 3 channels of the pixels
    :func:`occluded` leaves, RGB in [0, 1]; 0 when every pixel is occluded (as the original).

    ``previous``, ``current``: (H, W, 3) uint8 RGB; ``forward``, ``backward``: (H, W, 2) flows as
    in :func:`occluded`.
    """
    cv2 = _cv2()
    shape = np.shape(previous)
    if np.shape(current) != shape or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"expected two (H, W, 3) frames of one size, got {shape} and {np.shape(current)}")
    if np.shape(forward) != shape[:2] + (2,) or np.shape(backward) != shape[:2] + (2,):
        raise ValueError(f"expected (H, W, 2) flows for {shape} frames, got {np.shape(forward)} and {np.shape(backward)}")
    visible = ~occluded(forward, backward)
    if not visible.any():
        return 0.0
    warped = _remap(cv2, np.asarray(current, dtype=np.float32) / 255.0, np.asarray(forward, dtype=np.float32))
    diff = warped.astype(np.float64) - np.asarray(previous, dtype=np.float32) / 255.0
    return float((diff * diff)[visible].sum() / (3 * visible.sum()))


def _resize_flow(cv2: ModuleType, flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """A flow computed at another size, resized to (height, width) (bilinear) with its vectors
    scaled to match (the original's ``utils.resize_flow``)."""
    h, w = flow.shape[:2]
    if (h, w) == (height, width):
        return flow
    out = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= width / w
    out[..., 1] *= height / h
    return out


def warp_error(outputs: Iterable[np.ndarray], references: Iterable[np.ndarray] | None = None) -> float:
    """The flow-warping error E_warp of Lai et al. (2018), averaged over the clip's frame pairs.

    ``outputs``: (H, W, 3) uint8 RGB frames.  ``references``: the frames the optical flow is
    computed on, one per output, (h, w, 3) uint8 RGB of any one size (the flow is resized to the
    output's): the input video, so that the output is judged by how the input moves; ``None``
    computes the flow on the outputs themselves (the metric needs no ground truth either way).
    Flow: OpenCV's DIS at its MEDIUM preset refined to full resolution (FlowNet2 in the paper,
    so values compare between runs of this function, not with the paper's tables), forward and
    backward on the grey (``COLOR_RGB2GRAY``) references; per pair, :func:`warp_error_pair`.
    Lower is better; at least 2 frames.
    """
    cv2 = _cv2()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    # The preset stops refining at half resolution (finest scale 1): on a steady 3-pixel pan of
    # 128x96 frames that leaves 0.2 px of flow error, which reads as a warping error of 2e-4 (the
    # size of 4-level noise); refined down to full resolution it is 0.03 px and 9e-6, for 3x the
    # time (about 17 ms a frame pair at 128x96 on this project's 2-core CPU).
    dis.setFinestScale(0)
    outs = _frames(outputs, "output")
    if references is None:
        pairs: Iterable[tuple[np.ndarray, np.ndarray]] = ((frame, frame) for frame in outs)
    else:
        pairs = zip(outs, _frames(references, "reference"), strict=True)
    errors: list[float] = []
    previous: tuple[np.ndarray, np.ndarray] | None = None
    for out, ref in pairs:
        grey = cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY)
        if previous is not None:
            prev_out, prev_grey = previous
            h, w = out.shape[:2]
            forward = _resize_flow(cv2, dis.calc(prev_grey, grey, None), h, w)
            backward = _resize_flow(cv2, dis.calc(grey, prev_grey, None), h, w)
            errors.append(warp_error_pair(prev_out, out, forward, backward))
        previous = (out, grey)
    if not errors:
        raise ValueError("the warping error needs at least 2 frames")
    log.debug("warping error over %d frame pairs", len(errors))
    return float(np.mean(errors))
