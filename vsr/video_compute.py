"""The compute stage of a run: decoded frames in, encoder-ready planes out, in order.

Frames are grouped into batches (:func:`frame_batches`), each group is converted to RGB on the
engine's device, oriented, upscaled, fitted to the output size and converted to the output's planes
(:class:`BatchCompute`), on the calling thread or on an engine's concurrent compute threads
(:func:`compute_groups`), and the encode side writes each group's frames with their own timestamps
(:class:`FrameWriter`). ``vsr run`` (:mod:`vsr.pipeline`) and ``vsr batch`` segments
(:mod:`vsr.batch.segments`) both compute through :func:`compute_frames`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import torch

from . import color
from .dedup import Detector
from .frame import Frame
from .media.encode import Muxer
from .media.plan import VideoPlan
from .media.presentation import Orientation
from .planes import host_frames, planes_to_rgb, rgb_to_planes
from .transfer import Transfer
from .upscale import Upscaler, resample


@dataclass(frozen=True)
class Repeat:
    """A frame whose output is the last computed frame's (``--dedup``): only its own timestamp
    travels on; the encode side writes the reused picture with it (:class:`FrameWriter`)."""

    pts: int | None
    time_base: Fraction


def compute_frames(
    frames: Iterable[Frame], upscaler: Upscaler, put: Callable[[object, int], None], *, planar_fmt: str, colour: color.Colour, plan: VideoPlan,
    detector: Detector | None = None,
) -> int:
    """Every frame of ``frames`` through :class:`BatchCompute` in groups (:func:`compute_groups`),
    each result handed to ``put(result, frames_in_it)`` in order; returns the number of frames.

    With a ``detector`` (``--dedup``), a frame it calls a repeat of the last computed frame skips
    the network and goes on as a :class:`Repeat`; the detector counts them."""
    items = frames if detector is None or not detector.active else _marked(frames, detector)
    return compute_groups(items, upscaler, lambda: BatchCompute(upscaler, planar_fmt=planar_fmt, colour=colour, plan=plan), put)


def _marked(frames: Iterable[Frame], detector: Detector) -> Iterator[Frame | Repeat]:
    # In decode order on the calling thread: the detector's reference is the last computed frame.
    for frame in frames:
        yield Repeat(frame.pts, frame.time_base) if detector.is_repeat(frame) else frame
    detector.close()


def compute_groups(frames: Iterable[Frame | Repeat], upscaler: Upscaler, make: Callable[[], Callable], put: Callable[[object, int], None]) -> int:
    """``put(make()(group), frames_computed)`` for consecutive groups of up to ``upscaler.batch``
    frames to compute (:func:`frame_batches`), in order (a video run's and a ``vsr batch``
    segment's compute step); returns the number of frames put, repeats included. A channel weighs
    a group by the frames it computed: a repeat holds no picture of its own.

    On the calling thread; or, with an engine that runs several calls at once
    (:meth:`Upscaler.concurrent` yielding more than 1: OpenVINO's CPU streams, torch eager on the
    CPU with its threads split), on that many compute threads (:func:`in_order`), so that the
    network's streams never wait for one another."""
    count = 0
    with upscaler.concurrent() as workers:
        sizes: deque[tuple[int, int]] = deque()  # (frames, frames computed) of each group handed out, in order

        def groups() -> Iterator[list[Frame | Repeat]]:
            for group in frame_batches(frames, upscaler.batch):
                sizes.append((len(group), sum(isinstance(f, Frame) for f in group)))
                yield group

        results = in_order(groups(), make, workers) if workers > 1 else _on_this_thread(groups(), make)
        with contextlib.closing(results):
            for result, _ in results:
                n, computed = sizes.popleft()
                put(result, computed)
                count += n
    return count


def _on_this_thread(groups: Iterable[list[Frame]], make: Callable[[], Callable]) -> Iterator[tuple[object, int]]:
    compute = make()
    for group in groups:
        yield compute(group), len(group)


def in_order(groups: Iterable[list[Frame]], make: Callable[[], Callable], workers: int) -> Iterator[tuple[object, int]]:
    """``(make()(group), len(group))`` for each group, in order, computed by ``workers`` threads
    (``vsr-compute_N``, each with its own ``make()``) while the caller hands results on.

    One group more than ``workers`` is submitted before the oldest is awaited, so a compute thread
    that finishes never waits for the caller to give it the next group."""
    local = threading.local()

    def work(group: list[Frame]):
        if not hasattr(local, "compute"):
            local.compute = make()
        return local.compute(group)

    pending: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="vsr-compute") as pool:
        try:
            for group in groups:
                pending.append((pool.submit(work, group), len(group)))
                if len(pending) > workers:
                    future, n = pending.popleft()
                    yield future.result(), n
            while pending:
                future, n = pending.popleft()
                yield future.result(), n
        finally:
            for future, _ in pending:  # an error or a stop: drop what has not started
                future.cancel()


