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

These rules are applied as the file is demuxed by :class:`Cut`, frame by frame and packet by packet;
the decoder (:mod:`vsr.media.decode`) and the batch segment joiner (:mod:`vsr.batch.segments`)
both use it, so a trim means the same in both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av

from ..errors import InputError, UsageError
from ..frame import CopiedPacket, VideoInfo
from .deinterlace import DeinterlacePlan, output_time_base

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


# Once the video is past a trim's end, stop demuxing when the file is this far past it (muxers
# interleave streams much closer than that; sparse subtitle streams may never pass the end).
_END_MARGIN = Fraction(10)


class SeekMissed(Exception):
    """The demuxer's seek landed after the start of the trim (an imprecise index, e.g. MPEG-TS):
    raised by :meth:`Cut.frame` on the first frame, so the decoder reads from the start instead."""


def window_text(window: Window, info: VideoInfo) -> str:
    """A trim window in the user's terms (from the start of the file)."""
    start = format_time(window.start - info.start_time)
    end = f" to {format_time(window.end - info.start_time)}" if window.end is not None else ""
    frames = f", at most {window.frames} frames" if window.frames is not None else ""
    length = f"; the file lasts {format_time(info.duration)}" if info.duration else ""
    return f"from {start}{end}{frames}{length}"


class Cut:
    """Which frames and copied packets a trim keeps, and how far their timestamps move.

    Without a window everything is kept unchanged. With one, copied packets wait while their fate
    is open: before the first kept frame (the shift is that frame's time), and, for a ``--frames``
    count, past the last kept frame (the range ends where the frame after the last one starts).
    So what is kept depends only on the file, not on how far the decoder's threads ran ahead.
    """

    @classmethod
    def for_range(cls, window: Window, info: VideoInfo, *, offset: Fraction, end: Fraction | None, copied: set[int], subtitles: set[int]) -> Cut:
        """The copied-packet side of a cut whose video range is already known (``offset``: the
        first kept frame's time; ``end``: the first frame past the range, None: the file's end),
        for remuxing the other streams of a trimmed video decoded elsewhere (batch segments)."""
        cut = cls(window, info, DeinterlacePlan(), seek=False, subtitles=subtitles, copied=copied)
        cut.offset, cut.video_done = offset, True
        ends = [e for e in (end, window.end) if e is not None]
        cut.end = min(ends) if ends else None
        return cut

    def __init__(self, window: Window | None, info: VideoInfo, plan: DeinterlacePlan, *, seek: bool, subtitles: set[int], copied: set[int]):
        self.window = window
        self.info = info
        self.seek = seek
        self.subtitles = subtitles
        self.open_streams = set(copied)  # copied streams not yet past the end
        self.rescale = window is not None or plan.enabled or plan.lazy
        self.time_base = output_time_base(info.time_base, plan)
        self.offset: Fraction | None = Fraction(0) if window is None else None
        self.kept = 0
        self.end: Fraction | None = window.end if window is not None else None
        self.video_done = False
        self.clock = Fraction(0)
        self.horizon: Fraction | None = None  # time of the last kept frame
        self._pending: list[av.Packet] = []
        self._first = True

    @property
    def finished(self) -> bool:
        """Nothing more is needed from the file."""
        if not self.video_done:
            return False
        return not self.open_streams or (self.end is not None and self.clock >= self.end + _END_MARGIN)

    def frame(self, frame: av.VideoFrame) -> str:
        """``keep``, ``drop`` (before the range) or ``stop`` (past it) for a decoded frame."""
        first, self._first = self._first, False
        if self.window is None:
            return "keep"
        if frame.pts is None:
            raise InputError(f"input {self.info.path}: a decoded frame has no timestamp, so the video cannot be trimmed; leave out --start/--duration/--frames")
        t = frame.pts * Fraction(frame.time_base or self.info.time_base)
        if first and self.seek and t > self.window.start:
            raise SeekMissed(f"seeking for --start landed at {format_time(t - self.info.start_time)}, after the start")
        if self.window.before(t):
            return "drop"
        if self.window.past(t, self.kept):
            self.video_done = True
            self.end = t if self.end is None else min(self.end, t)
            return "stop"
        if self.offset is None:
            self.offset = t
        self.horizon = t
        self.kept += 1
        return "keep"

    def timestamp(self, frame: av.VideoFrame) -> tuple[int | None, Fraction]:
        """The kept frame's output (pts, time_base)."""
        tb = Fraction(frame.time_base) if frame.time_base else self.info.time_base
        if not self.rescale or frame.pts is None:
            return frame.pts, tb
        ticks = (frame.pts * tb - self.offset) / self.time_base
        return round(ticks), self.time_base

    def packet(self, packet: av.Packet) -> Iterator[CopiedPacket]:
        """A copied packet: passed on, held until the first frame, or dropped."""
        index = packet.stream.index
        if self.window is None:
            yield CopiedPacket(packet, index)
            return
        t, duration = self._times(packet)
        if t is None:
            return
        self.clock = max(self.clock, t)
        if self.video_done and self.end is not None and t >= self.end:
            self.open_streams.discard(index)
            return
        if not self.window.keeps_packet(t, duration, self.end):
            return
        if self.offset is None or self._open(t):
            self._pending.append(packet)
            return
        yield self._shifted(packet)

    def advance(self, packet: av.Packet) -> None:
        """A video packet read after the range ended: only moves the clock."""
        t, _ = self._times(packet)
        if t is not None:
            self.clock = max(self.clock, t)

    def release(self, *, final: bool = False) -> Iterator[CopiedPacket]:
        """Held-back copied packets whose fate is now known (all of them when ``final``: the file ended)."""
        if self.offset is None or not self._pending:
            return
        pending, self._pending = self._pending, []
        for packet in pending:
            t, duration = self._times(packet)
            if not self.window.keeps_packet(t, duration, self.end):
                continue
            if self._open(t) and not final:
                self._pending.append(packet)
                continue
            yield self._shifted(packet)

    def _open(self, t: Fraction) -> bool:
        # Past the last kept frame, with the range's end still unknown (a --frames count).
        if self.video_done or self.end is not None or self.window.frames is None:
            return False
        return self.horizon is None or t >= self.horizon

    def _times(self, packet: av.Packet) -> tuple[Fraction | None, Fraction]:
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None or not packet.time_base:
            return None, Fraction(0)
        tb = Fraction(packet.time_base)
        return stamp * tb, (packet.duration or 0) * tb

    def _shifted(self, packet: av.Packet) -> CopiedPacket:
        index = packet.stream.index
        packet.pts, packet.dts, packet.duration = shift_packet(
            packet.pts, packet.dts, packet.duration, Fraction(packet.time_base), self.offset, clip=index in self.subtitles,
        )
        return CopiedPacket(packet, index)
