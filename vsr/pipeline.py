"""``vsr run`` on a video: decode -> colour -> tiles -> engine -> colour -> encode + mux.

Three stages run at once, joined by bounded channels so memory stays flat however long the video:

* the decode thread demuxes the input once, decoding video frames and passing the packets of the
  copied streams along in file order;
* the calling thread batches frames, converts them to RGB on the engine's device, upscales them
  and converts back to the output's planes (torch releases the GIL while it computes); with an
  engine that runs several calls at once on the CPU (OpenVINO's streams, torch with its threads
  split), that many compute threads do this for successive groups and the calling thread passes
  their results on in order (:mod:`vsr.video_compute`, shared with ``vsr batch`` segments);
* the encode thread encodes frames with their input timestamps and muxes the copied packets.

The threads, channels and the stop/join rules are :mod:`vsr.stages`; the colour conversion is
:mod:`vsr.planes`.

PyAV releases the GIL while it decodes, encodes and muxes, so the two I/O threads run beside the
network. The run ends with the check that every decoded frame was encoded; the output file is
published (:func:`vsr.files.publish`: a private temporary file, then one atomic step) only after
that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from . import color
from .dedup import Detector, check_mode
from .errors import UsageError, VsrError
from .files import check_output, publish
from .frame import CopiedPacket, Frame, VideoInfo
from .media import dali_decode
from .media.decode import iter_media, open_input
from .media.encode import (
    CONTAINERS,
    EncodeSettings,
    Muxer,
    check_encoder,
    container_format,
    plan_encoder,
    planar_source,
)
from .media.options import VideoOptions
from .media.plan import PictureOptions, VideoPlan, plan_video
from .media.trim import Trim, check_decoder, format_time
from .stages import Channel, Stages
from .upscale import Upscaler
from .video_compute import FrameWriter, compute_frames

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
    reused: int = 0  # frames whose output repeats the last computed frame's (--dedup)
    resumed: int = 0  # frames taken from the checkpoint of an interrupted run (vsr.resume)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- the run


def check_job(job: VideoJob) -> str:
    """Refuse a bad output before any file is opened; returns the output's container format."""
    fmt = container_format(job.target)
    if fmt is None:
        raise UsageError(f"output {job.target} is not a video container vsr writes; use one of {', '.join(sorted(CONTAINERS))}")
    check_decoder(job.video.decoder, job.video.trim)
    check_mode(job.video.dedup)
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
            frames, reused = _run(job, fmt, source, info, upscaler, partial, on_frame, codec=codec, pix_fmt=pix_fmt, plan=plan)
    finally:
        source.close()
    seconds = time.perf_counter() - started
    return RunResult(frames=frames, seconds=seconds, output=job.target, output_bytes=job.target.stat().st_size, info=info, reused=reused)


def _run(job: VideoJob, fmt: str, source, info: VideoInfo, upscaler: Upscaler, partial: Path, on_frame, *, codec: str, pix_fmt: str, plan: VideoPlan) -> tuple[int, int]:
    """(frames written, frames reused) of the run: decode, compute and encode on their threads."""
    out_colour = color.for_output(info.colour, pix_fmt)
    muxer = Muxer(
        partial, fmt=fmt, info=info, source=source, plan=plan, settings=job.video.settings,
        codec=codec, pix_fmt=pix_fmt, colour=out_colour,
    )
    stages = Stages()
    decoded = stages.channel(QUEUE_FRAMES + upscaler.batch)
    computed = stages.channel(QUEUE_FRAMES + upscaler.batch)
    counts = {"decoded": 0}
    detector = Detector(job.video.dedup, upscaler.engine.device)
    write = FrameWriter(muxer, on_frame)

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
        while not Channel.is_end(item := computed.get()):
            if isinstance(item, CopiedPacket):
                muxer.write_packet(item)
            else:
                write(item)

    def compute():
        """The calling thread: frames through the network; copied packets passed on as they come."""

        def frames() -> Iterator[Frame]:
            while not Channel.is_end(item := decoded.get()):
                if isinstance(item, CopiedPacket):
                    computed.put(item, 0)
                else:
                    yield item

        compute_frames(frames(), upscaler, computed.put, planar_fmt=muxer.planar_fmt, colour=out_colour, plan=plan, detector=detector)
        computed.close()
        stages.join()
        return muxer.finish()

    stages.start("decode", decode)
    stages.start("encode", encode)
    stats = stages.run(compute, on_error=muxer.abort)
    if stats.frames != counts["decoded"] or stats.video_packets != stats.frames:
        raise VsrError(
            f"frame count mismatch: {counts['decoded']} decoded, {stats.frames} encoded, {stats.video_packets} video packets written; "
            f"the output was not published (please report this)"
        )
    return stats.frames, detector.reused


def _dali_device(upscaler: Upscaler) -> str:
    # DALI decodes where the network runs: NVDEC ("mixed") next to a CUDA engine, else its CPU backend.
    return "gpu" if upscaler.engine.device.type == "cuda" else "cpu"


def cuda_index(upscaler: Upscaler) -> int | None:
    """The engine's GPU index (NVDEC decodes there, where the frames go next); None off CUDA."""
    device = upscaler.engine.device
    return device.index if device.type == "cuda" else None