def frame_batches(items: Iterable[Frame | Repeat], size: int) -> Iterator[list[Frame | Repeat]]:
    """Consecutive frames in groups of up to ``size`` frames to compute, each :class:`Repeat` in
    the group where it comes (it costs the network nothing). Some streams switch pixel format or
    colour tags mid-file; a group never mixes them (one conversion per group)."""
    pending: list[Frame | Repeat] = []
    first: Frame | None = None
    count = 0
    for item in items:
        if isinstance(item, Frame):
            if first is not None and (item.pix_fmt, item.colour) != (first.pix_fmt, first.colour):
                yield pending
                pending, first, count = [], None, 0
            first = first or item
            count += 1
        pending.append(item)
        if count == size:
            yield pending
            pending, first, count = [], None, 0
    if pending:
        yield pending


class BatchCompute:
    """One group of frames through colour conversion, the network and back: returns what the
    encode side takes (:class:`FrameWriter`): host planes, a wait function for their copy, and the
    frames' timestamps."""

    def __init__(self, upscaler: Upscaler, *, planar_fmt: str, colour: color.Colour, plan: VideoPlan):
        self.upscaler = upscaler
        self.transfer = Transfer(upscaler.engine.device)
        self.planar_fmt, self.colour = planar_fmt, colour
        self.size, self.resize, self.orient = (plan.height, plan.width), plan.resize, plan.orient

    def __call__(self, group: list[Frame | Repeat]):
        frames = [f for f in group if isinstance(f, Frame)]
        host, ready = None, None
        if frames:  # a group of repeats only has nothing to compute
            with self.transfer.computing():
                rgb = orient_frames(planes_to_rgb(frames, self.upscaler.engine.device, self.transfer), self.orient)
                out = fit_output(self.upscaler(rgb), self.size, self.resize)
                host, ready = self.transfer.download(rgb_to_planes(out, self.planar_fmt, self.colour))
        return host, ready, [(f.pts, f.time_base, isinstance(f, Repeat)) for f in group]


class FrameWriter:
    """The encode side of the compute stage: writes each computed group (from
    :class:`BatchCompute`) once its device-to-host copy is done, every frame with its own
    timestamp; a repeat is written with the planes of the last computed frame (which may be in an
    earlier group: groups arrive in order, on one thread). ``on_frame(frames_written)`` follows
    every frame."""

    def __init__(self, muxer: Muxer, on_frame: Callable[[int], None] | None = None):
        self.muxer, self.on_frame = muxer, on_frame
        self._last: list | None = None

    def __call__(self, item) -> None:
        host, ready, stamps = item
        if ready is not None:
            ready()
        computed = iter(host_frames(host)) if host is not None else iter(())
        for pts, time_base, repeat in stamps:
            if not repeat:
                self._last = next(computed)
            self.muxer.write_frame(self._last, pts, time_base)
            if self.on_frame is not None:
                self.on_frame(self.muxer.stats.frames)


def orient_frames(rgb: torch.Tensor, orient: Orientation) -> torch.Tensor:
    """Turn ``(N, C, H, W)`` frames the way a player shows them (``--auto-rotate``): ``k``
    counterclockwise quarter turns, then a left-right mirror, as :class:`Orientation` says."""
    if orient.quarter_turns:
        rgb = torch.rot90(rgb, orient.quarter_turns, dims=(-2, -1))
    if orient.hflip:
        rgb = torch.flip(rgb, dims=(-1,))
    return rgb.contiguous() if (orient.quarter_turns or orient.hflip) else rgb


def fit_output(out: torch.Tensor, size: tuple[int, int], resize: bool) -> torch.Tensor:
    """``--outscale`` resamples; otherwise a size made even for 4:2:0 gains a replicated edge row/column."""
    if resize:
        return resample(out, *size)
    pad_h, pad_w = size[0] - out.shape[-2], size[1] - out.shape[-1]
    if pad_h or pad_w:
        out = torch.nn.functional.pad(out, (0, pad_w, 0, pad_h), mode="replicate")
    return out
