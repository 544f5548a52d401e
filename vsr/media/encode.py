"""Encoding the upscaled video and muxing it with every other stream of the input, with PyAV.

The output container is set up completely before the first frame is computed: the video encoder
(opened, so a missing encoder or a bad option fails before any work), the copied audio, subtitle
and attachment streams (each checked against the output container first), container metadata and
chapters. Frames get the input's timestamps; copied packets keep theirs.
"""

from __future__ import annotations

import errno
import io
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .. import color
from ..errors import BackendUnavailable, IOFailure, OutputError, UsageError
from ..frame import CopiedPacket, VideoInfo
from .plan import VideoPlan
from .presentation import AV_FIELD_PROGRESSIVE, HDR_ENCODERS, hdr_params, merge_params
from .trim import trim_chapters

log = logging.getLogger(__name__)

# Output extension -> FFmpeg muxer. The output is written to a temporary name, so the muxer is
# always named explicitly instead of being guessed from the file name.
CONTAINERS = {
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
    ".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts",
}
# File names taken for videos: the containers vsr writes, and ones it only reads.
VIDEO_EXTENSIONS = frozenset({*CONTAINERS, ".avi", ".flv", ".wmv", ".mpg", ".mpeg", ".vob", ".ogv", ".3gp", ".y4m", ".m2v", ".dv", ".mxf", ".asf"})
DEFAULT_CODEC = {"webm": "libvpx-vp9"}  # everything else: libx264
# Per-encoder defaults; --crf/--preset/--encoder-opt override them. The CRF values aim at
# "visually lossless" for each encoder's own scale. x264's preset is "faster", not x264's own
# "medium": on vsr's output (network-made frames, two models, four clips; scripts/bench_encoder.py,
# docs/BENCHMARKS.md "x264 preset") it needs 1-4 % more bits than medium for the same PSNR and 3-7 %
# fewer for the same SSIM, at 39-45 % of medium's CPU time - time that on a CPU run is taken from
# the network. What it gives up is psy-rd (x264 keeps it only from subme 6 up), which PSNR and
# SSIM do not see; --preset medium (or slower) brings it back.
ENCODER_DEFAULTS = {
    "libx264": {"crf": "18", "preset": "faster"},
    "libx265": {"crf": "20", "preset": "medium", "x265-params": "log-level=error"},
    "libsvtav1": {"crf": "30", "preset": "8"},
    "libvpx-vp9": {"crf": "30", "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"},
    "h264_nvenc": {"rc": "vbr", "cq": "19", "b": "0", "preset": "p5", "tune": "hq"},
    "hevc_nvenc": {"rc": "vbr", "cq": "21", "b": "0", "preset": "p5", "tune": "hq"},
}
# Encoders whose constant-quality knob is not called "crf".
_QUALITY_OPTION = {"h264_nvenc": "cq", "hevc_nvenc": "cq"}


@dataclass(frozen=True)
class QualityRange:
    """The constant-quality values an encoder really uses (checked before any work, because
    FFmpeg's wrappers accept more and quietly change them)."""

    low: float
    high: float
    whole: bool  # the option is an integer in FFmpeg: 30.5 would silently become 30
    note: str = ""

    def describe(self) -> str:
        kind = "whole numbers" if self.whole else "numbers"
        return f"{kind} {self.low:g}-{self.high:g}{self.note}"


# Measured with this FFmpeg: x264 clamps anything above 51 to 51; x265 refuses above 51; SVT-AV1
# and VP9 refuse above 63, and FFmpeg's SVT-AV1 wrapper takes 0 as "not set" (its default 35 runs
# instead); NVENC's cq 0 means "automatic", not lossless. Negative values are "not set" in x264,
# x265 and VP9. For lossless output use --encoder-opt qp=0 (x264), lossless=1 (x265, VP9).
QUALITY_RANGES = {
    "libx264": QualityRange(0, 51, False),
    "libx265": QualityRange(0, 51, False),
    "libsvtav1": QualityRange(1, 63, True),
    "libvpx-vp9": QualityRange(0, 63, True),
    "h264_nvenc": QualityRange(1, 51, False, " (0 would mean automatic)"),
    "hevc_nvenc": QualityRange(1, 51, False, " (0 would mean automatic)"),
}
# Encoder options that pick the rate control; given with --encoder-opt they replace the default CRF.
_RATE_CONTROL = {"qp", "b", "crf", "cq", "lossless"}
# Encoders without a "preset" option (libvpx uses cpu-used/deadline).
_NO_PRESET = {"libvpx-vp9"}
# Semi-planar encoder formats -> (planar format computed upstream, bits shifted left on packing).
SEMI_PLANAR_OUT = {
    "nv12": ("yuv420p", 0), "nv21": ("yuv420p", 0), "nv16": ("yuv422p", 0),
    "p010le": ("yuv420p10le", 6), "p016le": ("yuv420p16le", 0), "p210le": ("yuv422p10le", 6),
}
# Global metadata that describes the input file's own muxing, not its content.
_MUXER_METADATA = {"encoder", "major_brand", "minor_version", "compatible_brands"}
_COPY_KINDS = {"audio", "subtitle", "attachment"}
# Errors of opening the output file (as opposed to the encoder refusing its options).
_FILE_ERRNOS = frozenset({
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ENOSPC, errno.EROFS,
    errno.EISDIR, errno.ENOTDIR, errno.EDQUOT, errno.EEXIST,
})


