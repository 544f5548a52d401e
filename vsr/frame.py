"""Value types that travel through the video pipeline: what a video is, one decoded frame, and a
packet of another stream copied as it is.

A :class:`Frame` carries the decoder's pixels as planes (no colour conversion yet), with the
decoder's own ``pts`` and ``time_base``. Output timestamps are these timestamps; nothing in vsr
derives a timestamp from a frame rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .color import Colour
from .media.presentation import HdrMetadata, interlaced_field_order, orientation

if TYPE_CHECKING:  # annotations only: the value types need no PyAV to be built or read
    import av


@dataclass(frozen=True)
class StreamInfo:
    """One stream of the input container (for logs, copy decisions and error messages)."""

    index: int
    kind: str  # "video", "audio", "subtitle", "attachment", "data"
    codec: str
    language: str | None = None

    def describe(self) -> str:
        lang = f" [{self.language}]" if self.language else ""
        return f"#{self.index} {self.kind} {self.codec}{lang}"


@dataclass(frozen=True)
class VideoInfo:
    """What the input's video stream declares, before any frame is decoded.

    ``frames_hint`` comes from the container header and is only a progress hint (it is missing or
    wrong in many files); the pipeline counts what it actually decodes.
    """

    path: Path
    container: str
    codec: str
    width: int
    height: int
    pix_fmt: str
    time_base: Fraction
    rate: Fraction | None
    frames_hint: int | None
    duration: float | None
    colour: Colour
    stream_index: int
    streams: tuple[StreamInfo, ...] = ()
    # How the pictures are to be shown (see vsr.media.presentation), from the stream header and
    # the first decoded frame.
    sar: Fraction = Fraction(1)
    display_matrix: tuple[int, ...] | None = None
    field_order: str = "unknown"
    interlaced_frames: bool = False  # the first frame is flagged interlaced
    hdr: HdrMetadata | None = None
    start_time: Fraction = Fraction(0)  # seconds: where the file's timeline begins (trims count from here)

    @property
    def interlaced(self) -> bool:
        """Whether the stream's field order or the first frame's flag says interlaced."""
        return self.interlaced_frames or interlaced_field_order(self.field_order)

    def describe(self) -> str:
        rate = f"{float(self.rate):.3g} fps" if self.rate else "unknown rate"
        count = f", ~{self.frames_hint} frames" if self.frames_hint else ""
        extra = []
        if self.sar != 1:
            extra.append(f"SAR {self.sar.numerator}:{self.sar.denominator}")
        if self.display_matrix is not None:
            extra.append(f"display matrix: {orientation(self.display_matrix).describe()}")
        if self.interlaced:
            extra.append(f"interlaced (field order {self.field_order})")
        if self.hdr is not None:
            extra.append(f"HDR10 {self.hdr.describe()}")
        more = "".join(f", {e}" for e in extra)
        return f"{self.codec} {self.width}x{self.height} {self.pix_fmt} {self.colour.describe()}, {rate}{count}{more}"


@dataclass
class Frame:
    """One decoded video frame.

    ``planes`` are 2-D numpy arrays in the layout of ``pix_fmt`` (Y, U, V for planar YUV; G, B, R
    for ``gbrp``; one plane for gray), uint8 for 8-bit formats and uint16 above. ``pts`` is in
    ``time_base`` units, straight from the decoder (None only when the stream has no timestamps).
    ``colour`` is what the frame's own tags say, the stream's where the frame is untagged.
    """

    index: int
    planes: list[np.ndarray]
    pix_fmt: str
    pts: int | None
    time_base: Fraction
    width: int
    height: int
    colour: Colour

    @property
    def time(self) -> float | None:
        """Presentation time in seconds."""
        return None if self.pts is None else float(self.pts * self.time_base)


@dataclass
class CopiedPacket:
    """A packet of a non-video stream, to be muxed as it is (remux, no re-encode)."""

    packet: av.Packet
    source_index: int  # the stream's index in the input
