"""``vsr run`` on a video: decode -> colour -> tiles -> engine -> colour -> encode + mux.

Three stages run at once, joined by bounded channels so memory stays flat however long the video:

* the decode thread demuxes the input once, decoding video frames and passing the packets of the
  copied streams along in file order;
* the calling thread batches frames, converts them to RGB on the engine's device, upscales them
  and converts back to the output's planes (torch releases the GIL while it computes); with an
  engine that runs several calls at once on the CPU (OpenVINO's streams, torch with its threads
  split), that many compute threads do this for successive groups and the calling thread passes
  their results on in order (:func:`compute_groups`);
* the encode thread encodes frames with their input timestamps and muxes the copied packets.

PyAV releases the GIL while it decodes, encodes and muxes, so the two I/O threads run beside the
network. The run ends with the check that every decoded frame was encoded; the output file is
published (:func:`vsr.files.publish`: a private temporary file, then one atomic step) only after
that.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from . import color
from .errors import UsageError, VsrError
from .frame import Frame, VideoInfo
from .media import dali_decode
from .media.decode import CopiedPacket, iter_media, open_input
from .media.encode import CONTAINERS, EncodeSettings, Muxer, check_encoder, container_format, plan_encoder, planar_source
from .media.options import VideoOptions
from .media.plan import PictureOptions, VideoPlan, plan_video
from .media.presentation import Orientation
from .media.trim import Trim, check_decoder, format_time
from .files import check_output, publish
from .transfer import Transfer
from .upscale import Upscaler, resample

log = logging.getLogger(__name__)

# Frames held between stages; with --batch N the compute stage holds N more.
QUEUE_FRAMES = 4


@dataclass(frozen=True)
class VideoJob:
    """One ``vsr run`` on a video file: its input, its output and the video options."""

    source: Path
    target: Path
    video: VideoOptions = VideoOptions()
    overwrite: bool = False


@dataclass(frozen=True)
class RunResult:
    """What the summary line reports."""

    frames: int
    seconds: float
    output: Path
    output_bytes: int
    info: VideoInfo

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- channels


class Stopped(Exception):
    """Raised inside a stage when another stage failed or the run was interrupted."""


class Channel:
    """A FIFO between two threads, bounded by the total weight of what it holds.

    Frames weigh 1 and copied packets 0, so a burst of audio packets never blocks but the number
    of decoded frames in flight is capped. ``stop`` (shared by all channels of a run) wakes every
    waiting thread with :class:`Stopped`.
    """

    _END = object()

    def __init__(self, capacity: int, stop: threading.Event):
        self.capacity = capacity
        self.stop = stop
        self._items: deque = deque()
        self._weight = 0
        self._cond = threading.Condition()

    def put(self, item, weight: int = 1) -> None:
        with self._cond:
            while weight and self._weight + weight > self.capacity:
                if self.stop.is_set():
                    raise Stopped
                self._cond.wait(0.1)
            if self.stop.is_set():
                raise Stopped
            self._items.append((item, weight))
            self._weight += weight
            self._cond.notify_all()

    def close(self) -> None:
        """Mark the end of the stream (the reader gets :data:`END` after the last item)."""
        self.put(self._END, 0)

    def get(self):
        with self._cond:
            while not self._items:
                if self.stop.is_set():
                    raise Stopped
                self._cond.wait(0.1)
            item, weight = self._items.popleft()
            self._weight -= weight
            self._cond.notify_all()
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @classmethod
    def is_end(cls, item) -> bool:
        return item is cls._END


class Stage(threading.Thread):
    """A pipeline thread that records its exception and stops the whole run when it fails."""

    def __init__(self, name: str, target: Callable[[], None], stop: threading.Event, wake: Callable[[], None]):
        super().__init__(name=f"vsr-{name}", daemon=True)
        self._target_fn = target
        self._stop_event = stop
        self._wake = wake
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except Stopped:
            pass
        except BaseException as err:  # handed to the calling thread, which re-raises it
            self.error = err
            self._stop_event.set()
            self._wake()


# --------------------------------------------------------------------------- colour dispatch


def planes_to_rgb(frames: list[Frame], device: torch.device, transfer: Transfer | None = None) -> torch.Tensor:
    """Decoded planes of a batch of frames (one pixel format and colour) -> float32 RGB
    ``(N, 3, H, W)`` on ``device``, with the matrix and range the frames declare."""
    from .kernels.convert import to_float
    from .kernels.yuv import yuv_to_rgb

    transfer = transfer or Transfer(device)
    if frames[0].pix_fmt in dali_decode.PIX_FMTS:  # DALI: packed RGB (host or CUDA), BT.601-coded
        return dali_decode.frames_to_rgb(frames, device, upload=transfer.upload)
    colour = frames[0].colour
    lay = color.layout(frames[0].pix_fmt)
    planes = [transfer.upload(_stack([f.planes[i] for f in frames], lay.bits)) for i in range(len(frames[0].planes))]
    if lay.family == "rgb":  # gbrp: planes are G, B, R
        g, b, r = planes
        return to_float(torch.stack([r, g, b], dim=1), lay.bits)
    if lay.family == "gray":  # luma with neutral chroma: the matrix drops out, the range stays
        neutral = torch.full_like(planes[0], 1 << (lay.bits - 1))
        planes = [planes[0], neutral, neutral]
    kr, kb = color.MATRICES[colour.matrix]
    return yuv_to_rgb(*planes, kr=kr, kb=kb, bits=lay.bits, full_range=colour.full_range)


def rgb_to_planes(rgb: torch.Tensor, planar_fmt: str, colour: color.Colour) -> list[torch.Tensor]:
    """Float RGB ``(N, 3, H, W)`` -> the planes of ``planar_fmt``, batched, on the same device:
    ``(N, h, w)`` per plane (uint8, or int16 holding uint16 bits), or one ``(N, H, W, 3)`` for
    rgb24/rgb48le."""
    from .kernels.convert import quantize
    from .kernels.yuv import rgb_to_yuv

    if planar_fmt in ("rgb24", "rgb48le"):
        bits = 8 if planar_fmt == "rgb24" else 16
        return [_narrow(quantize(rgb.permute(0, 2, 3, 1), bits), bits)]
    lay = color.layout(planar_fmt)
    kr, kb = color.MATRICES[colour.matrix]
    y, u, v = rgb_to_yuv(rgb, kr=kr, kb=kb, bits=lay.bits, full_range=colour.full_range, chroma=lay.chroma)
    return [_narrow(p, lay.bits) for p in ((y,) if lay.family == "gray" else (y, u, v))]


def host_frames(planes: list[torch.Tensor]) -> list[list[np.ndarray]]:
    """Batched host planes from :func:`rgb_to_planes` -> per frame, numpy planes for the encoder."""
    arrays = [p.numpy() for p in planes]
    arrays = [a.view(np.uint16) if a.dtype == np.int16 else a for a in arrays]
    return [[a[i] for a in arrays] for i in range(arrays[0].shape[0])]


def _narrow(codes: torch.Tensor, bits: int) -> torch.Tensor:
    # Codes above 8 bits travel as int16 (the same 16 bits as uint16, which torch can barely
    # handle): half the bytes of int32 to copy off the device.
    return codes if bits <= 8 else codes.to(torch.int16)


def _stack(planes: list[np.ndarray], bits: int) -> torch.Tensor:
    data = np.stack(planes)
    if data.dtype == np.uint16:
        # torch's uint16 has few ops; 9-15 bit codes fit int16 without a copy, 16-bit needs int32.
        data = data.view(np.int16) if bits < 16 else data.astype(np.int32)
    return torch.from_numpy(data)


# --------------------------------------------------------------------------- the run


def check_job(job: VideoJob) -> str:
    """Refuse a bad output before any file is opened; returns the output's container format."""
    fmt = container_format(job.target)
    if fmt is None:
        raise UsageError(f"output {job.target} is not a video container vsr writes; use one of {', '.join(sorted(CONTAINERS))}")
    check_decoder(job.video.decoder, job.video.trim)
    check_encoder(fmt, job.video.settings)
    check_output(job.target, overwrite=job.overwrite, inputs=(job.source,))
    return fmt