@dataclass(frozen=True)
class EncodeSettings:
    """What the user asked of the output (``vsr run`` flags)."""

    codec: str | None = None
    crf: float | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    audio: bool = True
    subtitles: bool = True


@dataclass
class MuxStats:
    """Counts the end-of-run check and the summary use."""

    frames: int = 0
    video_packets: int = 0
    copied_packets: dict[int, int] = field(default_factory=dict)


def container_format(path: Path) -> str | None:
    """The FFmpeg muxer for an output path's extension, or None when vsr does not write it."""
    return CONTAINERS.get(Path(path).suffix.lower())


def encoder_options(codec: str, settings: EncodeSettings) -> dict[str, str]:
    """The option dict handed to the encoder: defaults, then --crf/--preset, then --encoder-opt."""
    crf, preset, extra = settings.crf, settings.preset, settings.options
    options = dict(ENCODER_DEFAULTS.get(codec, {}))
    quality = _QUALITY_OPTION.get(codec, "crf")
    if any(key in _RATE_CONTROL for key, _ in extra):
        # The user chose the rate control (e.g. qp=0 for lossless); a default CRF would win over it.
        options.pop(quality, None)
    if crf is not None:
        _check_quality(codec, quality, crf, "--crf")
        options[quality] = f"{crf:g}"
    if preset is not None:
        if codec in _NO_PRESET:
            raise UsageError(f"{codec} has no --preset; use --encoder-opt cpu-used=N (0 slowest .. 8 fastest) instead")
        options["preset"] = preset
    for key, value in extra:
        if key == quality:
            try:
                number = float(value)
            except ValueError:
                raise UsageError(f"--encoder-opt {key}={value}: {codec}'s {quality} takes a number") from None
            _check_quality(codec, quality, number, f"--encoder-opt {key}=")
    options.update(dict(extra))
    return options


def _check_quality(codec: str, option: str, value: float, flag: str) -> None:
    allowed = QUALITY_RANGES.get(codec)
    if allowed is None:
        return
    if not (allowed.low <= value <= allowed.high) or (allowed.whole and not float(value).is_integer()):
        shown = f"{flag}{value:g}" if flag.endswith("=") else f"{flag} {value:g}"
        raise UsageError(f"{shown} is out of range for {codec}: its {option} takes {allowed.describe()} (lower is better quality)")


def with_hdr(codec: str, options: dict[str, str], hdr) -> dict[str, str]:
    """Encoder options that also write the source's HDR10 static metadata (mastering display and
    content light level) into the bitstream, where ``codec`` takes them; a warning where it does not.
    Parameters the user gave in the same option string win."""
    if hdr is None:
        return options
    key = HDR_ENCODERS.get(codec)
    if key is None:
        log.warning(
            "the source carries HDR10 metadata (%s) but %s cannot write it; the output keeps the colour tags only. "
            "Use --codec %s to keep it", hdr.describe(), codec, " or ".join(sorted(HDR_ENCODERS)),
        )
        return options
    out = dict(options)
    out[key] = merge_params(out.get(key), hdr_params(codec, hdr))
    return out


def planar_source(pix_fmt: str) -> tuple[str, int]:
    """The planar format the compute step should produce for encoder format ``pix_fmt``, and the
    left shift that packs it (P010 keeps 10 bits in the high bits of 16)."""
    if pix_fmt in SEMI_PLANAR_OUT:
        return SEMI_PLANAR_OUT[pix_fmt]
    if color.layout(pix_fmt) is not None:
        return pix_fmt, 0
    fmt = av.VideoFormat(pix_fmt)
    if fmt.is_rgb:
        return ("rgb24" if max(c.bits for c in fmt.components) <= 8 else "rgb48le"), 0
    return color.fallback_format(pix_fmt), 0


