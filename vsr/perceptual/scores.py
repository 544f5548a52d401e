"""Which perceptual metrics a measurement takes, and scoring pictures and clips with them.

``vsr eval`` and training's validation ask for metrics by name. Per picture: ``lpips`` (AlexNet,
v0.1) and ``dists`` against the ground truth, ``niqe`` (no reference) of the picture alone; per
clip of consecutive frames: ``tof`` and ``warp_error``. PSNR and SSIM are always measured (they
need nothing); the others need files or packages:

* ``lpips``, ``dists``, ``niqe``: the converted files of ``vsr models fetch perceptual``;
* ``tof``, ``warp_error``: OpenCV (``pip install "vsr[metrics]"``), and a video.

:func:`choose` decides once: metrics asked for by name must be there (otherwise the exit-69 error
that names the command to get them); without names, every metric that can run is taken and the
ones that cannot are named in one note. Lower is better for all five.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BackendUnavailable, UsageError, VsrError
from .temporal import CUT_FRAMES

log = logging.getLogger(__name__)

PICTURE_METRICS = ("lpips", "dists", "niqe")
SEQUENCE_METRICS = ("tof", "warp_error")
ALL_METRICS = ("psnr", "ssim", *PICTURE_METRICS, *SEQUENCE_METRICS)
# What can be measured without a ground truth (``vsr eval --no-reference``): NIQE of each
# upscaled picture, and the warping error of the upscaled frames along the input video's motion.
NO_REFERENCE_METRICS = ("niqe", "warp_error")
# Smallest picture NIQE can score: one 96x96 block after the border crop.
NIQE_MIN_SIDE = 96
# Fewest frames each sequence metric needs: tOF leaves CUT_FRAMES out at each end and compares
# pairs; the warping error compares one pair.
MIN_FRAMES = {"tof": 2 * CUT_FRAMES + 2, "warp_error": 2}


@dataclass(frozen=True)
class Choice:
    """The metrics a measurement takes (beyond PSNR/SSIM) and a note on those it leaves out."""

    picture: tuple[str, ...]
    sequence: tuple[str, ...]
    note: str = ""


def parse(text: str | None) -> tuple[str, ...] | None:
    """``--metrics a,b`` -> names (None for "all that can run"); unknown names are a usage error."""
    if text is None:
        return None
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown or not names:
        raise UsageError(f"--metrics {text}: {unknown[0] if unknown else 'no name'} is not a metric; choose from {', '.join(ALL_METRICS)}")
    return names


def _missing(name: str) -> str | None:
    """Why ``name`` cannot run here (the command that fixes it), or None when it can."""
    if name in PICTURE_METRICS:
        from . import fetch

        needs = {"lpips": ("alexnet", "lpips_alex"), "dists": ("vgg16", "dists"), "niqe": ("niqe",)}[name]
        try:
            for artifact in needs:
                fetch.require(artifact)
        except VsrError as err:
            return str(err)
        return None
    if name in SEQUENCE_METRICS:
        try:
            import cv2  # noqa: F401
        except ImportError:
            return 'OpenCV is not installed: pip install "vsr[metrics]"'
    return None


def available(names: Sequence[str]) -> tuple[str, ...]:
    """The metrics of ``names`` that can run here (for callers that take what there is, such as
    training's validation)."""
    return tuple(n for n in names if _missing(n) is None)


def choose(names: Sequence[str] | None, *, video: bool, reference: bool = True) -> Choice:
    """The metrics to take. ``names`` None: every one that can run (PSNR/SSIM always; the
    sequence metrics for a video only; without a ``reference``, :data:`NO_REFERENCE_METRICS`
    only). Named ones must run: a missing file or package raises :class:`BackendUnavailable`
    (exit 69) naming the command that gets it; one that needs a reference, when there is none, is a
    usage error."""
    if names is not None:
        if not reference and any(n not in NO_REFERENCE_METRICS for n in names):
            bad = next(n for n in names if n not in NO_REFERENCE_METRICS)
            raise UsageError(f"--metrics {bad} compares with a ground truth, which --no-reference pictures have none of; choose from {', '.join(NO_REFERENCE_METRICS)}")
        if not video and any(n in SEQUENCE_METRICS for n in names):
            bad = next(n for n in names if n in SEQUENCE_METRICS)
            raise UsageError(f"--metrics {bad} measures a clip of frames; give a video (and, with --sr, its upscaled video)")
        for name in names:
            reason = _missing(name)
            if reason is not None:
                raise BackendUnavailable(f"metric {name} cannot run: {reason}")
        return Choice(tuple(n for n in PICTURE_METRICS if n in names), tuple(n for n in SEQUENCE_METRICS if n in names))
    wanted = [n for n in (*PICTURE_METRICS, *(SEQUENCE_METRICS if video else ())) if reference or n in NO_REFERENCE_METRICS]
    reasons = {n: _missing(n) for n in wanted}
    left_out = [n for n in wanted if reasons[n] is not None]
    note = ""
    if left_out:
        fetch_cmd = "`vsr models fetch perceptual`"
        why = "; ".join(sorted({fetch_cmd if n in PICTURE_METRICS else 'pip install "vsr[metrics]"' for n in left_out}))
        note = f"{', '.join(left_out)} not measured (to add them: {why})"
    return Choice(
        tuple(n for n in PICTURE_METRICS if n in reasons and reasons[n] is None),
        tuple(n for n in SEQUENCE_METRICS if n in reasons and reasons[n] is None),
        note,
    )


def _to_tensor(picture: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8/uint16 or (1, 3, H, W) float in [0, 1] -> (1, 3, H, W) float32 in [0, 1]."""
    if isinstance(picture, torch.Tensor):
        return picture.detach().float().cpu().clamp(0, 1)
    peak = 65535.0 if picture.dtype == np.uint16 else 255.0
    return torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1)[None].float() / peak


def to_uint8(picture: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 RGB, as a saved picture holds it and as NIQE and the temporal metrics read
    pictures: a (1, 3, H, W) float tensor is clamped to [0, 1] and rounded; uint16 is scaled."""
    if isinstance(picture, torch.Tensor):
        return picture[0].detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if picture.dtype == np.uint16:
        return np.round(picture / 257.0).astype(np.uint8)
    return picture


class PictureScorer:
    """Scores one picture against its ground truth with the chosen picture metrics; the networks
    are loaded once, on the CPU. ``crop_border`` pixels are left out of NIQE at every side (the
    convention of SR papers: the scale)."""

    def __init__(self, metrics: Sequence[str], *, crop_border: int = 0):
        self.metrics = tuple(metrics)
        self.crop_border = crop_border
        self._lpips = self._dists = self._niqe = None
        if "lpips" in self.metrics:
            from .lpips import LPIPS

            self._lpips = LPIPS(net="alex")
        if "dists" in self.metrics:
            from .dists import DISTS

            self._dists = DISTS()
        if "niqe" in self.metrics:
            from .niqe import default_params

            self._niqe = default_params()

    def __call__(self, picture: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor | None) -> dict[str, float | None]:
        """``{metric: value}`` for ``picture`` (uint8/uint16 HWC or a (1, 3, H, W) float tensor)
        against ``truth`` of the same size (None: there is none, for a scorer of NIQE alone). NIQE
        is None for a picture too small for one block."""
        out: dict[str, float | None] = {}
        if self._lpips is not None or self._dists is not None:
            if truth is None:
                raise ValueError("LPIPS and DISTS compare with a ground truth; none was given")
            x, y = _to_tensor(picture), _to_tensor(truth)
            with torch.inference_mode():
                if self._lpips is not None:
                    out["lpips"] = float(self._lpips(x, y)[0])
                if self._dists is not None:
                    out["dists"] = float(self._dists(x, y)[0])
        if self._niqe is not None:
            from .niqe import niqe

            rgb = to_uint8(picture)
            small = min(rgb.shape[:2]) - 2 * self.crop_border < NIQE_MIN_SIDE
            out["niqe"] = None if small else float(niqe(rgb, self._niqe, crop_border=self.crop_border, convert="y"))
        return out


def score_sequence(metrics: Sequence[str], frames: Sequence[np.ndarray | torch.Tensor], truth: Sequence[np.ndarray | torch.Tensor]) -> dict[str, float]:
    """``tof`` and/or ``warp_error`` of consecutive ``frames`` against the ground-truth frames
    (the flow for the warping error is the ground truth's: the best motion estimate there is)."""
    from . import temporal

    ours = [to_uint8(f) for f in frames]
    theirs = [to_uint8(f) for f in truth]
    out: dict[str, float] = {}
    if "tof" in metrics:
        out["tof"] = temporal.tof(ours, theirs)
    if "warp_error" in metrics:
        out["warp_error"] = temporal.warp_error(ours, theirs)
    return out
