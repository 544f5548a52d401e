"""Which frames repeat a picture the network already computed (``--dedup off|exact|auto``).

Animation is drawn on twos and threes, slideshows and screen recordings hold a picture for
seconds: the network would compute the same picture again and again, and, after a lossy encode,
"boil" a held drawing (its coding noise differs from frame to frame, and the network turns that
noise into texture that crawls). :class:`Detector` looks at each decoded frame, in order, and says
whether it is a repeat of the **last frame the network computed** (never just the previous frame,
so a slow fade or pan, a little per frame, is recomputed as soon as it adds up). A repeat reuses
that frame's whole upscaled output; it keeps its own timestamp, so the frame count, timestamps,
audio and subtitles are those of a run without dedup (:mod:`vsr.video_compute`).

Modes:

* ``exact``: every plane bit-identical to the computed frame's. The output is the same as ``off``
  (the network would compute the same numbers again).
* ``auto``: near-identical: the difference is what a lossy encode of one picture leaves, judged
  globally (mean absolute difference of each plane, :data:`AUTO`) AND locally (the mean absolute
  difference of every small block, so a blinking eye or a moving mouth is never held) AND by its
  shape: an inter-coded encoder repeats most of a held picture's macroblocks bit for bit (skipped
  blocks) and re-codes a few, so at least half of the 16x16 luma blocks must be unchanged; a
  camera that moves even a hundredth of a pixel changes nearly every block, and an intra-only
  source (every frame re-coded) is held only where it is bit-identical. At most
  ``AUTO.max_reuse`` repeats in a row (the held output is refreshed at least that often).

The statistics are computed on the decoded planes on the compute device (torch), in 8-bit code
units whatever the bit depth. :func:`difference` is the pure part; thresholds are data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError
from .frame import Frame

log = logging.getLogger(__name__)

MODES = ("off", "exact", "auto")
DEFAULT_MODE = "auto"
# Held runs at least this long are logged at -v (shorter ones, animation's twos and threes, at -vv).
LOG_RUNS_FROM = 8


@dataclass(frozen=True)
class Thresholds:
    """When ``auto`` calls two decodes the same picture, in 8-bit code units.

    ``mean``: the largest mean absolute difference of any plane over the whole frame; ``block``:
    the largest mean absolute difference of any ``block`` x ``block`` square of the luma plane (and
    the same area of each chroma plane); ``unchanged``: the smallest share of 16x16 luma blocks
    (an H.264 macroblock) that must be bit-identical; ``max_reuse``: repeats in a row before a
    recompute.
    """

    mean: float
    block: float
    block_size: int
    unchanged: float
    max_reuse: int


# Set from x264 encodes (crf 18, 23, 28; 96x64 and 320x180) of photographs held on twos and
# threes, a slideshow and live action with grain (docs/BENCHMARKS.md, "Repeated pictures"): the
# held pairs differed by at most 0.26 (mean) and 7.3 (8x8 block) codes, with at least 50 % of
# their 16x16 blocks unchanged at crf 28 (75 % for nine in ten pairs); every real change (a new
# drawing, a pan or fade step, the blinking eye) had an 8x8 block at 25 codes or more; the one
# live-action pair inside the mean and block limits (a camera starting to move) had 34-39 % of
# its blocks unchanged.
AUTO = Thresholds(mean=0.5, block=6.0, block_size=8, unchanged=0.5, max_reuse=24)
# The macroblock of H.264 (and the common CU size of later codecs): the unit an encoder skips.
SKIP_BLOCK = 16


def check_mode(mode: str) -> str:
    """A valid ``--dedup`` value, else a usage error (exit 2)."""
    if mode not in MODES:
        raise UsageError(f"--dedup {mode!r}: choose one of {', '.join(MODES)}")
    return mode


@dataclass(frozen=True)
class Difference:
    """How far a frame is from the computed one: the largest per-plane mean and block mean of the
    absolute difference (8-bit code units), the share of 16x16 luma blocks that are bit-identical,
    and whether every plane is bit-identical."""

    identical: bool
    mean: float
    block: float
    unchanged: float

    def within(self, limits: Thresholds) -> bool:
        """Whether ``auto`` may call the two the same picture."""
        return self.identical or (self.mean <= limits.mean and self.block <= limits.block and self.unchanged >= limits.unchanged)


def plane_tensors(frame: Frame, device: torch.device) -> list[torch.Tensor]:
    """A frame's decoded planes as integer tensors on ``device`` (16-bit codes as int32)."""
    out = []
    for plane in frame.planes:
        if isinstance(plane, np.ndarray):
            data = plane.astype(np.int32) if plane.dtype == np.uint16 else plane
            tensor = torch.from_numpy(np.ascontiguousarray(data))
        else:  # DALI hands over torch tensors already
            tensor = plane
        out.append(tensor.to(device, non_blocking=True))
    return out


