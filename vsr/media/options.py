"""The video options of ``vsr run`` and ``vsr batch`` as one value (:class:`VideoOptions`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..dedup import DEFAULT_MODE
from .encode import EncodeSettings
from .plan import PictureOptions
from .trim import Trim


@dataclass(frozen=True)
class VideoOptions:
    """How a video is decoded, cut, shown and encoded: the same for a ``vsr run`` job, every job of
    a batch and every segment of one. Plain frozen data: batch units pickle it into workers."""

    settings: EncodeSettings = EncodeSettings()
    outscale: float | None = None  # final scale, resampled after the model when it differs
    hwaccel: str | None = None  # "cuda": decode with NVDEC
    decoder: str = "pyav"  # or "dali"
    picture: PictureOptions = PictureOptions()
    trim: Trim | None = None
    dedup: str = DEFAULT_MODE  # vsr.dedup.MODES: reuse the output of a repeated picture
