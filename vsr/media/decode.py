"""Opening a video and decoding it with PyAV: frames as planes with their own timestamps, and the
packets of every other stream untouched, in file order.

Errors are classified here, at the edge: a missing file is exit 66; an empty file, something that
is not media, a damaged header or a file without a video stream is exit 65 with one line. A file
that ends early (truncated) is decoded up to where it can be, with a warning.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque
from collections.abc import Collection, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .. import color
from ..errors import BackendUnavailable, InputError, InputMissing, UsageError
from ..frame import CopiedPacket, Frame, StreamInfo, VideoInfo
from . import presentation
from .deinterlace import DeinterlacePlan, Deinterlacer
from .nvdec import decode_threads, decoded_by_nvdec
from .trim import Cut, SeekMissed, Trim, Window, window_of, window_text

log = logging.getLogger(__name__)

# Frames remembered for the end-of-stream damage check (more than any GOP vsr expects).
_TAIL_FRAMES = 2048
# Semi-planar formats (what NVDEC hands back) split into planes without a swscale pass.
_SEMI_PLANAR = {"nv12": (8, 0), "nv21": (8, 0), "p010le": (10, 6), "p016le": (16, 0)}


def _stream_kind(stream: av.stream.Stream) -> str:
    return stream.type or "data"


def _codec_name(stream: av.stream.Stream) -> str:
    try:
        return stream.codec_context.name if stream.codec_context else "unknown"
    except Exception:  # attachment/data streams can lack a codec context
        return "unknown"


def _is_cover_art(stream: av.stream.Stream) -> bool:
    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except (AttributeError, TypeError):
        return False


def open_input(
    path: Path, *, hwaccel: str | None = None, hwaccel_device: int | None = None, probe_frame: bool = True,
) -> tuple[av.container.InputContainer, VideoInfo]:
    """Open ``path`` and describe its first video stream (cover art does not count).

    ``hwaccel="cuda"`` asks FFmpeg for NVDEC decoding (frames are downloaded to host memory) on GPU
    ``hwaccel_device`` (default: FFmpeg's, the first visible GPU). ``probe_frame=False`` leaves
    out what only a decoded frame tells (:func:`_with_first_frame`: display matrix, HDR10,
    interlace flag), for callers that read the header's facts only (frame counts, packets).
    """
    path = Path(path)
    if not path.exists():
        raise InputMissing(f"input {path} does not exist")
    if path.is_dir():
        raise InputError(f"input {path} is a folder; video input must be a file")
    if path.stat().st_size == 0:
        raise InputError(f"input {path} is empty (0 bytes); nothing to upscale")
    options = {}
    if hwaccel:
        options["hwaccel"] = _hwaccel(hwaccel, hwaccel_device)
    try:
        container = av.open(str(path), mode="r", **options)
    except av.error.FileNotFoundError as err:
        raise InputMissing(f"input {path} does not exist") from err
    except PermissionError as err:
        raise InputError(f"input {path} is not readable (permission denied)") from err
    except (av.error.FFmpegError, OSError) as err:
        raise InputError(f"input {path} is not a video vsr can read ({_ffmpeg_reason(err)}); check the file") from err
    try:
        info = _describe(container, path)
    except BaseException:
        container.close()
        raise
    return container, _with_first_frame(info) if probe_frame else info


def _hwaccel(name: str, device: int | None = None):
    from av.codec.hwaccel import HWAccel, hwdevices_available

    if name != "cuda":
        raise BackendUnavailable(f"--hwaccel {name} is not supported; use --hwaccel cuda or leave it out")
    import torch

    if "cuda" not in hwdevices_available() or not torch.cuda.is_available():
        raise BackendUnavailable("--hwaccel cuda needs an NVIDIA GPU and driver (NVDEC); none found, leave --hwaccel out to decode on the CPU")
    # Software fallback stays on: NVDEC does not take every profile (e.g. 4:2:2 H.264).
    return HWAccel(device_type="cuda", device=None if device is None else str(device), allow_software_fallback=True)


def _ffmpeg_reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return f"FFmpeg: {text}"


def _describe(container: av.container.InputContainer, path: Path) -> VideoInfo:
    streams = tuple(
        StreamInfo(s.index, _stream_kind(s), _codec_name(s), s.metadata.get("language") if s.metadata else None)
        for s in container.streams
    )
    videos = [s for s in container.streams.video if not _is_cover_art(s)]
    if not videos:
        held = ", ".join(s.describe() for s in streams) or "no streams"
        raise InputError(f"input {path} has no video stream (it holds: {held})")
    v = videos[0]
    cc = v.codec_context
    if not cc.width or not cc.height or cc.format is None:
        raise InputError(f"input {path}: video stream #{v.index} has no frame size or pixel format (damaged header?)")
    pix_fmt = cc.format.name
    colour = color.resolve(
        int(cc.colorspace), int(cc.color_range), int(cc.color_primaries), int(cc.color_trc),
        pix_fmt=pix_fmt, width=cc.width, height=cc.height,
    )
    rate = v.average_rate or v.guessed_rate or None
    duration = float(container.duration / av.time_base) if container.duration else None
    # Trims count from where players start the timeline: the container's start (FFmpeg's -ss).
    start = Fraction(container.start_time, av.time_base) if container.start_time is not None else None
    if start is None and v.start_time is not None and v.time_base:
        start = v.start_time * Fraction(v.time_base)
    return VideoInfo(
        path=path,
        container=container.format.name,
        codec=cc.name,
        width=cc.width,
        height=cc.height,
        pix_fmt=pix_fmt,
        time_base=Fraction(v.time_base) if v.time_base else Fraction(1, 90000),
        rate=Fraction(rate) if rate else None,
        frames_hint=v.frames or (round(duration * rate) if duration and rate else None),
        duration=duration,
        colour=colour,
        stream_index=v.index,
        streams=streams,
        sar=presentation.normalise_sar(v.sample_aspect_ratio),
        field_order=presentation.field_order_name(cc.field_order),
        start_time=start or Fraction(0),
    )


def _with_first_frame(info: VideoInfo) -> VideoInfo:
    """Add what only a decoded frame tells: the display matrix and HDR10 metadata (FFmpeg
    attaches the stream's side data to every frame, whether the container or the bitstream held
    it) and whether the pictures are flagged interlaced. Decodes the first frame from a second
    opening of the file, so the caller's container is untouched; a file whose first frame does not
    decode is left for the real decode to report."""
    from dataclasses import replace

    try:
        with av.open(str(info.path)) as container:
            stream = container.streams[info.stream_index]
            stream.thread_type = "NONE"
            frame = next(container.decode(stream), None)
    except (av.error.FFmpegError, OSError, StopIteration) as err:
        log.debug("first-frame probe of %s failed (%s)", info.path, err)
        return info
    if frame is None:
        return info
    sides = frame_side_data(frame)
    matrix = presentation.parse_display_matrix(sides["DISPLAYMATRIX"]) if "DISPLAYMATRIX" in sides else None
    mastering = presentation.parse_mastering_display(sides["MASTERING_DISPLAY_METADATA"]) if "MASTERING_DISPLAY_METADATA" in sides else None
    light = presentation.parse_content_light(sides["CONTENT_LIGHT_LEVEL"]) if "CONTENT_LIGHT_LEVEL" in sides else None
    if matrix == presentation.IDENTITY:
        matrix = None
    hdr = presentation.HdrMetadata(mastering, light) if (mastering or light) else None
    return replace(info, display_matrix=matrix, hdr=hdr, interlaced_frames=bool(frame.interlaced_frame))


def frame_side_data(frame: av.VideoFrame) -> dict[str, bytes]:
    """A frame's side data as ``{type name: bytes}`` (e.g. ``DISPLAYMATRIX``).

    Read by position until the end, the one access every PyAV since 14 agrees on: iterating
    ``frame.side_data`` gives the entries up to PyAV 18.0 but their ``Type`` keys from 18.1 (a
    ``Mapping``), whose ``len`` then counts types, not entries (a frame with two SEI entries
    would hide its last one)."""
    sides, found, index = frame.side_data, {}, 0
    while True:
        try:
            entry = sides[index]
        except IndexError:
            return found
        found.setdefault(entry.type.name, bytes(entry))
        index += 1


def frame_planes(frame: av.VideoFrame) -> tuple[str, list[np.ndarray]]:
    """The pixels of ``frame`` as 2-D numpy planes (padding removed) and their pixel format.

    Planar YUV/gray formats the kernels understand come out as they are; NV12/P010 (hardware
    decoders) are split without swscale; anything else is reformatted to the nearest planar format
    of the same bit depth (see :func:`vsr.color.fallback_format`).
    """
    name = frame.format.name
    if name in _SEMI_PLANAR:
        bits, shift = _SEMI_PLANAR[name]
        itemsize = 1 if bits == 8 else 2
        y, uv = _plane_array(frame.planes[0], itemsize), _plane_array(frame.planes[1], itemsize, per_pixel=2)
        if shift:
            y, uv = y >> shift, uv >> shift
        u, v = (uv[:, 1::2], uv[:, 0::2]) if name == "nv21" else (uv[:, 0::2], uv[:, 1::2])
        return f"yuv420p{'' if bits == 8 else f'{bits}le'}", [y, u, v]
    if color.layout(name) is None:
        target = color.fallback_format(name)
        frame = frame.reformat(format=target, threads=1)  # threaded swscale corrupts >8-bit rows here
        name = target
    lay = color.layout(name)
    itemsize = 1 if lay is None or lay.bits <= 8 else 2
    return name, [_plane_array(p, itemsize) for p in frame.planes]


def _plane_array(plane, itemsize: int, per_pixel: int = 1) -> np.ndarray:
    """One plane as a 2-D array; ``per_pixel`` is 2 for the interleaved UV plane of NV12/P010."""
    dtype = np.uint8 if itemsize == 1 else np.dtype("<u2")
    data = np.frombuffer(plane, dtype=dtype).reshape(plane.height, plane.line_size // itemsize)
    # Copy: the frame's buffer is reused by the decoder once the frame is released.
    return data[:, : plane.width * per_pixel].copy()


def iter_media(
    container: av.container.InputContainer,
    info: VideoInfo,
    *,
    copy_streams: Collection[int],
    trim: Trim | None = None,
    deinterlace: DeinterlacePlan | None = None,
) -> Iterator[Frame | CopiedPacket]:
    """Demux the file once, in order: decoded frames of the video stream as :class:`Frame`, and the
    packets of the streams in ``copy_streams`` (input indices) as :class:`CopiedPacket`.

    ``trim`` cuts a range out (see :mod:`vsr.media.trim`): decoding starts at the keyframe before
    it, and every kept frame and packet moves back by the time of the first kept frame.
    ``deinterlace`` runs the frames through ``bwdif`` first (see :mod:`vsr.media.deinterlace`).
    Without either, frames keep the decoder's ``pts`` and time base exactly.

    Decoding errors after the first frame end the stream with a warning instead of failing the job
    (a truncated or damaged tail); the caller sees fewer frames and the warning says how many.
    """
    window = window_of(trim, info.start_time)
    plan = deinterlace or DeinterlacePlan()
    for attempt in ("seek", "from the start"):
        seek = attempt == "seek" and window is not None and window.start > info.start_time
        if attempt != "seek":
            container.seek(0)
        try:
            yield from _iter_media(container, info, copy_streams=copy_streams, window=window, plan=plan, seek=seek)
            return
        except SeekMissed as missed:
            log.info("input %s: %s; decoding from the start instead", info.path, missed)


# Seek this far before a trim's start, so that an audio packet that straddles the start and was
# muxed just before the video keyframe is still read.
_SEEK_MARGIN = Fraction(1)


def _iter_media(container, info: VideoInfo, *, copy_streams: Collection[int], window: Window | None, plan: DeinterlacePlan, seek: bool) -> Iterator[Frame | CopiedPacket]:
    video = container.streams[info.stream_index]
    video.thread_type = "AUTO"
    if video.codec_context.is_hwaccel:  # NVDEC: the thread count must fit its decode surfaces
        video.codec_context.thread_count = decode_threads(os.cpu_count() or 1)
    # Attachments have no packets: their data travels with the stream header (see encode.py).
    copied = [container.streams[i] for i in copy_streams if container.streams[i].type != "attachment"]
    if seek:
        target = max(window.start - _SEEK_MARGIN, info.start_time)
        container.seek(int(target / Fraction(video.time_base)), stream=video, backward=True, any_frame=False)
    cut = Cut(window, info, plan, seek=seek, subtitles={s.index for s in copied if s.type == "subtitle"}, copied={s.index for s in copied})
    deinterlacer = Deinterlacer(plan, info.time_base) if (plan.enabled or plan.lazy) else None
    count = 0
    damaged: list[int] = []
    last_key: int | None = None  # pts of the last keyframe packet, where the tail check starts
    recent: deque[tuple[int | None, int]] = deque(maxlen=_TAIL_FRAMES)  # (pts, index) of the last frames

    def frames_of(raw: av.VideoFrame | None) -> Iterator[av.VideoFrame]:
        if deinterlacer is None:
            if raw is not None:
                yield raw
            return
        yield from (deinterlacer.push(raw) if raw is not None else deinterlacer.flush())

    nvdec_checked = not video.codec_context.is_hwaccel

    def emit(raw: av.VideoFrame | None) -> Iterator[Frame | CopiedPacket]:
        nonlocal count, nvdec_checked
        if raw is not None and not nvdec_checked:
            nvdec_checked = True
            if not decoded_by_nvdec(raw.format.name):
                log.warning("input %s: NVDEC cannot decode this stream (%s); decoding on the CPU instead", info.path, raw.format.name)
        for frame in frames_of(raw):
            verdict = cut.frame(frame)
            if verdict == "drop":
                continue
            yield from cut.release()  # the packets this frame (or the end of the range) decided
            if verdict == "stop":
                return
            if frame.is_corrupt:
                damaged.append(count)
            recent.append((frame.pts, count))
            yield _to_frame(frame, count, info, cut.timestamp(frame))
            count += 1

    try:
        for packet in container.demux([video, *copied]):
            stream = packet.stream
            if stream.index != info.stream_index:
                if packet.size:  # empty packets are demuxer flush markers, not data
                    yield from cut.packet(packet)
                if cut.finished:
                    break
                continue
            if cut.video_done:
                cut.advance(packet)
                if cut.finished:
                    break
                continue
            if packet.is_keyframe and packet.pts is not None:
                last_key = packet.pts
            for raw in _decode(packet, count):
                yield from emit(raw)
        else:
            if not cut.video_done:
                yield from emit(None)  # what the deinterlacer still holds
    except av.error.FFmpegError as err:
        if count == 0:
            raise InputError(f"input {info.path}: no frame could be decoded ({_ffmpeg_reason(err)})") from err
        log.warning(
            "input %s is damaged or truncated: reading stopped after %d frames (%s); the output holds those %d frames",
            info.path, count, _ffmpeg_reason(err), count,
        )
        return
    if count == 0:
        if window is not None:
            raise UsageError(
                f"input {info.path}: no video frame lies in the trim range ({window_text(window, info)}); "
                "check --start/--duration against the video's length"
            )
        raise InputError(f"input {info.path}: the video stream holds no decodable frame")
    yield from cut.release(final=True)  # the file ended before the range did: everything left is in it
    if window is None and last_key is not None and recent and not (deinterlacer and deinterlacer.started):
        # With frame threading FFmpeg does not reliably flag a frame it concealed (seen on a
        # truncated MPEG-TS: 7 runs in 20 missed it), and a truncated file damages the last GOP:
        # decode that GOP again on one thread, where the flag is reliable.
        by_pts = dict(recent)
        damaged = sorted(set(damaged) | {by_pts[p] for p in _corrupt_tail(info, last_key) if p in by_pts})
    if damaged:
        where = ", ".join(str(i) for i in damaged[:5]) + (" ..." if len(damaged) > 5 else "")
        log.warning(
            "input %s is damaged or truncated: %d frames read, %d of them incomplete (frame %s, kept as FFmpeg concealed them)",
            info.path, count, len(damaged), where,
        )
    if window is None and video.frames and count < video.frames and not (deinterlacer and deinterlacer.started):
        log.warning("input %s ended early: %d frames read, the header announced %d (truncated file?)", info.path, count, video.frames)


def _corrupt_tail(info: VideoInfo, key_pts: int) -> list[int]:
    """pts of the frames FFmpeg flags as corrupt from the keyframe at ``key_pts`` to the end,
    decoded without threads: a second read of the file that decodes only the last GOP. It seeks
    there first; where the seek misses that keyframe (MPEG-TS near its start can land past every
    frame) it demuxes from the start instead, decoding nothing before the keyframe."""
    for seek in (True, False):
        try:
            with av.open(str(info.path)) as container:
                stream = container.streams[info.stream_index]
                stream.thread_type = "NONE"
                if seek:
                    container.seek(key_pts, stream=stream, backward=True, any_frame=False)
                corrupt, started = [], False
                for packet in container.demux(stream):
                    started = started or (packet.is_keyframe and packet.pts == key_pts)
                    if not started:
                        continue
                    for frame in packet.decode():
                        if frame.is_corrupt and frame.pts is not None and frame.pts >= key_pts:
                            corrupt.append(frame.pts)
                if started:
                    return corrupt
        except (av.error.FFmpegError, OSError) as err:
            log.debug("tail check of %s skipped (%s)", info.path, err)
    return []


def _decode(packet: av.Packet, count: int) -> Iterator[av.VideoFrame]:
    try:
        yield from packet.decode()
    except av.error.InvalidDataError as err:
        # One bad packet mid-stream: FFmpeg conceals what it can on the next ones.
        log.warning("frame data after decoded frame %d is corrupt (%s); skipped by the decoder", count, _ffmpeg_reason(err))


def _to_frame(frame: av.VideoFrame, index: int, info: VideoInfo, stamp: tuple[int | None, Fraction]) -> Frame:
    if (frame.width, frame.height) != (info.width, info.height):
        raise InputError(
            f"input {info.path}: the frame size changes from {info.width}x{info.height} to "
            f"{frame.width}x{frame.height} at frame {index}; split the file where the size changes"
        )
    pix_fmt, planes = frame_planes(frame)
    pts, time_base = stamp
    return Frame(
        index=index, planes=planes, pix_fmt=pix_fmt, pts=pts, time_base=time_base,
        width=frame.width, height=frame.height, colour=_frame_colour(frame, pix_fmt, info),
    )


def _frame_colour(frame: av.VideoFrame, pix_fmt: str, info: VideoInfo) -> color.Colour:
    """The frame's own colour tags win (a bitstream can say more than the container); untagged
    frames take the stream's."""
    tags = (int(frame.colorspace), int(frame.color_range), int(frame.color_primaries), int(frame.color_trc))
    if tags[0] == color.SPC_UNSPECIFIED and tags[1] == color.RANGE_UNSPECIFIED:
        return info.colour
    return _resolve(tags, pix_fmt, info.width, info.height)


@functools.lru_cache(maxsize=64)
def _resolve(tags: tuple[int, int, int, int], pix_fmt: str, width: int, height: int) -> color.Colour:
    # Cached: one resolution (and at most one warning) per distinct set of tags, not per frame.
    return color.resolve(*tags, pix_fmt=pix_fmt, width=width, height=height)
