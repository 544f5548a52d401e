"""How a stream says its pictures are to be shown, and how vsr carries that to the output.

Pure functions over FFmpeg's own binary layouts, so they are testable without a file:

* the display matrix (rotation/flip; side data ``DISPLAYMATRIX``, nine int32 in 16.16 / 2.30 fixed
  point, as ``libavutil/display.h`` defines it);
* the sample aspect ratio (non-square pixels: DVDs, broadcast);
* HDR10 static metadata: mastering display colour volume (``AVMasteringDisplayMetadata``: ten
  rationals, then ``has_primaries`` and ``has_luminance``) and content light level
  (``AVContentLightMetadata``: MaxCLL, MaxFALL), and the option strings of the encoders that write
  them into their bitstream (x264/x265 SEI, SVT-AV1 metadata OBUs);
* the field order (interlacing).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction

# --------------------------------------------------------------------------- display matrix

#: The identity display matrix (a = d = 1.0 in 16.16, w = 1.0 in 2.30).
IDENTITY = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def parse_display_matrix(data: bytes) -> tuple[int, ...] | None:
    """Nine little-endian int32 of a ``DISPLAYMATRIX`` side data buffer; None when malformed."""
    if len(data) != 36:
        return None
    return struct.unpack("<9i", data)


@dataclass(frozen=True)
class Orientation:
    """A display matrix reduced to what players do with it: turn the stored picture
    ``quarter_turns`` x 90 degrees counterclockwise (np.rot90's direction), then mirror it
    left-right when ``hflip``. ``exact`` is False for matrices that are not a multiple of 90
    degrees (vsr keeps those on the output, but cannot apply them to the pixels)."""

    quarter_turns: int = 0
    hflip: bool = False
    exact: bool = True

    @property
    def identity(self) -> bool:
        return self.exact and self.quarter_turns == 0 and not self.hflip

    @property
    def swaps_axes(self) -> bool:
        return self.quarter_turns % 2 == 1

    def describe(self) -> str:
        if not self.exact:
            return "a rotation that is not a multiple of 90 degrees"
        turn = {0: "", 1: "90 degrees counterclockwise", 2: "180 degrees", 3: "90 degrees clockwise"}[self.quarter_turns]
        flip = "mirrored left-right" if self.hflip else ""
        return " and ".join(p for p in (f"rotated {turn}" if turn else "", flip) if p) or "upright"


def orientation(matrix: tuple[int, ...] | None) -> Orientation:
    """What a player does with a frame that carries ``matrix``.

    FFmpeg's matrix ``[a, b, u, c, d, v, x, y, w]`` maps a stored pixel (x, y) (x right, y down) to
    (a*x + c*y, b*x + d*y) on screen. A counterclockwise turn by theta (``av_display_rotation_set``
    with -theta) is a = d = cos, b = -sin, c = sin; ``av_display_matrix_flip(m, 1, 0)`` then negates
    a and c, which mirrors the turned picture left-right on screen.
    """
    if matrix is None:
        return Orientation()
    a, b, c, d = (v / 65536 for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    scale = max(abs(a), abs(b), abs(c), abs(d))
    if scale == 0:
        return Orientation(exact=False)
    a, b, c, d = (round(v / scale, 6) for v in (a, b, c, d))
    det = a * d - b * c
    hflip = det < 0
    if hflip:  # undo the on-screen mirror (it negated a and c)
        a, c = -a, -c
    for turns, (cos, sin) in enumerate(((1, 0), (0, 1), (-1, 0), (0, -1))):
        if (a, b, c, d) == (cos, -sin, sin, cos):
            return Orientation(turns, hflip)
    return Orientation(hflip=hflip, exact=False)


def apply_orientation_shape(height: int, width: int, orient: Orientation) -> tuple[int, int]:
    """(height, width) of a picture after ``orient`` is applied to it."""
    return (width, height) if orient.swaps_axes else (height, width)


# --------------------------------------------------------------------------- sample aspect ratio


def normalise_sar(sar: Fraction | None) -> Fraction:
    """A stream's sample aspect ratio, 1 when unset or nonsense (0/0, 0/1: FFmpeg's "unknown")."""
    if sar is None or sar <= 0:
        return Fraction(1)
    return Fraction(sar)


def rotated_sar(sar: Fraction, orient: Orientation) -> Fraction:
    """A pixel w:h of ``sar`` turned by a quarter turn becomes 1/sar."""
    return 1 / sar if orient.swaps_axes else sar


# --------------------------------------------------------------------------- HDR10 static metadata


@dataclass(frozen=True)
class MasteringDisplay:
    """SMPTE ST 2086 mastering display colour volume: CIE 1931 xy chromaticities of the red, green
    and blue primaries and the white point, and the luminance range in cd/m^2 (exact rationals)."""

    red: tuple[Fraction, Fraction]
    green: tuple[Fraction, Fraction]
    blue: tuple[Fraction, Fraction]
    white: tuple[Fraction, Fraction]
    min_luminance: Fraction
    max_luminance: Fraction

    def x265(self) -> str:
        """x265/x264 ``master-display``/``mastering-display``: chromaticities in 0.00002 units,
        luminance in 0.0001 cd/m^2, order G B R WP L(max,min)."""
        def xy(p):
            return f"({round(p[0] * 50000)},{round(p[1] * 50000)})"

        return (
            f"G{xy(self.green)}B{xy(self.blue)}R{xy(self.red)}WP{xy(self.white)}"
            f"L({round(self.max_luminance * 10000)},{round(self.min_luminance * 10000)})"
        )

    def svtav1(self) -> str:
        """SVT-AV1 ``mastering-display``: the same order in plain decimal values."""
        def xy(p):
            return f"({float(p[0]):.5f},{float(p[1]):.5f})"

        return (
            f"G{xy(self.green)}B{xy(self.blue)}R{xy(self.red)}WP{xy(self.white)}"
            f"L({float(self.max_luminance):.4f},{float(self.min_luminance):.4f})"
        )


@dataclass(frozen=True)
class ContentLight:
    """CTA-861.3 content light level: MaxCLL and MaxFALL in cd/m^2."""

    max_cll: int
    max_fall: int


@dataclass(frozen=True)
class HdrMetadata:
    """HDR10 static metadata of a stream (either part may be missing)."""

    mastering: MasteringDisplay | None = None
    light: ContentLight | None = None

    def describe(self) -> str:
        parts = []
        if self.mastering is not None:
            m = self.mastering
            parts.append(f"mastering display {float(m.min_luminance):g}-{float(m.max_luminance):g} cd/m2")
        if self.light is not None:
            parts.append(f"MaxCLL {self.light.max_cll}, MaxFALL {self.light.max_fall}")
        return ", ".join(parts)


def _rational(num: int, den: int) -> Fraction | None:
    return Fraction(num, den) if den else None


def parse_mastering_display(data: bytes) -> MasteringDisplay | None:
    """``AVMasteringDisplayMetadata`` (88 bytes: 10 AVRational of 2 int32, then two int flags).
    None when malformed or when it has neither primaries nor luminance."""
    if len(data) < 88:
        return None
    values = struct.unpack("<20i2i", data[:88])
    has_primaries, has_luminance = values[20], values[21]
    if not (has_primaries and has_luminance):
        # Both halves are needed for the encoders' option strings; a half-filled block is rare.
        return None
    r = [_rational(values[i], values[i + 1]) for i in range(0, 20, 2)]
    if any(v is None for v in r):
        return None
    return MasteringDisplay(red=(r[0], r[1]), green=(r[2], r[3]), blue=(r[4], r[5]), white=(r[6], r[7]), min_luminance=r[8], max_luminance=r[9])


def parse_content_light(data: bytes) -> ContentLight | None:
    """``AVContentLightMetadata``: two unsigned ints."""
    if len(data) < 8:
        return None
    max_cll, max_fall = struct.unpack("<2I", data[:8])
    return ContentLight(max_cll, max_fall)


#: Encoders vsr hands HDR10 static metadata to, and the option that takes the parameters.
HDR_ENCODERS = {"libx265": "x265-params", "libx264": "x264-params", "libsvtav1": "svtav1-params"}


def hdr_params(codec: str, hdr: HdrMetadata) -> dict[str, str]:
    """``key=value`` parameters for ``codec``'s parameter string (see :data:`HDR_ENCODERS`) that
    write ``hdr`` into the bitstream; empty for encoders that cannot."""
    out: dict[str, str] = {}
    m, light = hdr.mastering, hdr.light
    if codec == "libx265":
        if m is not None:
            out["master-display"] = m.x265()
        if light is not None:
            out["max-cll"] = f"{light.max_cll},{light.max_fall}"
        if out:
            out["hdr10"] = "1"  # signal HDR10 (and repeat the SEI with every keyframe)
    elif codec == "libx264":
        if m is not None:
            out["mastering-display"] = m.x265()
        if light is not None:
            out["cll"] = f"{light.max_cll},{light.max_fall}"
    elif codec == "libsvtav1":
        if m is not None:
            out["mastering-display"] = m.svtav1()
        if light is not None:
            out["content-light"] = f"{light.max_cll},{light.max_fall}"
    return out


def merge_params(existing: str | None, extra: dict[str, str]) -> str:
    """Add ``extra`` to a ``k=v:k=v`` parameter string; keys the user already set win."""
    items = [p for p in (existing or "").split(":") if p]
    given = {p.split("=", 1)[0] for p in items}
    items += [f"{k}={v}" for k, v in extra.items() if k not in given]
    return ":".join(items)


# --------------------------------------------------------------------------- field order

#: AVFieldOrder values -> FFmpeg's names.
FIELD_ORDERS = {0: "unknown", 1: "progressive", 2: "tt", 3: "bb", 4: "tb", 5: "bt"}
AV_FIELD_PROGRESSIVE = 1


def field_order_name(value: int | str | None) -> str:
    """``codec_context.field_order`` (an int in PyAV) -> ``progressive``/``tt``/``bb``/``tb``/``bt``/``unknown``."""
    if isinstance(value, str):
        return value if value in FIELD_ORDERS.values() else "unknown"
    return FIELD_ORDERS.get(int(value or 0), "unknown")


def interlaced_field_order(name: str) -> bool:
    """True for the field orders that mean interlaced content."""
    return name in ("tt", "bb", "tb", "bt")


def top_field_first(name: str) -> bool:
    """Field parity for a stream-level field order: top first for tt/tb (and when unknown, the
    common case for HD broadcast and DV-less archives)."""
    return name not in ("bb", "bt")