def choose_codec(fmt: str, settings: EncodeSettings) -> str:
    """The encoder name: ``--codec`` or the container's default, checked to exist in this FFmpeg."""
    name = settings.codec or DEFAULT_CODEC.get(fmt, "libx264")
    try:
        av.codec.Codec(name, "w")
    except Exception as err:
        raise UsageError(f"--codec {name}: no such encoder in this FFmpeg build; try libx264, libx265, libsvtav1 or libvpx-vp9") from err
    return name


def check_encoder(fmt: str, settings: EncodeSettings) -> str:
    """Check the encoder and its options for a ``fmt`` output before any work (usage errors,
    exit 2); returns the encoder's name."""
    codec = choose_codec(fmt, settings)
    encoder_options(codec, settings)
    return codec


def encoder_record(fmt: str, settings: EncodeSettings) -> dict[str, object]:
    """The encoder and the options it is opened with for ``fmt``, defaults resolved: what
    ``vsr batch`` writes beside each segment piece, so that pieces encoded under other defaults
    (an older vsr) are made again instead of failing the join on their headers."""
    codec = choose_codec(fmt, settings)
    return {"codec": codec, "options": encoder_options(codec, settings)}


def choose_pix_fmt(codec: str, info: VideoInfo, settings: EncodeSettings) -> str:
    """``--pix-fmt`` (checked against the encoder), else the source's layout and depth where the
    encoder allows (see :func:`vsr.color.output_pix_fmt`)."""
    supported = [f.name for f in (av.codec.Codec(codec, "w").video_formats or [])]
    if settings.pix_fmt:
        if supported and settings.pix_fmt not in supported:
            raise UsageError(f"--pix-fmt {settings.pix_fmt} is not accepted by {codec}; it takes: {', '.join(supported)}")
        return settings.pix_fmt
    return color.output_pix_fmt(info.pix_fmt, supported) if supported else info.pix_fmt


def plan_encoder(fmt: str, info: VideoInfo, settings: EncodeSettings) -> tuple[str, str]:
    """(encoder, pixel format) for a ``fmt`` output of this input: decided once, before any work."""
    codec = choose_codec(fmt, settings)
    return codec, choose_pix_fmt(codec, info, settings)