def check_trim(trim: Trim | None, info: VideoInfo) -> None:
    """Refuse a ``--start`` at or past the end of the input before any work (when its length is known)."""
    if trim is None or not trim.active or info.duration is None:
        return
    if trim.start >= Fraction(info.duration).limit_denominator(1_000_000):
        raise UsageError(
            f"--start {format_time(trim.start)} is at or past the end of {info.path} (it lasts {format_time(info.duration)}); give an earlier --start"
        )


def plan_output(
    info: VideoInfo, fmt: str, settings: EncodeSettings, picture: PictureOptions, *, scale: int, outscale: float | None, trim: Trim | None = None,
) -> tuple[str, str, VideoPlan]:
    """(encoder, pixel format, plan) of the output for ``info``: the decisions a run and every batch
    segment of it share."""
    codec, pix_fmt = plan_encoder(fmt, info, settings)
    plan = plan_video(info, picture, scale=scale, outscale=outscale, planar_fmt=planar_source(pix_fmt)[0], trim=trim)
    return codec, pix_fmt, plan


def frame_count_hint(info: VideoInfo, trim: Trim | None, plan: VideoPlan) -> int | None:
    """Frames the output will hold, for progress bars (None when unknown). ``--frames`` counts
    output frames; times count input frames, two per frame at field rate."""
    per_frame = plan.deinterlace.frames_per_input
    if trim is None or not trim.active:
        return info.frames_hint * per_frame if info.frames_hint else None
    limits = [] if trim.frames is None else [trim.frames]
    seconds = [] if trim.duration is None else [float(trim.duration)]
    if info.duration is not None:
        seconds.append(max(0.0, info.duration - float(trim.start)))
    if seconds and info.rate:
        limits.append(round(min(seconds) * float(info.rate)) * per_frame)
    return min(limits) if limits else None


