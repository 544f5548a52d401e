"""Frame-exact segments of one long video: plan, encode each piece on its own, join by remuxing.

Plan (:func:`index_video`, :func:`plan_segments`): the video stream's packets are read once without
decoding; their pts, sorted, are the frames in presentation order, and the keyframe flags say where
a decoder can start. A segment is a half-open pts range ``[start, end)`` holding ``segment_frames``
frames (or a K-th of them). Ranges are in pts, not counts, so every decoded frame belongs to exactly
one segment whatever the index got wrong.

Encode (:func:`encode_segment`): seek to the keyframe at or before the first frame, decode, drop the
frames before the range, upscale exactly the range's frames and encode them, with their original pts
and time base, into ``<outdir>/.vsr-segments/<job>/NNNN<ext>`` (the output's own container, so the
encoder runs with the same global-header choice as a single ``vsr run``). The piece is written to a
temporary name and published with a JSON sidecar (vsr.files.publish_artifact): a piece
with a sidecar whose SHA-256 matches is complete, anything else is redone. The sidecar keeps what
the encoder produced for each packet (pts, dts, duration in the encoder's time base), because
containers may shift a piece's timestamps (MP4 edit lists) or round them (Matroska's 1 ms).

Join (:func:`join_segments`): the output is set up exactly like ``vsr run`` sets it up (same
Muxer: encoder opened with the same options, copied audio/subtitle/attachment streams, metadata,
chapters); the pieces' video packets are remuxed into it without re-encoding, with their recorded
pts, and the source's other streams are copied once. DTS are re-derived over the whole stream
(each piece's encoder started its DTS below its first pts), and each piece's codec headers
(extradata) must equal the output encoder's, so a decoder sees one consistent stream.

Pixels: the decoded frames each piece feeds the network are the frames a single run feeds it, so
the network's output is the same. Lossy encoders place keyframes differently in pieces than in one
long encode, so the encoded bits (and decoded pixels) of a lossy output differ slightly from a
single run; with a lossless encoder (libx264 ``qp=0``) the decoded output is identical.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from .. import color
from ..dedup import Detector
from ..errors import InputError, UsageError, VsrError
from ..files import check_artifact, publish, publish_artifact, read_sidecar
from ..frame import CopiedPacket, Frame, VideoInfo
from ..media.decode import iter_media, open_input
from ..media.encode import Muxer, container_format
from ..media.options import VideoOptions
from ..media.plan import PictureOptions
from ..media.trim import Cut, Trim
from ..pipeline import QUEUE_FRAMES, check_trim, cuda_index, plan_output
from ..stages import Channel, Stages
from ..upscale import Upscaler
from ..video_compute import FrameWriter, compute_frames

log = logging.getLogger(__name__)

SEGMENTS_DIR = ".vsr-segments"
PIECE_SCHEMA = "vsr-piece/2"  # /2: records the model scale; trims and picture options


# --------------------------------------------------------------------------- index and plan


@dataclass(frozen=True)
class VideoIndex:
    """The video stream's frames in presentation order, from its packets (no decoding).

    With a trim, ``pts`` holds only the frames in the range; ``start_pts``/``end_pts`` bound it
    (the first kept frame, the first frame past it; None: the file's start/end), ``before`` holds
    the pts of the frames ahead of the range (deinterlacing looks one frame back), and ``offset``
    is the time (seconds) every output timestamp moves back by, the first kept frame's.
    """

    pts: tuple[int, ...]
    keyframes: tuple[int, ...]  # pts of keyframe packets, ascending
    time_base: Fraction
    usable: bool  # every packet had a pts and no pts repeats: pts ranges can split it exactly
    reason: str = ""
    start_pts: int | None = None
    end_pts: int | None = None
    before: tuple[int, ...] = ()
    offset: Fraction = Fraction(0)
    interlaced: bool = False  # the source says its pictures are interlaced (see VideoInfo)

    @property
    def frames(self) -> int:
        return len(self.pts)


@dataclass(frozen=True)
class Segment:
    """Frames with ``start_pts <= pts < end_pts`` (None: open end), decoded from ``seek_pts``."""

    index: int
    start_pts: int | None
    end_pts: int | None
    frames: int  # planned, from the index
    seek_pts: int | None  # keyframe at or before start_pts; None: decode from the beginning
    offset: Fraction = Fraction(0)  # seconds every output timestamp moves back by (a trim's start)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "start_pts": self.start_pts, "end_pts": self.end_pts, "frames": self.frames, "seek_pts": self.seek_pts,
            "offset": str(self.offset),
        }


def index_video(path: Path, trim: Trim | None = None) -> VideoIndex:
    """Read every packet of the video stream (not decoded) for :func:`plan_segments`; with
    ``trim``, keep the frames of its range (see :class:`VideoIndex`).

    Raises the input errors of :func:`vsr.media.decode.open_input` (exit 65/66). A damaged tail
    ends the index where reading stopped (the last segment is open-ended, so nothing is lost).
    """
    container, info = open_input(path)
    check_trim(trim, info)
    try:
        video = container.streams[info.stream_index]
        pts: list[int] = []
        keys: list[int] = []
        missing = 0
        try:
            for packet in container.demux(video):
                if not packet.size:
                    continue
                if packet.pts is None:
                    missing += 1
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.error.FFmpegError as err:
            log.warning("input %s: indexing stopped after %d packets (%s); the rest goes into the last segment", path, len(pts), err)
    finally:
        container.close()
    if not pts and not missing:
        raise InputError(f"input {path}: the video stream holds no packets")
    ordered = sorted(pts)
    reason = ""
    if missing:
        reason = f"{missing} video packets have no timestamp"
    elif len(set(ordered)) != len(ordered):
        reason = "some video packets share a timestamp"
    elif not keys:
        reason = "no keyframe flags"
    index = VideoIndex(tuple(ordered), tuple(sorted(keys)), info.time_base, usable=not reason, reason=reason, interlaced=info.interlaced)
    return trim_index(index, trim, info) if trim is not None and trim.active else index


def trim_index(index: VideoIndex, trim: Trim, info: VideoInfo) -> VideoIndex:
    """The frames of ``index`` that ``trim`` keeps (the same rule as the decoder's, on packet pts)."""
    if not index.usable:
        raise VsrError(f"input {info.path} cannot be trimmed into segments ({index.reason}); run without --segments/--segment-frames")
    window = trim.window(info.start_time)
    tb = index.time_base
    first = next((i for i, p in enumerate(index.pts) if not window.before(p * tb)), len(index.pts))
    last = first
    while last < len(index.pts) and not window.past(index.pts[last] * tb, last - first):
        last += 1
    if last == first:
        raise UsageError(f"input {info.path}: no video frame lies in the trim range ({trim.describe()}); check --start/--duration")
    kept = index.pts[first:last]
    return replace(
        index, pts=kept, start_pts=kept[0], end_pts=index.pts[last] if last < len(index.pts) else None,
        before=index.pts[:first], offset=kept[0] * tb,
    )


def plan_segments(index: VideoIndex, *, segment_frames: int | None = None, segments: int | None = None, context: int = 0) -> list[Segment]:
    """Split the indexed frames into ranges of ``segment_frames`` frames, or into ``segments`` about
    equal ranges. An index that cannot be split exactly gives one segment (the whole video).
    ``context`` frames before each range are decoded too (the deinterlacer looks one frame back),
    so each segment starts at the keyframe at or before them."""
    if (segment_frames is None) == (segments is None):
        raise ValueError("give exactly one of segment_frames and segments")
    if (segment_frames is not None and segment_frames < 1) or (segments is not None and segments < 1):
        raise ValueError("segment_frames and segments must be >= 1")
    n = index.frames
    if not index.usable or n == 0:
        if index.reason:
            log.warning("cannot split this video into segments (%s); it is processed as one segment", index.reason)
        return [Segment(0, None, None, n, None)]
    size = segment_frames if segment_frames is not None else -(-n // segments)
    starts = list(range(0, n, size))
    return [segment_at(index, i, first, starts[i + 1] if i + 1 < len(starts) else n, context=context) for i, first in enumerate(starts)]


def segment_at(index: VideoIndex, number: int, first: int, last: int, *, context: int = 0) -> Segment:
    """Segment ``number``: the indexed frames ``first`` to ``last`` (exclusive, positions in
    ``index.pts``), decoded from the keyframe at or before its first frame less ``context``
    frames. The first segment starts where the index does (a trim's start, or the file's) and one
    that reaches the end ends where the index does, so consecutive segments cover every frame."""
    start_pts = index.start_pts if first == 0 else index.pts[first]
    end_pts = index.end_pts if last >= index.frames else index.pts[last]
    seek = None
    if start_pts is not None:
        position = max(0, len(index.before) + first - context)
        earliest = index.before[position] if position < len(index.before) else index.pts[position - len(index.before)]
        before = bisect.bisect_right(index.keyframes, earliest)
        seek = index.keyframes[before - 1] if before else None
    return Segment(number, start_pts, end_pts, min(last, index.frames) - first, seek, index.offset)


# Pieces must hold the encoder's packets byte for byte. MP4/Matroska rewrite H.264/HEVC packets
# (Annex B -> length-prefixed), and the output muxer would then misread them, so pieces of outputs
# in a global-header container go into NUT (same global-header encoder setup, packets kept as
# they are); MPEG-TS outputs (in-band headers) get MPEG-TS pieces.
_PIECE_EXT = {"nut": ".nut", "mpegts": ".ts"}
_AVFMT_GLOBALHEADER = 0x0040  # libavformat/avformat.h


def piece_format(fmt: str) -> str:
    """The container a piece of a ``fmt`` output is written in."""
    global_header = av.format.ContainerFormat(fmt, "w").flags & _AVFMT_GLOBALHEADER
    return "nut" if global_header else fmt


def piece_path(folder: Path, segment: Segment, fmt: str) -> Path:
    """``folder/NNNN.<ext>`` for segment ``segment`` of a ``fmt`` output."""
    pfmt = piece_format(fmt)
    return Path(folder) / f"{segment.index:04d}{_PIECE_EXT.get(pfmt, '.' + pfmt)}"


# --------------------------------------------------------------------------- decoding a range


class _SeekMissed(Exception):
    """The demuxer's seek landed after the first frame of the range (imprecise index, e.g. MPEG-TS)."""


def iter_segment_frames(
    path: Path, segment: Segment, *, hwaccel: str | None = None, hwaccel_device: int | None = None, picture: PictureOptions = PictureOptions(),
) -> Iterator[tuple[VideoInfo, Frame]]:
    """Decoded frames of ``segment`` (and the source's info), exactly its pts range, in order,
    deinterlaced as ``picture`` says and moved back by the segment's offset.

    Seeks to the keyframe at or before the range; if the demuxer lands after the range's first
    frame, it decodes from the beginning instead (slower, still exact).
    """
    for attempt in ("seek", "from the start"):
        container, info = open_input(path, hwaccel=hwaccel, hwaccel_device=hwaccel_device)
        try:
            if attempt == "seek" and segment.seek_pts is not None:
                container.seek(segment.seek_pts, stream=container.streams[info.stream_index], backward=True, any_frame=False)
            elif attempt == "seek" and segment.start_pts is not None:
                continue  # no keyframe before the range in the index: only a full decode is exact
            try:
                yield from _frames_in_range(container, info, segment, check_seek=attempt == "seek", picture=picture)
                return
            except _SeekMissed as missed:
                log.info("segment %d of %s: %s; decoding from the start", segment.index, path, missed)
        finally:
            container.close()


class _NotTruncated(logging.Filter):
    """iter_media compares the frames it read with the header's count; a last segment read from
    a keyframe mid-file reads fewer by design, which is not a truncated file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ended early" not in str(record.msg)


def _frames_in_range(container, info: VideoInfo, segment: Segment, *, check_seek: bool, picture: PictureOptions) -> Iterator[tuple[VideoInfo, Frame]]:
    from ..media.deinterlace import plan as plan_deinterlace

    # Compared as times: a deinterlaced frame may carry a finer time base than the index's pts.
    tb = info.time_base
    start = None if segment.start_pts is None else segment.start_pts * tb
    end = None if segment.end_pts is None else segment.end_pts * tb
    first = True
    deinterlace = plan_deinterlace(picture.deinterlace, picture.deinterlace_rate, info)
    items = iter_media(container, info, copy_streams=(), deinterlace=deinterlace)
    quiet = _NotTruncated()
    decode_log = logging.getLogger(iter_media.__module__)
    if segment.seek_pts is not None or start is not None:
        decode_log.addFilter(quiet)
    try:
        while True:
            try:
                frame = next(items)
            except StopIteration:
                if first and check_seek and segment.seek_pts is not None:
                    raise _SeekMissed(f"nothing decoded after seeking to pts {segment.seek_pts}") from None
                return
            except InputError as err:
                if first and check_seek and segment.seek_pts is not None:
                    raise _SeekMissed(f"nothing decoded after seeking to pts {segment.seek_pts} ({err})") from None
                raise
            if (start is not None or end is not None) and frame.pts is None:
                raise VsrError(f"input {info.path}: a decoded frame has no timestamp, so segment {segment.index} cannot be cut exactly; run without segments")
            t = None if frame.pts is None else frame.pts * frame.time_base
            if first and check_seek and start is not None and t > start:
                raise _SeekMissed(f"seek to pts {segment.seek_pts} landed at {float(t):.3f} s, after the range start {float(start):.3f} s")
            first = False
            if start is not None and t < start:
                continue
            if end is not None and t >= end:
                return  # frames come in presentation order: the range is complete
            if segment.offset:
                frame.pts = round((t - segment.offset) / frame.time_base)
            yield info, frame
    finally:
        items.close()
        decode_log.removeFilter(quiet)


# --------------------------------------------------------------------------- encoding a piece


class _OneStream:
    def __init__(self, stream):
        self._stream = stream

    def __iter__(self):
        yield self._stream

    def __getitem__(self, index: int):
        if index != self._stream.index:
            raise IndexError(index)
        return self._stream


class _VideoOnlySource:
    """The source as a piece's Muxer sees it: only the video stream, no metadata or chapters."""

    def __init__(self, container, stream_index: int):
        self.streams = _OneStream(container.streams[stream_index])
        self.metadata: dict[str, str] = {}


class _RecordingMuxer(Muxer):
    """A Muxer that also remembers each video packet's timestamps as the encoder made them."""

    settings_log_level = logging.DEBUG

    def __init__(self, *args, **kwargs):
        self.records: list[tuple[int | None, int | None, int]] = []
        self.packet_time_base: Fraction | None = None
        super().__init__(*args, **kwargs)

    def _mux(self, packets) -> None:
        packets = list(packets)
        for packet in packets:
            if packet.stream is self.video:
                tb = Fraction(packet.time_base) if packet.time_base else None
                if self.packet_time_base is None:
                    self.packet_time_base = tb
                elif tb != self.packet_time_base:
                    raise VsrError(f"the {self.codec} encoder changed its packet time base mid-piece; run without segments")
                self.records.append((packet.pts, packet.dts, packet.duration or 0))
        super()._mux(packets)


class _JoinMuxer(Muxer):
    """A Muxer whose video packets are already encoded (the pieces') instead of encoded here."""

    def write_video_packet(self, packet: av.Packet) -> None:
        packet.stream = self.video
        self._mux([packet])
        self.stats.frames += 1


def encode_segment(
    source: Path,
    segment: Segment,
    piece: Path,
    *,
    upscaler: Upscaler,
    video: VideoOptions = VideoOptions(),
    fmt: str,
    extra: dict[str, Any] | None = None,
    on_frame: Callable[[int], None] | None = None,
    first_frame: int = 0,
    dedup_summary: bool = True,
) -> dict[str, Any]:
    """Upscale and encode one segment into ``piece`` (published with its sidecar); returns the sidecar.

    ``video``: the run's video options (its trim is already in the segment's range; the decoder is
    PyAV's). ``fmt`` is the final output's container format. ``extra`` goes into the sidecar (the
    caller's fingerprints, checked before a piece is reused). ``on_frame(n)`` gets the frames
    encoded so far. ``first_frame`` (the whole output's number of the segment's first frame) and
    ``dedup_summary`` go to the segment's :class:`vsr.dedup.Detector`.
    """
    piece = Path(piece)

    def build(tmp: Path) -> dict[str, Any]:
        detector = Detector(video.dedup, upscaler.engine.device, first=first_frame, summary=dedup_summary)
        meta = _encode(source, segment, tmp, upscaler=upscaler, video=video, fmt=fmt, on_frame=on_frame, detector=detector)
        return {**(extra or {}), **meta}

    return publish_artifact(piece, build, key=f"{PIECE_SCHEMA}:{segment.index}")


def _encode(source: Path, segment: Segment, tmp: Path, *, upscaler: Upscaler, video: VideoOptions, fmt: str, on_frame, detector: Detector) -> dict[str, Any]:
    settings, picture = video.settings, video.picture
    frames_iter = iter_segment_frames(source, segment, hwaccel=video.hwaccel, hwaccel_device=cuda_index(upscaler), picture=picture)
    first = next(frames_iter, None)
    if first is None:
        raise VsrError(f"segment {segment.index} of {source} decoded no frame (the index promised {segment.frames}); run without segments")
    info, _ = first
    codec, pix_fmt, plan = plan_output(info, fmt, settings, picture, scale=upscaler.scale, outscale=video.outscale)
    out_colour = color.for_output(info.colour, pix_fmt)
    # The container reads the video stream only; audio/subtitles are copied once, at the join.
    container = av.open(str(source))
    try:
        muxer = _RecordingMuxer(
            tmp, fmt=piece_format(fmt), info=info, source=_VideoOnlySource(container, info.stream_index), plan=plan,
            settings=replace(settings, audio=False, subtitles=False), codec=codec, pix_fmt=pix_fmt, colour=out_colour,
        )
    finally:
        container.close()
    extradata = bytes(muxer.video.codec_context.extradata or b"")

    def all_frames() -> Iterator[Frame]:
        yield first[1]
        for _, frame in frames_iter:
            yield frame

    try:
        # Each segment has its own detector: its first frame is always computed.
        decoded, reused = _compute_and_encode(all_frames(), muxer, upscaler, out_colour, plan, on_frame, detector)
        stats = muxer.finish()
    except BaseException:
        muxer.abort()
        raise
    finally:
        frames_iter.close()
    if stats.frames != decoded or stats.video_packets != stats.frames or len(muxer.records) != stats.frames:
        raise VsrError(f"segment {segment.index} of {source}: {decoded} frames decoded, {stats.frames} encoded, {stats.video_packets} packets; not published (please report this)")
    if decoded != segment.frames * plan.deinterlace.frames_per_input:
        log.warning("segment %d of %s: %d frames decoded where the index counted %d packets", segment.index, source, decoded, segment.frames)
    tb = muxer.packet_time_base or info.time_base
    return {
        "schema": PIECE_SCHEMA, "segment": segment.as_dict(), "frames": stats.frames, "codec": codec, "pix_fmt": pix_fmt,
        "width": plan.width, "height": plan.height, "scale": upscaler.scale, "format": fmt, "time_base": f"{tb.numerator}/{tb.denominator}",
        "extradata": extradata.hex(), "packets": muxer.records, "dedup_reused": reused,
    }


def _compute_and_encode(frames: Iterator[Frame], muxer: Muxer, upscaler: Upscaler, colour, plan, on_frame, detector: Detector) -> tuple[int, int]:
    """Batches through the network as in ``vsr run`` (:func:`vsr.video_compute.compute_frames`, with
    torch's glue on one thread beside a CPU engine's own pool); encoding on a second thread, joined
    by a bounded channel (PyAV and torch release the GIL, so they overlap). Returns the number of
    frames decoded and of frames that reused a computed output (``detector``, ``--dedup``)."""
    stages = Stages()
    computed = stages.channel(QUEUE_FRAMES + upscaler.batch)
    write = FrameWriter(muxer, on_frame)

    def encode() -> None:
        while not Channel.is_end(item := computed.get()):
            write(item)

    def compute() -> int:
        with upscaler.glue_threads():
            count = compute_frames(frames, upscaler, computed.put, planar_fmt=muxer.planar_fmt, colour=colour, plan=plan, detector=detector)
        computed.close()
        stages.join()
        return count

    stages.start("segment-encode", encode)
    return stages.run(compute), detector.reused


# --------------------------------------------------------------------------- reuse and join


def piece_status(piece: Path, expected: dict[str, Any]) -> tuple[bool, str]:
    """(reusable, why): the piece is complete (sidecar, size and SHA-256 match) and its sidecar
    holds the same values as ``expected`` (segment range, fingerprints) for every key given."""
    ok, reason = check_artifact(piece)
    if not ok:
        return False, reason
    meta = read_sidecar(piece) or {}
    for key, value in expected.items():
        if meta.get(key) != value:
            return False, f"its {key} differs"
    return True, "complete"


def _join_dts(pieces: list[dict[str, Any]]) -> list[list[int]]:
    """DTS for every packet of the joined stream, per piece.

    Each piece's encoder began its DTS ``d`` packets before its first pts (its reorder delay), so
    piece k+1's first DTS can fall below piece k's last. Over the whole stream, with ``D`` the
    largest delay, the i-th packet in decode order gets the (i-D)-th smallest pts: increasing, and
    never after the packet's own pts (the i-th decoded frame of a stream with reorder depth D cannot
    be shown before the (i-D)-th frame). The first D packets count back from the first pts.
    """
    all_pts: list[int] = []
    delay = 0
    for meta in pieces:
        pts = [p[0] for p in meta["packets"]]
        dts = [p[1] if p[1] is not None else p[0] for p in meta["packets"]]
        low = min(pts)
        delay = max(delay, sum(1 for d in dts if d < low))
        all_pts.extend(pts)
    ordered = sorted(all_pts)
    step = ordered[1] - ordered[0] if len(ordered) > 1 else 1
    joined = [ordered[0] - (delay - i) * step if i < delay else ordered[i - delay] for i in range(len(all_pts))]
    for i, (d, p) in enumerate(zip(joined, all_pts, strict=True)):
        if d > p or (i and d <= joined[i - 1]):
            raise VsrError("the pieces' timestamps cannot be joined into one valid stream (decode order vs pts); run without segments (please report this)")
    out, at = [], 0
    for meta in pieces:
        n = len(meta["packets"])
        out.append(joined[at : at + n])
        at += n
    return out


def _parse_fraction(text: str) -> Fraction:
    num, den = text.split("/")
    return Fraction(int(num), int(den))


def join_segments(
    source: Path,
    pieces: list[Path],
    target: Path,
    *,
    video: VideoOptions = VideoOptions(),
    overwrite: bool = False,
) -> int:
    """Remux the pieces (in order) and the source's audio/subtitles into ``target``; returns frames.

    ``video``: the options the pieces were made with (the output stream is planned as theirs was,
    with the model scale they recorded). With a trim, the audio/subtitle packets of the trimmed
    range are copied, moved back like the video (the same rule as a single trimmed ``vsr run``).
    The output is published (:func:`vsr.files.publish`) only when every piece verified and
    the video packet count equals the sum of the pieces' frames.
    """
    settings, picture, trim = video.settings, video.picture, video.trim
    metas = []
    for piece in pieces:
        ok, reason = check_artifact(piece)
        if not ok:
            raise VsrError(f"segment piece {piece} is not complete ({reason}); run the batch again to redo it")
        metas.append(read_sidecar(piece))
    fmt = container_format(target)
    if fmt is None or any(m["format"] != fmt for m in metas):
        raise VsrError(f"the pieces of {target} were written for another container; run the batch again")
    container, info = open_input(source)
    try:
        first = metas[0]
        codec, pix_fmt, plan = plan_output(info, fmt, settings, picture, scale=int(first["scale"]), outscale=video.outscale, trim=trim)
        if any((m["codec"], m["pix_fmt"], m["width"], m["height"]) != (codec, pix_fmt, plan.width, plan.height) for m in metas):
            raise VsrError(f"the pieces of {target} were encoded with other settings; run the batch again")
        colour = color.for_output(info.colour, pix_fmt)
        dts = _join_dts(metas)
        total = sum(m["frames"] for m in metas)
        with publish(target, overwrite=overwrite) as partial:
            muxer = _JoinMuxer(
                partial, fmt=fmt, info=info, source=container, plan=plan,
                settings=settings, codec=codec, pix_fmt=pix_fmt, colour=colour,
            )
            try:
                headers = bytes(muxer.video.codec_context.extradata or b"").hex()
                for piece, meta in zip(pieces, metas, strict=True):
                    if meta["extradata"] != headers:
                        raise VsrError(
                            f"piece {piece.name} has other codec headers than the output encoder ({codec} with these options "
                            "does not give identical headers); run without segments"
                        )
                video = _piece_packets(pieces, metas, dts)
                copied = _copied_packets(container, muxer.copied_indices, _join_cut(info, trim, metas, muxer.copied_indices, container))
                for kind, item in _interleave(video, copied):
                    if kind == "v":
                        muxer.write_video_packet(item)
                    else:
                        muxer.write_packet(item)
                stats = muxer.finish()
            except BaseException:
                muxer.abort()
                raise
            if stats.frames != total or stats.video_packets != total:
                raise VsrError(f"join of {target}: {stats.video_packets} video packets written for {total} frames in the pieces; not published (please report this)")
    finally:
        container.close()
    return total


def _piece_packets(pieces: list[Path], metas: list[dict[str, Any]], dts: list[list[int]]) -> Iterator[tuple[Fraction, av.Packet]]:
    for piece, meta, piece_dts in zip(pieces, metas, dts, strict=True):
        tb = _parse_fraction(meta["time_base"])
        records = meta["packets"]
        with av.open(str(piece)) as c:
            stream = c.streams.video[0]
            n = 0
            for packet in c.demux(stream):
                if not packet.size:
                    continue
                if n >= len(records):
                    raise VsrError(f"piece {piece} holds more video packets than its sidecar lists; run the batch again")
                pts, _, duration = records[n]
                packet.pts, packet.dts, packet.duration = pts, piece_dts[n], duration
                packet.time_base = tb
                n += 1
                yield Fraction(piece_dts[n - 1]) * tb, packet
            if n != len(records):
                raise VsrError(f"piece {piece} holds {n} video packets, its sidecar lists {len(records)}; run the batch again")


def _join_cut(info: VideoInfo, trim: Trim | None, metas: list[dict[str, Any]], indices: list[int], container) -> Cut | None:
    """The copied-packet side of a trim, with the range the (trimmed) index put the video in: the
    offset every segment carries and the last segment's end (:func:`plan_segments`), as the
    pieces' sidecars recorded them, so the source is not indexed again."""
    if trim is None or not trim.active:
        return None
    offset = Fraction(metas[0]["segment"]["offset"])
    end_pts = metas[-1]["segment"]["end_pts"]
    kinds = {i: container.streams[i].type for i in indices}
    return Cut.for_range(
        trim.window(info.start_time), info, offset=offset, end=None if end_pts is None else end_pts * info.time_base,
        copied={i for i, k in kinds.items() if k != "attachment"}, subtitles={i for i, k in kinds.items() if k == "subtitle"},
    )


def _copied_packets(container, indices: list[int], cut: Cut | None = None) -> Iterator[tuple[Fraction | None, CopiedPacket]]:
    streams = [container.streams[i] for i in indices if container.streams[i].type != "attachment"]
    if not streams:
        return
    if cut is not None and cut.window.start > cut.info.start_time:
        first = container.streams[cut.info.stream_index]
        container.seek(int(max(cut.window.start - Fraction(1), cut.info.start_time) / Fraction(first.time_base)), stream=first, backward=True)
    for packet in container.demux(streams):
        if not packet.size:
            continue
        items = cut.packet(packet) if cut is not None else [CopiedPacket(packet, packet.stream.index)]
        for item in items:
            stamp = item.packet.dts if item.packet.dts is not None else item.packet.pts
            key = Fraction(stamp) * Fraction(item.packet.time_base) if stamp is not None and item.packet.time_base else None
            yield key, item
        if cut is not None and cut.finished:
            return


def _interleave(video: Iterator, copied: Iterator) -> Iterator[tuple[str, Any]]:
    """Both packet streams in about time order (the muxer's interleaver does the fine ordering);
    keeps memory flat instead of writing all video first."""
    pending_copy = next(copied, None)
    for vkey, packet in video:
        while pending_copy is not None and (pending_copy[0] is None or pending_copy[0] <= vkey):
            yield "c", pending_copy[1]
            pending_copy = next(copied, None)
        yield "v", packet
    while pending_copy is not None:
        yield "c", pending_copy[1]
        pending_copy = next(copied, None)
