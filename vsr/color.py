"""Colour policy for video: which matrix and range a stream uses, and which pixel formats carry it.

The pixel maths lives in :mod:`vsr.kernels.yuv`; this module decides what to feed it
(DESIGN.md section 5):

* :func:`resolve` reads the stream's FFmpeg tags (the integers PyAV exposes as ``colorspace``,
  ``color_range``, ``color_primaries`` and ``color_trc`` on frames and codec contexts) and applies
  the rules for untagged streams, giving a :class:`Colour` that is used both to convert to RGB and
  back and to tag the output.
* :func:`layout` says how the kernels read a pixel format (planar little-endian YUV/gray, or the
  ``gbrp`` formats the decoder falls back to), :func:`fallback_format` what to reformat anything
  else into without losing bits, and :func:`output_pix_fmt` which of an encoder's formats keeps the
  source's chroma layout and depth.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

# name -> (Kr, Kb) of the non-constant-luminance Y'CbCr matrix (Kg = 1 - Kr - Kb).
MATRICES: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
    "smpte240m": (0.212, 0.087),
    "fcc": (0.30, 0.11),
}

# FFmpeg's AVColorSpace values (PyAV: ``frame.colorspace``, ``codec_context.colorspace``).
SPC_RGB = 0
SPC_BT709 = 1
SPC_UNSPECIFIED = 2
SPC_FCC = 4
SPC_BT470BG = 5
SPC_SMPTE170M = 6
SPC_SMPTE240M = 7
SPC_BT2020_NCL = 9
SPC_BT2020_CL = 10

# AVColorRange (``color_range``).
RANGE_UNSPECIFIED = 0
RANGE_MPEG = 1  # limited ("tv")
RANGE_JPEG = 2  # full ("pc")

# AVColorPrimaries / AVColorTransferCharacteristic: only the values the rules look at.
PRI_UNSPECIFIED = 2
PRI_BT2020 = 9
TRC_UNSPECIFIED = 2

_SPC_TO_MATRIX = {
    SPC_BT709: "bt709",
    SPC_FCC: "fcc",
    SPC_BT470BG: "bt601",
    SPC_SMPTE170M: "bt601",
    SPC_SMPTE240M: "smpte240m",
    SPC_BT2020_NCL: "bt2020",
    SPC_BT2020_CL: "bt2020",
}
_MATRIX_TO_SPC = {
    "bt709": SPC_BT709,
    "fcc": SPC_FCC,
    "bt601": SPC_SMPTE170M,
    "smpte240m": SPC_SMPTE240M,
    "bt2020": SPC_BT2020_NCL,
}


@dataclass(frozen=True)
class Colour:
    """How a stream's Y'CbCr maps to RGB, and the FFmpeg tags that say so.

    ``matrix`` is a key of :data:`MATRICES`. The four integers are the *resolved* FFmpeg enum
    values, ready to set on the output's codec context: the matrix and range always say what the
    conversion used; primaries and transfer are the source's, unspecified (2) included, since
    nothing here converts them.
    """

    matrix: str
    full_range: bool
    colorspace: int
    color_range: int
    primaries: int
    transfer: int

    def describe(self) -> str:
        """Short form for logs, e.g. ``"bt709 limited"``."""
        return f"{self.matrix} {'full' if self.full_range else 'limited'}"


def _is_rgb_format(pix_fmt: str) -> bool:
    import av

    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, TypeError):
        return False
    return bool(fmt.is_rgb or fmt.has_palette)


def resolve(
    colorspace: int,
    color_range: int,
    primaries: int,
    transfer: int,
    *,
    pix_fmt: str,
    width: int,
    height: int,
) -> Colour:
    """The :class:`Colour` of a stream from its FFmpeg tags, filling in what is untagged.

    Matrix: the tagged one; if unspecified (or RGB/unknown), BT.2020 when the primaries say BT.2020,
    else BT.601 for SD and BT.709 for HD. BT.2020 constant luminance is converted as non-constant
    (a warning says so). Range: the tagged one, else full for the ``yuvj*`` formats, else limited.
    An RGB source has no Y'CbCr range of its own, so its YUV output is limited (what players
    assume) whatever the tag says.
    """
    matrix = _SPC_TO_MATRIX.get(colorspace)
    if colorspace == SPC_BT2020_CL:
        log.warning(
            "BT.2020 constant-luminance input is converted as BT.2020 non-constant luminance; colours shift slightly"
        )
    if matrix is None:
        if colorspace not in (SPC_RGB, SPC_UNSPECIFIED):
            log.warning("colour matrix %d is not supported; treating the video as untagged", colorspace)
        if primaries == PRI_BT2020:
            matrix = "bt2020"
        elif width > 1024 or height > 576:
            # HD: anything larger than PAL SD (720x576; the 1024 leaves room for square-pixel
            # 16:9 SD, 1024x576). Smaller untagged video is assumed to be BT.601 SD material.
            matrix = "bt709"
        else:
            matrix = "bt601"

    if _is_rgb_format(pix_fmt):
        full = False
    elif color_range in (RANGE_MPEG, RANGE_JPEG):
        full = color_range == RANGE_JPEG
    else:
        # yuvj* are FFmpeg's (deprecated) full-range formats, still what MJPEG/JPEG decoders emit.
        full = pix_fmt.startswith("yuvj")

    # Keep the source's own BT.601 tag (BT470BG vs SMPTE170M denote the same matrix).
    if matrix == "bt601" and colorspace in (SPC_BT470BG, SPC_SMPTE170M):
        spc = colorspace
    else:
        spc = _MATRIX_TO_SPC[matrix]
    return Colour(
        matrix=matrix,
        full_range=full,
        colorspace=spc,
        color_range=RANGE_JPEG if full else RANGE_MPEG,
        primaries=primaries,
        transfer=transfer,
    )


def for_output(colour: Colour, pix_fmt: str) -> Colour:
    """The output's :class:`Colour`: the source's matrix and range (DESIGN.md section 5: convert back
    the way it came in), except that a ``yuvj*`` output format is full range by definition.

    The output size does not change the matrix: an SD source upscaled to HD keeps BT.601, and the
    output tag says so.
    """
    if pix_fmt.startswith("yuvj") and not colour.full_range:
        return replace(colour, full_range=True, color_range=RANGE_JPEG)
    return colour


# --------------------------------------------------------------------------- pixel formats


@dataclass(frozen=True)
class PixelLayout:
    """How the kernels read a planar pixel format.

    ``family`` is ``"yuv"`` (planes Y, Cb, Cr), ``"gray"`` (one plane) or ``"rgb"`` (FFmpeg's gbrp
    plane order G, B, R). ``bits`` per sample (samples over 8 bits are little-endian uint16,
    LSB-aligned). ``chroma`` is (sub_y, sub_x): (2, 2) for 4:2:0, (1, 2) 4:2:2, (2, 1) 4:4:0,
    (1, 1) 4:4:4, gray and RGB. ``full_range_hint`` is True for the ``yuvj*`` formats.
    """

    family: str
    bits: int
    chroma: tuple[int, int]
    full_range_hint: bool = False


# The formats read directly. The names only pick the candidates; bits and subsampling come from
# FFmpeg's own descriptor. Big-endian, MSB-aligned (``...msb``), semi-planar, packed, alpha and
# float formats fall outside the patterns and go through fallback_format.
_YUV_NAME = re.compile(r"yuvj?(420|422|444|440)p(?:(9|10|12|14|16)le)?")
_GRAY_NAME = re.compile(r"gray(?:(9|10|12|14|16)le)?")
_RGB_NAMES = ("gbrp", "gbrp16le")  # fallback_format's targets for RGB sources

# (sub_y, sub_x) -> the name part FFmpeg uses.
_CHROMA_NAME = {(2, 2): "420", (1, 2): "422", (1, 1): "444", (2, 1): "440"}


def _subsampling(fmt) -> tuple[int, int]:
    probe = 64  # any size divisible by the largest subsampling FFmpeg has (4)
    return probe // fmt.chroma_height(probe), probe // fmt.chroma_width(probe)


@functools.lru_cache(maxsize=None)
def layout(pix_fmt: str) -> PixelLayout | None:
    """The :class:`PixelLayout` of ``pix_fmt``, or None when the kernels cannot read it directly.

    Covers yuv420p/422p/444p/440p, their yuvj twins and 9..16-bit little-endian variants, gray and
    gray9le..gray16le, plus gbrp/gbrp16le. Everything else (nv12, p010le, rgb24, yuva420p, bayer,
    big-endian, hardware surfaces) is None: see :func:`fallback_format`.
    """
    import av

    yuv = _YUV_NAME.fullmatch(pix_fmt)
    gray = _GRAY_NAME.fullmatch(pix_fmt)
    if not (yuv or gray or pix_fmt in _RGB_NAMES):
        return None
    try:
        fmt = av.VideoFormat(pix_fmt)
    except ValueError:  # e.g. yuvj420p10le, yuv440p9le: not formats at all
        return None
    bits = fmt.components[0].bits
    if pix_fmt in _RGB_NAMES:
        return PixelLayout("rgb", bits, (1, 1))
    if gray:
        return PixelLayout("gray", bits, (1, 1))
    return PixelLayout("yuv", bits, _subsampling(fmt), full_range_hint=pix_fmt.startswith("yuvj"))


def _planar_yuv_name(chroma: tuple[int, int], bits: int) -> str | None:
    """The planar YUV format with this subsampling and depth, if FFmpeg has one."""
    name = f"yuv{_CHROMA_NAME[chroma]}p" + ("" if bits == 8 else f"{bits}le")
    return name if layout(name) is not None else None


def fallback_format(pix_fmt: str) -> str:
    """The planar format to reformat a frame of ``pix_fmt`` into when :func:`layout` is None.

    No bits are lost (alpha is dropped): RGB-like formats (packed RGB, palette, bayer, float RGB)
    become ``gbrp``, or ``gbrp16le`` above 8 bits; gray (with or without alpha) ``gray``, or its
    depth's ``grayNNle`` (``gray16le`` for float); YUV keeps its chroma layout and depth when
    FFmpeg has that planar format (nv12 -> yuv420p, p010le -> yuv420p10le, nv16 -> yuv422p,
    yuva420p -> yuv420p, yuv420p10be -> yuv420p10le), else the next depth up, and 4:1:1/4:1:0
    become 4:4:4.
    A format the kernels read already is returned as it is.
    """
    import av

    if layout(pix_fmt) is not None:
        return pix_fmt
    fmt = av.VideoFormat(pix_fmt)
    colour = [c for c in fmt.components if not c.is_alpha]
    if not colour:
        raise ValueError(f"pixel format {pix_fmt} holds no pixels to read (a hardware surface?); download it first")
    bits = max(c.bits for c in colour)
    if fmt.is_bayer:
        bits = fmt.bits_per_pixel  # the descriptor splits a bayer sample's depth over the components
    if fmt.is_rgb or fmt.has_palette or fmt.is_bayer:
        return "gbrp" if bits <= 8 else "gbrp16le"
    if len(colour) == 1:
        if bits <= 8:
            return "gray"
        return f"gray{bits}le" if layout(f"gray{bits}le") is not None else "gray16le"
    chroma = _subsampling(fmt)
    if chroma not in _CHROMA_NAME:
        chroma = (1, 1)  # 4:1:1, 4:1:0: upsampling to 4:4:4 loses nothing
    for depth in [8] if bits <= 8 else [b for b in (9, 10, 12, 14, 16) if b >= bits]:
        if name := _planar_yuv_name(chroma, depth):
            return name
    return "yuv444p16le"  # float or >16-bit YUV: the deepest integer format


# Equal-cost tie-break between chroma layouts: the common ones first.
_CHROMA_ORDER = {(2, 2): 0, (1, 2): 1, (1, 1): 2, (2, 1): 3}


def _output_candidate(name: str) -> tuple[PixelLayout, bool] | None:
    """(layout, native) for an encoder format vsr can write, else None.

    Native formats are the planar ones :func:`layout` reads. The others are formats that hold the
    same samples as a planar twin, only arranged differently (nv12, p010le, nv16, yuv444p10msble,
    yuyv422...): the encoder repacks them. RGB, alpha, float and 4:1:1 formats are not candidates.
    """
    import av

    lay = layout(name)
    if lay is not None:
        return (lay, True) if lay.family != "rgb" else None
    try:
        fmt = av.VideoFormat(name)
        twin = layout(fallback_format(name))
    except ValueError:  # unknown name, hardware surface
        return None
    if fmt.is_rgb or fmt.has_palette or fmt.is_bayer or any(c.is_alpha for c in fmt.components):
        return None
    if twin is None or twin.family == "rgb" or twin.bits != max(c.bits for c in fmt.components):
        return None
    if twin.family == "yuv" and twin.chroma != _subsampling(fmt):
        return None
    return twin, False


def output_pix_fmt(source_pix_fmt: str, supported: list[str]) -> str:
    """The encoder format (one of ``supported``) that best keeps the source's layout and depth.

    Candidates are the YUV and gray formats vsr can write: the planar ones :func:`layout` reads,
    and repackings of them (nv12, p010le...; see :func:`_output_candidate`). In order of
    importance:

    1. Chroma: the source's subsampling; else the closest layout with *more* chroma resolution
       (4:2:0 -> 4:2:2 -> 4:4:4) before any with less (a warning says so).
    2. Depth: the smallest depth >= the source's; else the deepest there is, with a warning that
       bits are lost (a 10-bit source on an 8-bit-only encoder).
    3. Planar before a repacked twin (yuv420p before nv12; p010le is taken for 10 bits on NVENC,
       which has no yuv420p10le).
    4. ``yuvj*`` only when the plain twin is missing: full range is carried by the range tag, and
       the yuvj formats are deprecated (``yuvj420p`` -> ``yuv420p``).

    A gray source takes a gray format if the encoder has one, else is treated as 4:2:0 YUV. An RGB
    source (``gbrp``, ``rgb24``...) is treated as 4:4:4 YUV of its depth. Raises ValueError when the
    encoder takes no YUV or gray format vsr can write (e.g. libx264rgb).
    """
    src = layout(source_pix_fmt) or layout(fallback_format(source_pix_fmt))
    assert src is not None  # fallback_format only returns formats layout() reads
    candidates = [(name, *found) for name in supported if (found := _output_candidate(name))]

    want_chroma = src.chroma if src.family == "yuv" else (2, 2) if src.family == "gray" else (1, 1)
    pool = [c for c in candidates if c[1].family == "gray"] if src.family == "gray" else []
    if not pool:
        pool = [c for c in candidates if c[1].family == "yuv"]
    if not pool:
        takes = ", ".join(supported) or "nothing"
        raise ValueError(f"the encoder takes no YUV format vsr can write (it takes: {takes})")

    def cost(item: tuple[str, PixelLayout, bool]) -> tuple:
        _, lay, native = item
        # Per axis: a smaller subsampling factor is more chroma resolution than the source has.
        lost = sum(c > s for c, s in zip(lay.chroma, want_chroma))
        gained = sum(c < s for c, s in zip(lay.chroma, want_chroma))
        short = lay.bits < src.bits
        depth = src.bits - lay.bits if short else lay.bits - src.bits
        return (lost, gained, short, depth, not native, lay.full_range_hint, _CHROMA_ORDER.get(lay.chroma, 0))

    name, lay, _ = min(pool, key=cost)
    if lay.bits < src.bits:
        log.warning(
            "the source has %d-bit samples but the encoder's closest format %s holds %d: the output loses %d bits",
            src.bits, name, lay.bits, src.bits - lay.bits,
        )
    if lay.family == "yuv" and any(c > s for c, s in zip(lay.chroma, want_chroma)):
        log.warning("the encoder has no format with the source's chroma resolution; writing %s", name)
    return name