class Muxer:
    """The output file: one encoded video stream plus the copied streams of the input.

    Not thread-safe: one thread owns it (the pipeline's encode thread) once it is open.
    """

    # Level of the "encoding ..." line: a run's output says it at -v; a piece of a bigger output
    # (batch segments, checkpoints) only at -vv, the join having said it once for the whole file.
    settings_log_level = logging.INFO

    def __init__(
        self,
        path: Path,
        *,
        fmt: str,
        info: VideoInfo,
        source: av.container.InputContainer,
        plan: VideoPlan,
        settings: EncodeSettings,
        codec: str,
        pix_fmt: str,
        colour: color.Colour,
    ):
        self.path = Path(path)
        self.fmt = fmt
        self.info = info
        self.plan = plan
        self.codec = codec
        self.pix_fmt = pix_fmt
        self.planar_fmt, self._shift = planar_source(pix_fmt)
        self.colour = colour
        self.width, self.height = plan.width, plan.height
        self.stats = MuxStats()
        copied = plan_copies(source, fmt, settings, video_index=info.stream_index)
        self._out = _open_output(self.path, fmt)
        try:
            self._setup(source, settings, copied)
        except BaseException:
            self._out.close()
            raise

    # ------------------------------------------------------------------ setup

    def _setup(self, source, settings: EncodeSettings, copied: list) -> None:
        out = self._out
        for key, value in (source.metadata or {}).items():
            if key.lower() not in _MUXER_METADATA:
                out.metadata[key] = value
        out.metadata["encoder"] = f"vsr (Lavf, {self.codec})"
        plan = self.plan
        rate = plan.rate or Fraction(25)
        options = encoder_options(self.codec, settings)
        options = with_hdr(self.codec, options, plan.hdr)
        video = out.add_stream(self.codec, rate=rate, options=options)
        video.width, video.height, video.pix_fmt = self.width, self.height, self.pix_fmt
        cc = video.codec_context
        cc.time_base = plan.time_base
        cc.colorspace, cc.color_range = self.colour.colorspace, self.colour.color_range
        cc.color_primaries, cc.color_trc = self.colour.primaries, self.colour.transfer
        # Pixels leave the network as progressive frames (deinterlaced, or combing upscaled as picture).
        cc.field_order = AV_FIELD_PROGRESSIVE
        if plan.sar != 1:
            cc.sample_aspect_ratio = plan.sar
        if plan.display_matrix is not None:
            video.set_display_matrix(list(plan.display_matrix))
        in_video = source.streams[self.info.stream_index]
        _copy_stream_metadata(in_video, video)
        self.video = video
        self.copy_map: dict[int, av.stream.Stream] = {}
        for stream in copied:
            self.copy_map[stream.index] = out.add_stream_from_template(stream)
            _copy_stream_metadata(stream, self.copy_map[stream.index])
        chapters = source.chapters() if hasattr(source, "chapters") else []
        if chapters and plan.window is not None:
            # A trimmed output has the chapters of its range, moved like its timestamps.
            end = plan.window.end
            if end is None and plan.window.frames is not None and plan.rate:
                end = plan.window.start + plan.window.frames / Fraction(plan.rate)
            chapters = trim_chapters(chapters, plan.window.start, end)
        if chapters and self.fmt in ("mp4", "mov", "matroska", "webm"):
            out.set_chapters(chapters)
        try:
            out.start_encoding()
        except av.error.FFmpegError as err:
            if getattr(err, "errno", None) in _FILE_ERRNOS:  # opening the file, not the encoder
                raise OutputError(f"cannot create the output file in {self.path.parent} ({err.strerror}); check the folder, its permissions and free space") from err
            if self.codec.endswith("_nvenc"):
                raise BackendUnavailable(f"--codec {self.codec} could not start ({err}); NVENC needs an NVIDIA GPU with a video encoder (H100/H200 have none): use libx264/libx265") from err
            raise UsageError(f"the {self.codec} encoder refused the settings ({err}); check --crf, --preset, --pix-fmt and --encoder-opt") from err
        log.log(
            self.settings_log_level, "encoding %s %dx%d %s (%s), %s", self.codec, self.width, self.height, self.pix_fmt,
            self.colour.describe(), ", ".join(f"{k}={v}" for k, v in options.items()),
        )

    @property
    def copied_indices(self) -> list[int]:
        """Input indices of the copied streams (what the decoder should pass along)."""
        return list(self.copy_map)

    # ------------------------------------------------------------------ writing

    def write_frame(self, planes: list[np.ndarray], pts: int | None, time_base: Fraction) -> None:
        """Encode one frame given as planes of :attr:`planar_fmt`, with the input's timestamp."""
        frame = self._build_frame(planes)
        frame.pts = pts
        frame.time_base = time_base
        frame.colorspace, frame.color_range = self.colour.colorspace, self.colour.color_range
        self._mux(self.video.encode(frame))
        self.stats.frames += 1

    def write_packet(self, item: CopiedPacket) -> None:
        """Mux a packet of a copied stream unchanged (its timestamps are rescaled by the muxer)."""
        stream = self.copy_map.get(item.source_index)
        if stream is None:
            return
        item.packet.stream = stream
        self._mux([item.packet])
        self.stats.copied_packets[stream.index] = self.stats.copied_packets.get(stream.index, 0) + 1

    def finish(self) -> MuxStats:
        """Flush the encoder and write the trailer."""
        self._mux(self.video.encode(None))
        self._close()
        return self.stats

    def abort(self) -> None:
        """Close without caring about a valid file (the temporary file is deleted by the caller)."""
        try:
            self._out.close()
        except Exception:  # a half-written container may refuse its trailer; it is thrown away
            pass

    def _close(self) -> None:
        try:
            self._out.close()
        except (av.error.FFmpegError, OSError) as err:
            raise IOFailure(f"could not finish the output file in {self.path.parent} ({_reason(err)}); check free space and the disk") from err

    def _mux(self, packets) -> None:
        for packet in packets:
            if packet.stream is self.video:
                self.stats.video_packets += 1
            try:
                self._out.mux(packet)
            except OSError as err:
                # The path is the private temporary name (files.publish): the folder is what to name.
                raise IOFailure(f"writing the output file in {self.path.parent} failed ({_reason(err)}); check free space and the disk") from err

    def _build_frame(self, planes: list[np.ndarray]) -> av.VideoFrame:
        if self.planar_fmt in ("rgb24", "rgb48le"):
            frame = av.VideoFrame.from_ndarray(planes[0], format=self.planar_fmt)
            return frame.reformat(format=self.pix_fmt, threads=1) if self.pix_fmt != self.planar_fmt else frame
        if self.pix_fmt in SEMI_PLANAR_OUT:
            return _pack_semi_planar(planes, self.pix_fmt, self._shift, self.width, self.height)
        frame = av.VideoFrame(self.width, self.height, self.planar_fmt)
        for plane, data in zip(frame.planes, planes, strict=True):
            _fill_plane(plane, data)
        if self.pix_fmt != self.planar_fmt:
            frame = frame.reformat(format=self.pix_fmt, threads=1)  # threaded swscale corrupts >8-bit rows
        return frame