def run_video(
    job: VideoJob,
    upscaler: Upscaler,
    *,
    on_start: Callable[[VideoInfo], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> RunResult:
    """Upscale ``job.source`` into ``job.target``. ``on_frame(frames_written)`` is called from the
    encode thread after every frame (progress); ``on_start(info)`` once the input is open."""
    fmt = check_job(job)
    started = time.perf_counter()
    source, info = open_input(job.source, hwaccel=job.video.hwaccel, hwaccel_device=cuda_index(upscaler))
    try:
        log.info("input %s: %s", job.source, info.describe())
        check_trim(job.video.trim, info)
        codec, pix_fmt, plan = plan_output(info, fmt, job.video.settings, job.video.picture, scale=upscaler.scale, outscale=job.video.outscale, trim=job.video.trim)
        plan.log()
        if job.video.decoder == "dali":  # refused before any output file exists
            dali_decode.require()
            dali_decode.check_input(info, _dali_device(upscaler))
            if plan.deinterlace.enabled:
                raise UsageError(f"input {job.source} is interlaced and --decoder dali cannot deinterlace; use --decoder pyav, or --deinterlace off")
        if on_start is not None:
            on_start(replace(info, frames_hint=frame_count_hint(info, job.video.trim, plan)))
        with publish(job.target, overwrite=job.overwrite) as partial, upscaler.glue_threads():
            frames = _run(job, fmt, source, info, upscaler, partial, on_frame, codec=codec, pix_fmt=pix_fmt, plan=plan)
    finally:
        source.close()
    seconds = time.perf_counter() - started
    return RunResult(frames=frames, seconds=seconds, output=job.target, output_bytes=job.target.stat().st_size, info=info)


def _run(job: VideoJob, fmt: str, source, info: VideoInfo, upscaler: Upscaler, partial: Path, on_frame, *, codec: str, pix_fmt: str, plan: VideoPlan) -> int:
    out_colour = color.for_output(info.colour, pix_fmt)
    muxer = Muxer(
        partial, fmt=fmt, info=info, source=source, plan=plan, settings=job.video.settings,
        codec=codec, pix_fmt=pix_fmt, colour=out_colour,
    )
    stop = threading.Event()
    batch = upscaler.batch
    decoded = Channel(QUEUE_FRAMES + batch, stop)
    computed = Channel(QUEUE_FRAMES + batch, stop)
    counts = {"decoded": 0}

    def decode() -> None:
        if job.video.decoder == "dali":
            items = dali_decode.iter_media_dali(
                source, info, copy_streams=muxer.copied_indices, device=_dali_device(upscaler),
                batch=max(8, upscaler.batch), device_id=upscaler.engine.device.index,
            )
        else:
            items = iter_media(source, info, copy_streams=muxer.copied_indices, trim=job.video.trim, deinterlace=plan.deinterlace)
        for item in items:
            if isinstance(item, CopiedPacket):
                decoded.put(item, 0)
            else:
                counts["decoded"] += 1
                decoded.put(item, 1)
        decoded.close()

    def encode() -> None:
        while True:
            item = computed.get()
            if Channel.is_end(item):
                return
            if isinstance(item, CopiedPacket):
                muxer.write_packet(item)
                continue
            write_batch(muxer, item, on_frame)

    def wake() -> None:
        decoded.wake()
        computed.wake()

    stages = [Stage("decode", decode, stop, wake), Stage("encode", encode, stop, wake)]
    for stage in stages:
        stage.start()
    try:
        _compute(decoded, computed, upscaler, out_colour, muxer.planar_fmt, plan)
        computed.close()
        stages[1].join()
        _raise_stage_errors(stages)
        stats = muxer.finish()
    except BaseException as err:
        stop.set()
        wake()
        for stage in stages:
            stage.join(timeout=30)
        muxer.abort()
        if isinstance(err, Stopped):
            _raise_stage_errors(stages)
        raise
    stages[0].join()
    _raise_stage_errors(stages)
    if stats.frames != counts["decoded"] or stats.video_packets != stats.frames:
        raise VsrError(
            f"frame count mismatch: {counts['decoded']} decoded, {stats.frames} encoded, {stats.video_packets} video packets written; "
            f"the output was not published (please report this)"
        )
    return stats.frames


def _dali_device(upscaler: Upscaler) -> str:
    # DALI decodes where the network runs: NVDEC ("mixed") next to a CUDA engine, else its CPU backend.
    return "gpu" if upscaler.engine.device.type == "cuda" else "cpu"


def cuda_index(upscaler: Upscaler) -> int | None:
    """The engine's GPU index (NVDEC decodes there, where the frames go next); None off CUDA."""
    device = upscaler.engine.device
    return device.index if device.type == "cuda" else None


def _raise_stage_errors(stages: list[Stage]) -> None:
    for stage in stages:
        if stage.error is not None:
            raise stage.error


def _compute(decoded: Channel, computed: Channel, upscaler: Upscaler, colour, planar_fmt: str, plan: VideoPlan) -> None:
    """The calling thread's loop: batches of frames through the network (:func:`compute_groups`);
    copied packets are passed on to the encode thread as they come."""

    def frames() -> Iterator[Frame]:
        while True:
            item = decoded.get()
            if Channel.is_end(item):
                return
            if isinstance(item, CopiedPacket):
                computed.put(item, 0)
            else:
                yield item

    compute_groups(frames(), upscaler, lambda: BatchCompute(upscaler, planar_fmt=planar_fmt, colour=colour, plan=plan), computed.put)


def compute_groups(frames: Iterable[Frame], upscaler: Upscaler, make: Callable[[], Callable], put: Callable[[object, int], None]) -> int:
    """``put(make()(group), len(group))`` for consecutive groups of ``upscaler.batch`` frames, in
    order (a video run's and a ``vsr batch`` segment's compute step); returns the frames put.

    On the calling thread; or, with an engine that runs several calls at once
    (:meth:`Upscaler.concurrent` yielding more than 1: OpenVINO's CPU streams, torch eager on the
    CPU with its threads split), on that many compute threads (:func:`in_order`), so that the
    network's streams never wait for one another."""
    count = 0
    with upscaler.concurrent() as workers:
        groups = frame_batches(frames, upscaler.batch)
        results = in_order(groups, make, workers) if workers > 1 else _on_this_thread(groups, make)
        with contextlib.closing(results):
            for result, n in results:
                put(result, n)
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


def frame_batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Consecutive frames in groups of up to ``size``. Some streams switch pixel format or colour
    tags mid-file; a group never mixes them (one conversion per group)."""
    pending: list[Frame] = []
    for frame in frames:
        if pending and (frame.pix_fmt, frame.colour) != (pending[0].pix_fmt, pending[0].colour):
            yield pending
            pending = []
        pending.append(frame)
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending


class BatchCompute:
    """One group of frames through colour conversion, the network and back: returns what the
    encode side takes (:func:`write_batch`): host planes, a wait function for their copy, and the
    frames' timestamps."""

    def __init__(self, upscaler: Upscaler, *, planar_fmt: str, colour: color.Colour, plan: VideoPlan):
        self.upscaler = upscaler
        self.transfer = Transfer(upscaler.engine.device)
        self.planar_fmt, self.colour = planar_fmt, colour
        self.size, self.resize, self.orient = (plan.height, plan.width), plan.resize, plan.orient

    def __call__(self, group: list[Frame]):
        with self.transfer.computing():
            rgb = orient_frames(planes_to_rgb(group, self.upscaler.engine.device, self.transfer), self.orient)
            out = fit_output(self.upscaler(rgb), self.size, self.resize)
            host, ready = self.transfer.download(rgb_to_planes(out, self.planar_fmt, self.colour))
        return host, ready, [(f.pts, f.time_base) for f in group]


def write_batch(muxer: Muxer, item, on_frame: Callable[[int], None] | None = None) -> None:
    """Encode a computed group (from :class:`BatchCompute`) once its device-to-host copy is done."""
    host, ready, stamps = item
    if ready is not None:
        ready()
    for planes, (pts, time_base) in zip(host_frames(host), stamps, strict=True):
        muxer.write_frame(planes, pts, time_base)
        if on_frame is not None:
            on_frame(muxer.stats.frames)


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