def difference(a: list[torch.Tensor], b: list[torch.Tensor], *, bits: int, block_size: int, full: bool = True) -> Difference:
    """:class:`Difference` of two frames' planes (same layout). With ``full`` False only
    ``identical`` is computed (``exact`` needs no statistics)."""
    identical = all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    if identical or not full:
        far = 0.0 if identical else float("inf")
        return Difference(identical, far, far, 1.0 if identical else 0.0)
    scale = 1.0 / (1 << max(0, bits - 8))
    luma_h, luma_w = a[0].shape[-2], a[0].shape[-1]
    means, blocks = [], []
    for x, y in zip(a, b, strict=True):
        diff = (x.to(torch.float32) - y.to(torch.float32)).abs() * scale
        if diff.ndim == 3:  # packed (H, W, C): one plane per channel
            diff = diff.permute(2, 0, 1)
        else:
            diff = diff[None]
        # The same picture area for every plane: a 4:2:0 chroma block is half the luma block's side.
        kh = max(1, round(block_size * diff.shape[-2] / luma_h))
        kw = max(1, round(block_size * diff.shape[-1] / luma_w))
        means.append(diff.mean(dim=(-2, -1)).max())
        blocks.append(F.avg_pool2d(diff[None], (kh, kw), stride=(kh, kw), ceil_mode=True).max())
        if len(means) == 1:  # the luma plane (or the packed picture): which macroblocks were skipped
            changed = F.max_pool2d(diff[None].amax(dim=1, keepdim=True), SKIP_BLOCK, stride=SKIP_BLOCK, ceil_mode=True)
            unchanged = float((changed == 0).float().mean())
    return Difference(False, float(torch.stack(means).max()), float(torch.stack(blocks).max()), unchanged)


class Detector:
    """Marks each frame of a run, in order, as computed or as a repeat of the last computed frame.

    One detector per run, ``vsr batch`` segment or checkpoint piece (a piece's first frame is
    always computed). ``first`` is the number of the run's frame that the detector sees first, so
    that the logged frame numbers are the run's; ``summary`` False leaves the summary line to the
    caller (a checkpointed run logs one for all its pieces). ``reused`` counts the repeats; ``held``
    lists the runs of repeats as (first computed frame, repeats); :meth:`close` logs them.
    """

    def __init__(self, mode: str, device: torch.device, limits: Thresholds = AUTO, *, first: int = 0, summary: bool = True):
        self.mode = check_mode(mode)
        self.device = torch.device(device)
        self.limits = limits
        self.first = first
        self.summary = summary
        self.reused = 0
        self.held: list[tuple[int, int]] = []
        self._ref: list[torch.Tensor] | None = None
        self._ref_key: tuple | None = None
        self._ref_index = first - 1
        self._run = 0
        self._index = first - 1

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def is_repeat(self, frame: Frame) -> bool:
        """Whether ``frame`` repeats the last computed frame (then its output is reused); a frame
        that is not becomes the new reference."""
        self._index += 1
        if self.mode == "off":
            return False
        key = (frame.pix_fmt, frame.colour, tuple(np.shape(p) for p in frame.planes))
        planes = plane_tensors(frame, self.device)
        if self._ref is not None and key == self._ref_key and self._may_reuse():
            bits = _bits(frame)
            diff = difference(self._ref, planes, bits=bits, block_size=self.limits.block_size, full=self.mode == "auto")
            if diff.identical or (self.mode == "auto" and diff.within(self.limits)):
                self._run += 1
                self.reused += 1
                return True
        self._close_run()
        self._ref, self._ref_key, self._ref_index = planes, key, self._index
        return False

    def close(self) -> None:
        """End of the frames: log the last held run, and the one line (at -v) on how many of the
        frames reused a computed output."""
        self._close_run()
        if self.active and self.summary:
            longest = max((n for _, n in self.held), default=0)
            log_summary(self.mode, self.reused, self._index + 1 - self.first, f" ({len(self.held)} held runs, the longest {longest} frames)")

    def _may_reuse(self) -> bool:
        # Exact repeats are the same numbers again: nothing can drift, so no cap.
        return self.mode == "exact" or self._run < self.limits.max_reuse

    def _close_run(self) -> None:
        if self._run:
            self.held.append((self._ref_index, self._run))
            # At -v only the long holds (title cards, pauses, slides); every held drawing at -vv.
            level = logging.INFO if self._run >= LOG_RUNS_FROM else logging.DEBUG
            log.log(level, "frames %d-%d reuse frame %d's output (--dedup %s)",
                    self._ref_index + 1, self._ref_index + self._run, self._ref_index, self.mode)
        self._run = 0


def log_summary(mode: str, reused: int, frames: int, details: str = "") -> None:
    """The one line (at -v) on how many of a run's frames reused a computed output."""
    log.info("--dedup %s: %d of %d frames reused a computed frame's output%s", mode, reused, frames, details)


def _bits(frame: Frame) -> int:
    from .color import layout

    lay = layout(frame.pix_fmt)
    return lay.bits if lay is not None else 8