def _fill_plane(plane, data: np.ndarray) -> None:
    itemsize = data.dtype.itemsize
    view = np.frombuffer(plane, dtype=data.dtype).reshape(plane.height, plane.line_size // itemsize)
    view[:, : data.shape[1]] = data


def _pack_semi_planar(planes: list[np.ndarray], pix_fmt: str, shift: int, width: int, height: int) -> av.VideoFrame:
    y, u, v = planes
    if shift:
        y, u, v = y << shift, u << shift, v << shift
    uv = np.empty((u.shape[0], u.shape[1] * 2), dtype=u.dtype)
    first, second = (v, u) if pix_fmt == "nv21" else (u, v)
    uv[:, 0::2], uv[:, 1::2] = first, second
    frame = av.VideoFrame(width, height, pix_fmt)
    _fill_plane(frame.planes[0], y)
    _fill_plane(frame.planes[1], uv)
    return frame


def _copy_stream_metadata(source: av.stream.Stream, target: av.stream.Stream) -> None:
    for key, value in (source.metadata or {}).items():
        # Muxers write their own handler/vendor names and durations; copying them is noise.
        if key.lower() not in ("handler_name", "vendor_id", "duration", "encoder") and not key.lower().startswith("_statistics"):
            target.metadata[key] = value
    try:
        target.disposition = source.disposition
    except (AttributeError, TypeError, ValueError):
        pass


def _open_output(path: Path, fmt: str) -> av.container.OutputContainer:
    try:
        return av.open(str(path), mode="w", format=fmt)
    except (av.error.FFmpegError, OSError) as err:
        raise OutputError(f"cannot create {path} ({err}); check the folder and permissions") from err


def plan_copies(source: av.container.InputContainer, fmt: str, settings: EncodeSettings, *, video_index: int) -> list:
    """The input streams to copy into a ``fmt`` container, in input order.

    Audio and subtitles follow ``--no-audio``/``--no-subtitles``; attachments (fonts) go where the
    container takes them; data streams (timecodes, telemetry) are left out with a log line. A stream
    the container cannot hold stops the run before any work, naming the way out.
    """
    copies = []
    for stream in source.streams:
        kind = stream.type or "data"
        if stream.index == video_index:
            continue
        if kind == "video":
            log.info("input stream #%d (a second video or cover art) is not copied", stream.index)
            continue
        if kind not in _COPY_KINDS:
            log.info("input %s stream #%d is not copied", kind, stream.index)
            continue
        if (kind == "audio" and not settings.audio) or (kind == "subtitle" and not settings.subtitles):
            continue
        if kind == "attachment" and fmt != "matroska":
            log.warning("attachment stream #%d (%s) left out: only .mkv outputs hold attachments", stream.index, _name(stream))
            continue
        problem = _container_refuses(fmt, stream)
        if problem:
            flag = {"audio": "--no-audio", "subtitle": "--no-subtitles"}[kind]
            raise OutputError(
                f"{kind} stream #{stream.index} ({_name(stream)}) cannot be stored in a {fmt} file ({problem}); "
                f"write a .mkv output, convert that stream first, or drop it with {flag}"
            )
        copies.append(stream)
    return copies


def _name(stream) -> str:
    try:
        return stream.codec_context.name
    except Exception:
        return "unknown codec"


def _container_refuses(fmt: str, stream) -> str | None:
    """Write just this stream's header into memory: FFmpeg's muxer is the authority on what fits."""
    probe = av.open(io.BytesIO(), mode="w", format=fmt)
    try:
        probe.add_stream_from_template(stream)
        probe.start_encoding()
    except (av.error.FFmpegError, ValueError) as err:
        return _reason(err)
    finally:
        try:
            probe.close()
        except Exception:
            pass
    return None


def _reason(err: Exception) -> str:
    """An OS or FFmpeg error's own words without the file name it repeats ("No space left on device")."""
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)
