"""Trimming a video for a preview: ``--start``, ``--duration`` and ``--frames``.

The cut is frame-exact and decided on exact rational times (a frame's ``pts * time_base``), never
on floats. Times given by the user are measured from the start of the file as players show it,
that is from the container's start time (MPEG-TS files often begin at 1.4 s or later), like
FFmpeg's ``-ss``.

Video: every frame whose time lies in ``[start, end)`` is kept, at most ``frames`` of them; the
decoder starts at the keyframe before ``start`` and the frames before the range are dropped.
Copied audio and subtitle packets: a packet is kept when it starts before ``end`` and ends after
``start``, so a packet that straddles the start is kept whole (the audio may begin up to one
packet before the video). Every kept timestamp moves by the same amount (the time of the first
kept video frame), so the output's video starts at 0 and audio stays in sync. A subtitle cue
that began before the cut is shortened to start at the cut instead of at a negative time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from ..errors import UsageError

_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")
_SECONDS = re.compile(r"^\d+(?:\.\d*)?$|^\.\d+$")


def parse_time(text: str) -> Fraction:
    """``"90"``, ``"1.5"``, ``"01:30"``, ``"00:01:30.250"`` -> exact seconds as a Fraction.

    Raises ValueError (argparse turns it into a usage error) for anything else, negatives included.
    """
    text = text.strip()
    if _SECONDS.match(text):
        return Fraction(text)
    match = _CLOCK.match(text)
    if not match:
        raise ValueError(f"expected seconds (90, 1.5) or [HH:]MM:SS[.ms] (00:01:30.5), got {text!r}")
    hours, minutes, seconds = match.groups()
    if int(minutes) >= 60 and hours is not None:
        raise ValueError(f"minutes must be below 60 in {text!r}")
    if Fraction(seconds) >= 60:
        raise ValueError(f"seconds must be below 60 in {text!r}")
    return Fraction(int(hours or 0) * 3600 + int(minutes) * 60) + Fraction(seconds)


def format_time(seconds: Fraction | float) -> str:
    """Seconds -> ``HH:MM:SS.mmm`` for log lines and errors."""
    ms = round(float(seconds) * 1000)
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    return f"{sign}{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


@dataclass(frozen=True)
class Trim:
    """What the user asked for: ``start`` and ``duration`` in seconds, ``frames`` a count (None: no limit)."""

    start: Fraction = Fraction(0)
    duration: Fraction | None = None
    frames: int | None = None

    def __post_init__(self):
        if self.start < 0:
            raise UsageError(f"--start must be >= 0, got {self.start}")
        if self.duration is not None and self.duration <= 0:
            raise UsageError(f"--duration must be > 0, got {self.duration}")
        if self.frames is not None and self.frames < 1:
            raise UsageError(f"--frames must be >= 1, got {self.frames}")

    @property
    def active(self) -> bool:
        return bool(self.start) or self.duration is not None or self.frames is not None

    def describe(self) -> str:
        parts = [f"from {format_time(self.start)}"]
        if self.duration is not None:
            parts.append(f"for {format_time(self.duration)}")
        if self.frames is not None:
            parts.append(f"at most {self.frames} frames")
        return " ".join(parts)

    def fingerprint(self) -> dict:
        """JSON-safe form (batch manifests compare it between runs)."""
        return {
            "start": str(self.start), "duration": None if self.duration is None else str(self.duration), "frames": self.frames,
        }

    def window(self, file_start: Fraction = Fraction(0)) -> Window:
        """The absolute bounds in a file whose timestamps begin at ``file_start`` seconds."""
        begin = file_start + self.start
        return Window(begin, None if self.duration is None else begin + self.duration, self.frames)


def window_of(trim: Trim | None, file_start: Fraction) -> Window | None:
    """:meth:`Trim.window` for a file starting at ``file_start``; None when nothing is trimmed."""
    return trim.window(file_start) if trim is not None and trim.active else None


def check_decoder(decoder: str, trim: Trim | None) -> None:
    """Refuse a trim with a decoder that only reads whole files (DALI)."""
    if decoder != "pyav" and trim is not None and trim.active:
        raise UsageError("--decoder dali decodes whole files; leave out --start/--duration/--frames, or use --decoder pyav")


@dataclass(frozen=True)
class Window:
    """Absolute trim bounds in the file's own time (seconds); ``end`` None is open."""

    start: Fraction
    end: Fraction | None
    frames: int | None

    def before(self, t: Fraction) -> bool:
        """A frame at ``t`` comes before the range (dropped; keep decoding)."""
        return t < self.start

    def past(self, t: Fraction, kept: int) -> bool:
        """A frame at ``t``, after ``kept`` frames were kept, is past the range (stop decoding)."""
        return (self.end is not None and t >= self.end) or (self.frames is not None and kept >= self.frames)

    def keeps_packet(self, t: Fraction, duration: Fraction, end: Fraction | None) -> bool:
        """A copied packet at ``t`` lasting ``duration`` overlaps ``[start, end)`` (``end``: where the
        kept video ended, or this window's end); zero-length packets count as instants."""
        if end is not None and t >= end:
            return False
        return t + duration > self.start or (duration == 0 and t >= self.start)


def shift_packet(pts: int | None, dts: int | None, duration: int | None, time_base: Fraction, offset: Fraction, *, clip: bool) -> tuple[int | None, int | None, int | None]:
    """Timestamps of a copied packet moved back by ``offset`` seconds, in its own ``time_base``.

    ``clip`` (subtitles) makes a packet that would start before 0 start at 0 and last that much
    less, so a cue that was on screen at the cut stays on screen; audio (``clip`` False) keeps its
    exact times, negative ones included (the muxer represents them: an MP4 edit list, or a file
    that starts at the earliest packet).
    """
    delta = offset / time_base
    # Offsets come from another stream's time base; round to this stream's ticks (at most half a tick).
    ticks = round(delta)
    new_pts = None if pts is None else pts - ticks
    new_dts = None if dts is None else dts - ticks
    if clip and new_pts is not None and new_pts < 0:
        if duration:
            duration = max(1, duration + new_pts)
        new_pts, new_dts = 0, (0 if new_dts is not None else None)
    return new_pts, new_dts, duration


def trim_chapters(chapters: list[dict], start: Fraction, end: Fraction | None) -> list[dict]:
    """Chapters (PyAV's dicts: ``start``/``end`` in ``time_base``) of the range ``[start, end)``
    seconds, moved to begin at 0 and clipped to the range; chapters outside it are left out."""
    out = []
    for chapter in chapters:
        tb = Fraction(chapter["time_base"])
        a, b = chapter["start"] * tb, chapter["end"] * tb
        if b <= start or (end is not None and a >= end):
            continue
        a, b = max(a, start) - start, (b if end is None else min(b, end)) - start
        out.append({**chapter, "start": round(a / tb), "end": round(b / tb)})
    return out
