"""The shape of a video output, decided once per input before any frame is computed.

:func:`plan_video` is a pure function of what the input declares (:class:`~vsr.frame.VideoInfo`)
and what the user asked (:class:`PictureOptions`, scale, ``--outscale``): output size, whether the
network's output is resampled, how the pixels are turned before the network (``--auto-rotate``),
what display matrix and sample aspect ratio the output stream carries, the deinterlacing plan, the
encoder's time base and frame rate, and the HDR10 metadata to hand to the encoder. The pipeline and
the batch segments both build their output from it, so a segmented run and a single run agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction

from .. import color
from ..frame import VideoInfo
from . import deinterlace
from .presentation import HdrMetadata, Orientation, apply_orientation_shape, orientation, rotated_sar
from .trim import Trim, Window, window_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PictureOptions:
    """The ``vsr run`` flags about how pictures are shown (they apply to every job of a batch)."""

    auto_rotate: bool = False  # turn the pixels by the display matrix instead of keeping the matrix
    square_pixels: bool = False  # resample to square pixels at the display aspect ratio
    deinterlace: str = "auto"  # auto | on | off
    deinterlace_rate: str = "frame"  # frame | field


@dataclass(frozen=True)
class VideoPlan:
    """What the output video stream is (see the module docstring)."""

    width: int
    height: int
    resize: bool  # resample the network's output to width x height (else pad by at most a pixel)
    orient: Orientation  # applied to the frames before the network
    display_matrix: tuple[int, ...] | None  # written on the output stream
    sar: Fraction  # output sample aspect ratio
    deinterlace: deinterlace.DeinterlacePlan
    time_base: Fraction
    rate: Fraction | None
    hdr: HdrMetadata | None
    window: Window | None = None  # the trimmed range, in the source's time (chapters follow it)
    notes: tuple[str, ...] = field(default=(), compare=False)  # what was decided, for -v logs

    def log(self) -> None:
        for note in self.notes:
            log.info("%s", note)


def plan_video(
    info: VideoInfo,
    options: PictureOptions,
    *,
    scale: int,
    outscale: float | None,
    planar_fmt: str,
    trim: Trim | None = None,
) -> VideoPlan:
    """Decide the output of one input (see :class:`VideoPlan`). ``planar_fmt`` is what the compute
    step produces for the chosen encoder format (its chroma subsampling makes sizes even)."""
    notes: list[str] = []
    orient = orientation(info.display_matrix)
    turn = Orientation()
    matrix = info.display_matrix
    if info.display_matrix is not None:
        if options.auto_rotate and orient.exact:
            turn, matrix = orient, None
            notes.append(f"--auto-rotate: the pixels are {orient.describe()} before the network; the output has no display matrix")
        elif options.auto_rotate:
            notes.append(f"--auto-rotate: the display matrix is {orient.describe()}; kept on the output instead")
            log.warning("--auto-rotate cannot turn the pixels by a matrix that is not a multiple of 90 degrees; the display matrix is kept on the output")
        else:
            notes.append(f"display matrix kept on the output (players show it {orient.describe()}; --auto-rotate turns the pixels instead)")

    height, width = apply_orientation_shape(info.height, info.width, turn)
    sar = rotated_sar(info.sar, turn)
    if outscale is None:
        out_w, out_h = width * scale, height * scale
    else:
        out_w, out_h = max(1, round(width * outscale)), max(1, round(height * outscale))
    resize = outscale is not None
    square = options.square_pixels and sar != 1
    if square:
        # Only the width is resampled: no picture line is lost or invented vertically.
        out_w = max(1, round(out_w * sar))
        resize = True
    lay = color.layout(planar_fmt)
    if lay is not None and lay.family == "yuv":
        sub_y, sub_x = lay.chroma
        out_w += out_w % sub_x
        out_h += out_h % sub_y
    if square:
        notes.append(f"--square-pixels: {info.sar.numerator}:{info.sar.denominator} pixels resampled to square ones, {out_w}x{out_h} (display aspect {out_w / out_h:.4g})")
        sar = Fraction(1)
    elif sar != 1:
        notes.append(f"sample aspect ratio {sar.numerator}:{sar.denominator} kept on the output (display aspect {float(out_w * sar / out_h):.4g})")

    plan_d = deinterlace.plan(options.deinterlace, options.deinterlace_rate, info)
    if plan_d.enabled:
        what = "one frame per field" if plan_d.rate == "field" else "same frames and timestamps"
        notes.append(f"interlaced source (field order {info.field_order}): deinterlaced with bwdif before the network ({what}); progressive output")
    elif info.interlaced:
        log.warning(
            "input %s is interlaced (field order %s) and --deinterlace off: the combing is upscaled as it is; "
            "leave --deinterlace at auto to deinterlace", info.path, info.field_order,
        )
    rate = info.rate
    if plan_d.doubles_rate and rate is not None:
        rate = rate * 2

    if info.hdr is not None:
        notes.append(f"HDR10 static metadata: {info.hdr.describe()}")
    window = window_of(trim, info.start_time)
    if window is not None:
        notes.append(f"trimmed: {trim.describe()}")
    return VideoPlan(
        width=out_w, height=out_h, resize=resize, orient=turn, display_matrix=matrix, sar=sar, deinterlace=plan_d,
        time_base=deinterlace.output_time_base(info.time_base, plan_d), rate=rate, hdr=info.hdr, window=window, notes=tuple(notes),
    )
