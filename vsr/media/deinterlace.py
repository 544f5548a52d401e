"""Deinterlacing before the network, with FFmpeg's ``bwdif`` filter (libavfilter, in process).

A network upscales the comb of an interlaced frame as if it were detail, so interlaced frames are
turned into progressive ones first. ``bwdif`` (Bob Weaver) interpolates each missing field line
from both fields and the neighbouring frames; it is FFmpeg's best general-purpose deinterlacer.

* ``rate="frame"``: one progressive frame per input frame, with the input frame's own time (the
  frame count and every timestamp stay as they were).
* ``rate="field"``: one frame per field, at the field times (twice the frames; the second field
  of each frame sits half a frame period after the first).

The filter reads each frame's own interlaced/top-field-first flags (``parity=auto``) and, with
``deint="interlaced"``, passes progressive frames through untouched, so mixed files work. Telecined
film (3:2 pulldown) is not inverse-telecined: that needs field matching (``fieldmatch``), which
vsr does not do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

import av

from ..errors import UsageError
from ..frame import VideoInfo
from .presentation import interlaced_field_order, top_field_first

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
RATES = ("frame", "field")


@dataclass(frozen=True)
class DeinterlacePlan:
    """What the decoder does about interlacing for one input.

    ``enabled``: frames go through ``bwdif`` from the start; ``lazy``: only once a frame flagged
    interlaced shows up (``auto`` on a file that starts progressive). ``deint`` is bwdif's
    ``interlaced`` (flagged frames only) or ``all``; ``parity`` its ``auto`` (frame flags), ``tff``
    or ``bff``.
    """

    enabled: bool = False
    lazy: bool = False
    rate: str = "frame"
    deint: str = "interlaced"
    parity: str = "auto"

    @property
    def doubles_rate(self) -> bool:
        """The output has a frame per field from the start."""
        return self.enabled and self.rate == "field"

    @property
    def frames_per_input(self) -> int:
        """Output frames per decoded frame: 2 at field rate, else 1."""
        return 2 if self.doubles_rate else 1

    @property
    def field_times(self) -> bool:
        """Frames may come at field times (half a frame period apart): the time base must hold them."""
        return (self.enabled or self.lazy) and self.rate == "field"


def plan(mode: str, rate: str, info: VideoInfo) -> DeinterlacePlan:
    """Decide from ``--deinterlace``/``--deinterlace-rate`` and what the probe saw.

    ``auto``: deinterlace when the stream's field order says interlaced or its first frame is
    flagged interlaced, and otherwise start the filter on the first flagged frame (in frame rate
    mode nothing about the output changes for that). ``on``: every frame, with the parity from the
    frames, else from the stream. ``off``: nothing (a warning when the source is interlaced).
    """
    if mode not in MODES:
        raise UsageError(f"--deinterlace {mode}: choose one of {', '.join(MODES)}")
    if rate not in RATES:
        raise UsageError(f"--deinterlace-rate {rate}: choose one of {', '.join(RATES)}")
    stream_says = interlaced_field_order(info.field_order)
    parity = "auto" if info.interlaced_frames or not stream_says else ("tff" if top_field_first(info.field_order) else "bff")
    if mode == "off":
        return DeinterlacePlan(rate=rate)
    if mode == "on":
        parity = parity if info.interlaced_frames else ("tff" if top_field_first(info.field_order) else "bff")
        return DeinterlacePlan(enabled=True, rate=rate, deint="all", parity=parity)
    if info.interlaced_frames:
        return DeinterlacePlan(enabled=True, rate=rate, deint="interlaced")
    if stream_says:
        # The stream says interlaced but the frames carry no flag (some MPEG-2/DV files):
        # trust the stream, with its parity.
        return DeinterlacePlan(enabled=True, rate=rate, deint="all", parity=parity)
    return DeinterlacePlan(lazy=True, rate=rate, deint="interlaced")


class Deinterlacer:
    """``bwdif`` on a stream of decoded frames; the graph is built from the first frame it sees
    (size, pixel format, time base) and rebuilt, after a flush, if they change."""

    def __init__(self, plan: DeinterlacePlan, time_base: Fraction):
        self.plan = plan
        self.time_base = time_base  # for frames the decoder left without one
        self._graph = None
        self._key = None
        self.started = plan.enabled

    def push(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        """Frames ready after ``frame`` (none, one, or two in field mode; bwdif looks one frame ahead)."""
        if not self.started:
            if not (self.plan.lazy and frame.interlaced_frame):
                return [frame]
            log.warning("frames flagged interlaced from pts %s on; deinterlacing them (bwdif)", frame.pts)
            self.started = True
        if frame.time_base is None:
            frame.time_base = self.time_base
        key = (frame.width, frame.height, frame.format.name, frame.time_base)
        out: list[av.VideoFrame] = []
        if self._graph is not None and key != self._key:
            out += self.flush()
        if self._graph is None:
            self._graph, self._key = self._build(frame), key
        self._graph.push(frame)
        return out + self._drain()

    def flush(self) -> list[av.VideoFrame]:
        """The frames held back at the end of the stream."""
        if self._graph is None:
            return []
        self._graph.push(None)
        out = self._drain()
        self._graph = None
        return out

    def _build(self, frame: av.VideoFrame):
        graph = av.filter.Graph()
        source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=frame.time_base)
        parity = {"auto": -1, "tff": 0, "bff": 1}[self.plan.parity]
        mode = "send_field" if self.plan.rate == "field" else "send_frame"
        bwdif = graph.add("bwdif", f"mode={mode}:parity={parity}:deint={self.plan.deint}")
        sink = graph.add("buffersink")
        source.link_to(bwdif)
        bwdif.link_to(sink)
        graph.configure()
        return graph

    def _drain(self) -> list[av.VideoFrame]:
        out = []
        while True:
            try:
                out.append(self._graph.pull())
            except (av.error.BlockingIOError, av.error.EOFError):
                return out


def output_time_base(time_base: Fraction, plan: DeinterlacePlan) -> Fraction:
    """The encoder's time base: the source's, or half of it when each field becomes a frame."""
    return time_base / 2 if plan.field_times else time_base
