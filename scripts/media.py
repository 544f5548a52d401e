"""Test and benchmark media made in-process with PyAV from real photographs (no ffmpeg binary).

The tests import it as ``media`` (scripts/ is on pytest's ``pythonpath``), the benchmark scripts as
the sibling module it is (``--make-clip``).

Every video frame is a crop window that pans and zooms smoothly across one of the photographs
scikit-image ships (``astronaut``, ``chelsea``, ``coffee``, ``rocket``), resampled with an
anti-aliased cubic warp (scikit-image) and converted to YUV by swscale in bit-exact mode, so the
decoded pixels are the same on every run and machine (all encoders run single-threaded).  Audio is
a plucked arpeggio (four harmonics under an attack/decay envelope), a different chord per channel.

Plain functions only: each ``*_mp4``/``*_mkv``/... writer takes a directory, writes one file into
it and returns its :class:`~pathlib.Path`; the fixtures that call them live in ``conftest.py``.
The read-back helpers at the end (``decode_frames``, ``video_pts``, ``packets``, ``planes``) are
what the tests compare against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.subtitles.subtitle import SubtitleSet
from av.video.reformatter import Interpolation

__all__ = [
    "PHOTOS",
    "SUBTITLE_CUES",
    "audio_only",
    "camera_frames",
    "decode_frames",
    "empty_file",
    "h264_aac_mp4",
    "hevc10_opus_srt_mkv",
    "make_clip",
    "packets",
    "planes",
    "synth_audio",
    "text_file",
    "truncated_ts",
    "vfr_mp4",
    "video_pts",
    "vp9_opus_webm",
    "yuv444_odd_mkv",
    "yuvj420p_mp4",
]

# --------------------------------------------------------------------------------------------
# Photographs and camera moves

#: Default camera move per photograph: (start, end) windows as (centre x, centre y, width), all
#: as fractions of the photograph's width/height.  The window keeps the output's aspect ratio.
PHOTOS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "astronaut": ((0.45, 0.50, 0.95), (0.43, 0.24, 0.42)),  # whole portrait -> her face
    "chelsea": ((0.45, 0.50, 0.95), (0.63, 0.42, 0.45)),  # the cat -> its eyes
    "coffee": ((0.50, 0.50, 0.95), (0.50, 0.33, 0.40)),  # the table -> into the cup
    "rocket": ((0.22, 0.55, 0.45), (0.58, 0.55, 0.45)),  # pan from the tower to the rocket
}

#: The cues written into ``hevc10_opus_srt_mkv``: (start s, end s, text).
SUBTITLE_CUES: list[tuple[float, float, str]] = [
    (0.00, 0.25, "Houston, we have a cat."),
    (0.30, 0.55, "Zooming in: 2× closer"),
    (0.60, 0.80, "Line one\nline two"),
]

_SWS_FLAGS = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.BITEXACT

# FFmpeg's names for the colour tags (AVColorSpace, AVColorRange, AVColorPrimaries, AVColorTRC).
_TAG_NAMES: dict[str, dict[str, int]] = {
    "colorspace": {"rgb": 0, "bt709": 1, "unspecified": 2, "fcc": 4, "bt470bg": 5,
                   "smpte170m": 6, "smpte240m": 7, "bt2020nc": 9, "bt2020_ncl": 9},
    "color_range": {"unspecified": 0, "tv": 1, "mpeg": 1, "limited": 1,
                    "pc": 2, "jpeg": 2, "full": 2},
    "color_primaries": {"bt709": 1, "unspecified": 2, "bt470m": 4, "bt470bg": 5,
                        "smpte170m": 6, "smpte240m": 7, "film": 8, "bt2020": 9},
    "color_trc": {"bt709": 1, "unspecified": 2, "gamma22": 4, "gamma28": 5, "smpte170m": 6,
                  "smpte240m": 7, "linear": 8, "iec61966-2-1": 13, "srgb": 13,
                  "bt2020-10": 14, "bt2020_10": 14, "smpte2084": 16, "arib-std-b67": 18},
}
# AVColorSpace -> swscale matrix (SWS_CS_*): 709 -> 1, 601 (5 and 6) -> 5, 240M -> 7, 2020 -> 9.
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9}

# x264's SIMD code reads uninitialised memory in its lookahead (mbtree) at these tiny sizes, so its
# output changed with the heap's contents (seen with MALLOC_PERTURB_); the C code path does not, and
# gives the same bitstream on every CPU.  Costs nothing at these sizes.
_X264_PARAMS = "asm=0"

_AUDIO_ENCODERS = {"aac": ("aac",), "opus": ("libopus", "opus"), "mp3": ("libmp3lame", "mp3")}


@functools.cache
def _photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3], dtype=np.float64) / 255.0
    img.flags.writeable = False
    return img


def _smoothstep(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


def _window(ph: int, pw: int, aspect: float, cx: float, cy: float, wfrac: float):
    """A crop window (x0, y0, w, h) in photo pixels, aspect w/h, inside the photo."""
    w = wfrac * pw
    h = w / aspect
    if h > ph:  # too tall for the photo: shrink to fit
        h = float(ph)
        w = h * aspect
    if w > pw:
        w = float(pw)
        h = w / aspect
    x0 = min(max(cx * pw - w / 2, 0.0), pw - w)
    y0 = min(max(cy * ph - h / 2, 0.0), ph - h)
    return x0, y0, w, h


def _render(img: np.ndarray, x0: float, y0: float, w: float, h: float, size: tuple[int, int]):
    """Resample the window [x0, x0+w) x [y0, y0+h) of ``img`` to ``size`` (anti-aliased cubic)."""
    from skimage.filters import gaussian
    from skimage.transform import AffineTransform, warp

    out_w, out_h = size
    s = w / out_w  # photo pixels per output pixel (same both ways)
    sigma = max(0.0, (s - 1.0) / 2.0)
    m = int(math.ceil(4 * sigma)) + 3
    ph, pw = img.shape[:2]
    bx0, by0 = max(int(math.floor(x0)) - m, 0), max(int(math.floor(y0)) - m, 0)
    bx1, by1 = min(int(math.ceil(x0 + w)) + m, pw), min(int(math.ceil(y0 + h)) + m, ph)
    sub = img[by0:by1, bx0:bx1]
    if sigma > 0:
        sub = gaussian(sub, sigma=sigma, channel_axis=-1, mode="nearest", preserve_range=True)
    else:  # enlarging: skimage's warp needs a writeable buffer, and the cached photo is read-only
        sub = sub.copy()
    # output (col, row) -> input (x, y), pixel centres at +0.5
    matrix = np.array(
        [[s, 0.0, x0 - bx0 + 0.5 * s - 0.5], [0.0, s, y0 - by0 + 0.5 * s - 0.5], [0.0, 0.0, 1.0]]
    )
    out = warp(sub, AffineTransform(matrix=matrix), output_shape=(out_h, out_w), order=3,
               mode="edge", preserve_range=True)
    return np.clip(out, 0.0, 1.0)


def camera_frames(photo: str | Sequence[str] = "astronaut", size: tuple[int, int] = (96, 64),
                  frames: int = 8, moves: Sequence | None = None) -> np.ndarray:
    """Float RGB frames in [0, 1], shape (frames, h, w, 3): a smooth pan/zoom over real photos.

    ``photo`` may name several photographs: the frames are then split into that many shots
    (hard cuts between them), each with its own move (``moves[i]`` or the default in PHOTOS).
    A gentle vignette is applied so smooth gradients carry information below 8 bits.
    """
    names = [photo] if isinstance(photo, str) else list(photo)
    if frames <= 0:
        return np.zeros((0, size[1], size[0], 3))
    out_w, out_h = size
    aspect = out_w / out_h
    bounds = [round(i * frames / len(names)) for i in range(len(names) + 1)]
    yy, xx = np.mgrid[0:out_h, 0:out_w]
    r2 = ((xx + 0.5) / out_w - 0.5) ** 2 + ((yy + 0.5) / out_h - 0.5) ** 2
    vignette = (1.0 - 0.35 * r2)[..., None]
    result = np.empty((frames, out_h, out_w, 3))
    for k, name in enumerate(names):
        img = _photo(name)
        ph, pw = img.shape[:2]
        (ax, ay, aw), (bx, by, bw) = moves[k] if moves is not None else PHOTOS[name]
        n = bounds[k + 1] - bounds[k]
        for j in range(n):
            t = _smoothstep(j / (n - 1)) if n > 1 else 0.0
            cx, cy = ax + (bx - ax) * t, ay + (by - ay) * t
            wf = math.exp(math.log(aw) + (math.log(bw) - math.log(aw)) * t)  # even zoom speed
            win = _window(ph, pw, aspect, cx, cy, wf)
            result[bounds[k] + j] = _render(img, *win, size) * vignette
    return result


# --------------------------------------------------------------------------------------------
# Audio


def synth_audio(seconds: float, sample_rate: int = 48000, channels: int = 2) -> np.ndarray:
    """A plucked arpeggio, float32 planar (channels, samples), peak about 0.5.

    Each channel plays its own chord (A major on the left, a fifth higher on the right, ...),
    one note every 0.25 s: four harmonics (1, 1/2, 1/3, 1/4) under a 5 ms attack and a 0.15 s
    decay, with 10 ms fades at both ends of the signal.
    """
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    note = 0.25
    idx = np.floor(t / note).astype(np.int64)
    local = t - idx * note
    env = (1.0 - np.exp(-local / 0.005)) * np.exp(-local / 0.15)
    fade = np.minimum(1.0, np.minimum(t, (n - 1) / sample_rate - t) / 0.01).clip(0.0, 1.0)
    chord = np.array([220.0, 277.18, 329.63, 440.0])  # A3 C#4 E4 A4
    out = np.empty((channels, n), dtype=np.float32)
    for c in range(channels):
        freqs = chord * 2.0 ** (7 * c / 12)  # each channel a fifth above the previous one
        f = freqs[(idx + c) % len(freqs)]
        sig = sum(np.sin(2 * np.pi * k * f * local + 0.3 * k) / k for k in range(1, 5))
        out[c] = (0.3 * env * fade * sig).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# The generic writer


def _tag(kind: str, value) -> int:
    if isinstance(value, str):
        return _TAG_NAMES[kind][value.lower()]
    return int(value)


def _to_frame(rgb: np.ndarray, pix_fmt: str, tags: dict[str, int]) -> av.VideoFrame:
    """Float RGB [0, 1] -> a VideoFrame in ``pix_fmt`` with the matrix/range the tags name."""
    fmt = av.VideoFormat(pix_fmt)
    deep = max(c.bits for c in fmt.components) > 8
    if deep:
        src = av.VideoFrame.from_ndarray(np.round(rgb * 65535).astype(np.uint16), format="rgb48le")
    else:
        src = av.VideoFrame.from_ndarray(np.round(rgb * 255).astype(np.uint8), format="rgb24")
    if fmt.is_rgb:
        frame = src.reformat(format=pix_fmt, interpolation=_SWS_FLAGS, threads=1)
    else:
        full = pix_fmt.startswith("yuvj") or tags.get("color_range") == 2
        frame = src.reformat(
            format=pix_fmt,
            dst_colorspace=_SWS_MATRIX.get(tags.get("colorspace", 2), 5),
            dst_color_range=2 if full else 1,
            interpolation=_SWS_FLAGS,
            threads=1,
        )
    for kind, value in tags.items():
        setattr(frame, kind, value)
    return frame


def _woven(samples: np.ndarray, order: str) -> np.ndarray:
    """Interlaced frames from twice as many progressive samples: frame i takes its first field
    (the top lines for ``tff``) from sample 2i and its second from sample 2i+1."""
    first, second = samples[0::2], samples[1::2]
    out = second.copy()
    top = slice(0, None, 2)
    bottom = slice(1, None, 2)
    out[:, top if order == "tff" else bottom] = first[:, top if order == "tff" else bottom]
    return out


def _field_flagger(size: tuple[int, int], pix_fmt: str, tb: Fraction, order: str):
    """A function that flags a frame interlaced with ``order`` (PyAV cannot set the flags itself:
    FFmpeg's ``setfield`` filter does)."""
    graph = av.filter.Graph()
    src = graph.add_buffer(width=size[0], height=size[1], format=pix_fmt, time_base=tb)
    setfield = graph.add("setfield", order)
    sink = graph.add("buffersink")
    src.link_to(setfield)
    setfield.link_to(sink)
    graph.configure()

    def flag(frame: av.VideoFrame) -> av.VideoFrame:
        frame.time_base = tb
        graph.push(frame)
        return graph.pull()

    return flag


def _add_audio(out, audio: str, sample_rate: int, channels: int):
    for name in _AUDIO_ENCODERS[audio]:
        try:
            av.codec.Codec(name, "w")
        except Exception:
            continue
        stream = out.add_stream(name, rate=sample_rate)
        break
    else:
        raise RuntimeError(f"no {audio} encoder in this PyAV build")
    stream.codec_context.layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, f"{channels}c")
    fmts = [f.name for f in stream.codec_context.codec.audio_formats or ()]
    if "flt" in fmts:
        stream.codec_context.format = "flt"
    stream.codec_context.thread_count = 1
    return stream


def _subtitle_codec(format_name: str) -> str:
    if "mp4" in format_name or "mov" in format_name:
        return "mov_text"
    if format_name == "webm":
        return "webvtt"
    return "subrip"


_ASS_HEADER = (
    "[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
    "BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, "
    "BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n"
    "Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n"
    "\n[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


def make_clip(
    path: str | Path,
    *,
    container: str | None = None,
    vcodec: str | None = "libx264",
    pix_fmt: str = "yuv420p",
    size: tuple[int, int] = (96, 64),
    frames: int = 8,
    rate: Fraction | int = Fraction(12),
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    audio: str | None = None,
    audio_seconds: float | None = None,
    audio_channels: int = 2,
    sample_rate: int = 48000,
    subtitles: Sequence[tuple[float, float, str]] | None = None,
    colour: dict[str, int | str] | None = None,
    photo: str | Sequence[str] = "astronaut",
    moves: Sequence | None = None,
    options: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    chapters: bool = False,
    rgb: np.ndarray | None = None,
    sar: Fraction | None = None,
    display_matrix: Sequence[int] | None = None,
    interlaced: str | None = None,
) -> Path:
    """Write one clip and return its path.

    - ``vcodec=None`` writes no video stream (audio and/or subtitles only).
    - ``pts``: explicit presentation timestamps (VFR), in units of ``time_base``; default
      ``time_base`` is ``1/rate`` and the default pts are ``0, 1, 2, ...`` frame periods.
    - ``audio``: ``"aac"``, ``"opus"`` or ``"mp3"``; ``audio_seconds`` defaults to the video's
      duration (last pts + one frame period), or 1 s without video.
    - ``subtitles``: (start s, end s, text) cues; SubRip in Matroska, mov_text in MP4/MOV,
      WebVTT in WebM.
    - ``colour``: tags ``colorspace``/``color_range``/``color_primaries``/``color_trc`` (FFmpeg
      ints or names such as ``"bt709"``, ``"tv"``); the RGB->YUV matrix and range follow them.
    - ``options``: encoder options; ``metadata``: container tags; ``chapters``: two chapters
      splitting the video duration (``Intro``, ``Close-up``).
    - ``rgb``: explicit float RGB frames ``(frames, h, w, 3)`` instead of the camera move.
    - ``sar``: sample aspect ratio written into the stream; ``display_matrix``: nine int32 as
      FFmpeg's ``DISPLAYMATRIX`` side data (rotation), written on the stream.
    - ``interlaced``: ``"tff"`` or ``"bff"``: each frame is woven from two fields sampled half a
      frame period apart (real combing on motion), flagged interlaced with that field order and
      coded as interlaced (x264 ``+ildct+ilme``).
    """
    path = Path(path)
    rate = Fraction(rate)
    tb = Fraction(time_base) if time_base is not None else 1 / rate
    period = (1 / rate) / tb  # one frame period in time_base units
    if pts is None:
        pts = [round(i * period) for i in range(frames)]
    pts = [int(p) for p in pts]
    if len(pts) != frames:
        raise ValueError(f"{len(pts)} pts for {frames} frames")
    if vcodec is None:
        frames = 0
    duration_s = float((pts[-1] + period) * tb) if frames else 1.0
    tags = {k: _tag(k, v) for k, v in (colour or {}).items()}

    # bitexact: no random Matroska UIDs, no encoder version tag, so the bytes repeat too
    out = av.open(str(path), "w", format=container, container_options={"fflags": "+bitexact"})
    try:
        if metadata:
            out.metadata.update(metadata)
        vstream = None
        if vcodec is not None:
            fmt = av.VideoFormat(pix_fmt)
            w, h = size
            if (fmt.chroma_width(2) == 1 and w % 2) or (fmt.chroma_height(2) == 1 and h % 2):
                raise ValueError(f"{pix_fmt} needs even sizes, got {w}x{h}")
            vopts = dict(options or {})
            if vcodec == "libx264":
                vopts.setdefault("x264-params", _X264_PARAMS)
            if interlaced:
                vopts["flags"] = "+ildct+ilme"
            vstream = out.add_stream(vcodec, rate=rate, options=vopts)
            cc = vstream.codec_context
            cc.width, cc.height, cc.pix_fmt = w, h, pix_fmt
            cc.time_base = tb
            cc.framerate = rate
            cc.thread_count = 1
            for kind, value in tags.items():
                setattr(cc, kind, value)
            vstream.time_base = tb
            if sar is not None:
                cc.sample_aspect_ratio = Fraction(sar)
            if display_matrix is not None:
                vstream.set_display_matrix(list(display_matrix))
        astream = _add_audio(out, audio, sample_rate, audio_channels) if audio else None
        sstream = None
        if subtitles:
            scodec = _subtitle_codec(out.format.name)
            if scodec == "subrip":  # plain text payloads, no encoder needed
                sstream = out.add_mux_stream("subrip")
            else:  # mov_text / webvtt need their encoder (and an ASS header to parse from)
                sstream = out.add_stream(scodec)
                sstream.codec_context.subtitle_header = _ASS_HEADER.encode()
            sstream.time_base = Fraction(1, 1000)
        if chapters and frames:
            half = duration_s / 2
            out.set_chapters([
                {"id": 1, "start": 0, "end": round(half * 1000), "time_base": Fraction(1, 1000),
                 "metadata": {"title": "Intro"}},
                {"id": 2, "start": round(half * 1000), "end": round(duration_s * 1000),
                 "time_base": Fraction(1, 1000), "metadata": {"title": "Close-up"}},
            ])
        out.start_encoding()

        pending: list[av.Packet] = []
        if vstream is not None:
            if rgb is None and interlaced:
                rgb = _woven(camera_frames(photo, size, 2 * frames, moves), interlaced)
            elif rgb is None:
                rgb = camera_frames(photo, size, frames, moves)
            fields = _field_flagger(size, pix_fmt, tb, interlaced) if interlaced else None
            for i in range(frames):
                frame = _to_frame(rgb[i], pix_fmt, tags)
                if fields is not None:
                    frame = fields(frame)
                frame.pts, frame.time_base = pts[i], tb
                pending += vstream.encode(frame)
            pending += vstream.encode(None)
        if astream is not None:
            pcm = synth_audio(duration_s if audio_seconds is None else audio_seconds,
                              sample_rate, audio_channels)
            layout = astream.codec_context.layout.name
            for start in range(0, pcm.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start:start + 1024]),
                                                format="fltp", layout=layout)
                af.sample_rate = sample_rate
                af.pts, af.time_base = start, Fraction(1, sample_rate)
                pending += astream.encode(af)
            pending += astream.encode(None)
        if sstream is not None:
            stb = Fraction(1, 1000)
            for start, end, text in subtitles:
                a, b = round(start * 1000), round(end * 1000)
                if scodec != "subrip":
                    ass = "0,0,Default,,0,0,0,," + text.replace("\n", "\\N")
                    sub = SubtitleSet.create(ass.encode(), 0, b - a, pts=a)
                    pkt = sstream.codec_context.encode_subtitle(sub)
                else:
                    pkt = av.Packet(text.encode())
                    pkt.pts = pkt.dts = a
                    pkt.duration = b - a
                pkt.time_base = stb
                pkt.stream = sstream
                pending.append(pkt)
        out.mux(pending)  # the muxer's interleaver orders them by time
    finally:
        out.close()
    return path


# --------------------------------------------------------------------------------------------
# Named clips


def h264_aac_mp4(dir: str | Path) -> Path:
    """H.264 yuv420p 98x70 (not a multiple of 8), 8 frames at 12 fps, BT.709 limited tags,
    AAC stereo 48 kHz, title/comment metadata and two chapters (MP4 stores them as a text
    track, which reads back as a third, ``data`` stream)."""
    return make_clip(
        Path(dir) / "h264_aac.mp4", vcodec="libx264", pix_fmt="yuv420p", size=(98, 70), frames=8,
        rate=Fraction(12), audio="aac", photo="astronaut",
        colour={"colorspace": "bt709", "color_range": "tv", "color_primaries": "bt709",
                "color_trc": "bt709"},
        options={"crf": "16", "preset": "medium"},
        metadata={"title": "vsr test clip", "comment": "astronaut, NASA (public domain)"},
        chapters=True,
    )


def hevc10_opus_srt_mkv(dir: str | Path) -> Path:
    """HEVC Main 10 (yuv420p10le) 96x64, 8 frames at 10 fps, BT.709 limited tags, Opus stereo,
    and a SubRip stream with the three SUBTITLE_CUES, in Matroska."""
    return make_clip(
        Path(dir) / "hevc10_opus_srt.mkv", vcodec="libx265", pix_fmt="yuv420p10le", size=(96, 64),
        frames=8, rate=Fraction(10), audio="opus", subtitles=SUBTITLE_CUES, photo="chelsea",
        colour={"colorspace": "bt709", "color_range": "tv", "color_primaries": "bt709",
                "color_trc": "bt709"},
        options={"crf": "12", "preset": "fast",
                 "x265-params": "log-level=error:pools=none:frame-threads=1"},
    )


#: Frame-to-frame gaps of ``vfr_mp4`` in 1/30 s units, and the time base of its pts.
VFR_GAPS = [1, 1, 3, 1, 2, 5, 1, 2, 1]
VFR_TIME_BASE = Fraction(1, 90000)


def vfr_pts() -> list[int]:
    """The pts written into ``vfr_mp4`` (1/90000 time base)."""
    return [3000 * g for g in np.concatenate([[0], np.cumsum(VFR_GAPS)]).tolist()]


def vfr_mp4(dir: str | Path) -> Path:
    """H.264 with irregular timestamps: 10 frames, gaps 1,1,3,1,2,5,1,2,1 x 1/30 s, in MP4
    (1/90000 track time base, so the read-back pts equal ``vfr_pts()``)."""
    p = vfr_pts()
    return make_clip(
        Path(dir) / "vfr.mp4", vcodec="libx264", pix_fmt="yuv420p", size=(80, 60), frames=len(p),
        rate=Fraction(30), pts=p, time_base=VFR_TIME_BASE, photo="rocket",
        options={"crf": "18"},
    )


def yuvj420p_mp4(dir: str | Path) -> Path:
    """Full-range BT.601 H.264 (yuvj420p, smpte170m tags), 80x64, 8 frames at 12 fps, no audio."""
    return make_clip(
        Path(dir) / "yuvj420p.mp4", vcodec="libx264", pix_fmt="yuvj420p", size=(80, 64), frames=8,
        rate=Fraction(12), photo="coffee",
        colour={"colorspace": "smpte170m", "color_range": "pc", "color_primaries": "smpte170m",
                "color_trc": "smpte170m"},
        options={"crf": "18"},
    )


def vp9_opus_webm(dir: str | Path) -> Path:
    """VP9 yuv420p 96x64, 8 frames at 12 fps, BT.709 limited tags, Opus stereo, in WebM."""
    return make_clip(
        Path(dir) / "vp9_opus.webm", vcodec="libvpx-vp9", pix_fmt="yuv420p", size=(96, 64),
        frames=8, rate=Fraction(12), audio="opus", photo="rocket",
        colour={"colorspace": "bt709", "color_range": "tv", "color_primaries": "bt709",
                "color_trc": "bt709"},
        options={"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "0"},
    )


#: Frames written into ``truncated_ts`` before the file is cut.
TRUNCATED_FRAMES = 30


def truncated_ts(dir: str | Path) -> Path:
    """H.264 + AAC in MPEG-TS, 30 frames at 24 fps, cut to 60 % of its bytes (mid-packet)."""
    dir = Path(dir)
    full = make_clip(
        dir / "truncated_full.ts", container="mpegts", vcodec="libx264", pix_fmt="yuv420p",
        size=(96, 64), frames=TRUNCATED_FRAMES, rate=Fraction(24), audio="aac", photo="chelsea",
        options={"crf": "18"},
    )
    data = full.read_bytes()
    full.unlink()
    cut = (len(data) * 6 // 10) // 188 * 188 + 101  # 101 bytes into a 188-byte TS packet
    path = dir / "truncated.ts"
    path.write_bytes(data[:cut])
    return path


def audio_only(dir: str | Path) -> Path:
    """AAC stereo only (1 s), in an MP4 named ``.mp4``: no video stream at all."""
    return make_clip(Path(dir) / "audio_only.mp4", vcodec=None, frames=0, audio="aac",
                     audio_seconds=1.0)


def empty_file(dir: str | Path) -> Path:
    """A 0-byte ``.mp4``."""
    path = Path(dir) / "empty.mp4"
    path.write_bytes(b"")
    return path


def text_file(dir: str | Path) -> Path:
    """A ``.mp4`` that is really a text file."""
    path = Path(dir) / "not_a_video.mp4"
    path.write_text("This is not a video.\nJust some text that happens to end in .mp4.\n" * 4)
    return path


def yuv444_odd_mkv(dir: str | Path) -> Path:
    """H.264 High 4:4:4 (yuv444p) at an odd size, 97x71, 6 frames at 12 fps, in Matroska."""
    return make_clip(
        Path(dir) / "yuv444_odd.mkv", vcodec="libx264", pix_fmt="yuv444p", size=(97, 71),
        frames=6, rate=Fraction(12), photo="coffee", options={"crf": "16"},
    )


def colour_bars(size: tuple[int, int] = (64, 48), frames: int = 4, photo: str = "chelsea") -> np.ndarray:
    """Saturated test frames: the top half is the eight 100 % colour bars (white, yellow, cyan,
    green, magenta, red, blue, black), the bottom half a pan over ``photo`` with its saturation
    pushed 2.5x (clipped into the cube, as titles, anime and sports kits are)."""
    w, h = size
    bars = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 1], [0, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float64)
    top = bars[np.minimum(np.arange(w) * 8 // w, 7)][None].repeat(h // 2, axis=0)
    scene = camera_frames(photo, (w, h - h // 2), frames)
    grey = scene.mean(axis=-1, keepdims=True)
    vivid = np.clip(grey + 2.5 * (scene - grey), 0.0, 1.0)
    return np.concatenate([np.repeat(top[None], frames, axis=0), vivid], axis=1)


def saturated_444_mkv(dir: str | Path) -> Path:
    """H.264 High 4:4:4 (yuv444p) 64x48, 4 frames at 12 fps, BT.709 limited tags: colour bars and a
    vividly saturated photo, coded at CRF 26 (coding noise pushes such colours out of the RGB cube)."""
    return make_clip(
        Path(dir) / "saturated_444.mkv", vcodec="libx264", pix_fmt="yuv444p", size=(64, 48), frames=4,
        rate=Fraction(12), rgb=colour_bars((64, 48), 4),
        colour={"colorspace": "bt709", "color_range": "tv", "color_primaries": "bt709", "color_trc": "bt709"},
        options={"crf": "26"},
    )


def rotation_matrix(degrees: int, hflip: bool = False) -> list[int]:
    """FFmpeg's display matrix for a counterclockwise turn by a multiple of 90 degrees (what
    ``av_display_rotation_set(m, -degrees)`` writes), then mirrored left-right when ``hflip``."""
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees % 360]
    m = [cos << 16, -sin << 16, 0, sin << 16, cos << 16, 0, 0, 0, 1 << 30]
    if hflip:
        m[0], m[3], m[6] = -m[0], -m[3], -m[6]
    return m


def phone_mp4(dir: str | Path, degrees: int = 90) -> Path:
    """What phones write: a landscape-coded H.264 stream (80x48) with AAC, and a display matrix
    telling players to turn it ``degrees`` counterclockwise (a portrait 48x80 picture)."""
    return make_clip(
        Path(dir) / f"phone_{degrees}.mp4", vcodec="libx264", pix_fmt="yuv420p", size=(80, 48), frames=6,
        rate=Fraction(30), audio="aac", photo="astronaut", display_matrix=rotation_matrix(degrees),
        options={"crf": "18"},
    )


def anamorphic_mp4(dir: str | Path, sar: Fraction = Fraction(12, 11), size: tuple[int, int] = (88, 72)) -> Path:
    """H.264 with non-square pixels: ``size`` coded, sample aspect ratio ``sar`` (12:11 is PAL
    176x144 shown at 4:3; 32:27 is NTSC DVD 720x480 shown at 16:9), 6 frames at 25 fps."""
    return make_clip(
        Path(dir) / f"anamorphic_{sar.numerator}_{sar.denominator}.mp4", vcodec="libx264", pix_fmt="yuv420p", size=size,
        frames=6, rate=Fraction(25), photo="coffee", sar=sar, options={"crf": "18"},
    )


#: The HDR10 metadata written into ``hdr10_hevc_mkv``: x265's master-display (P3 primaries, D65,
#: 1000 / 0.005 cd/m^2) and max-cll (MaxCLL 1000, MaxFALL 400).
HDR10_MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"
HDR10_MAX_CLL = "1000,400"


def hdr10_hevc_mkv(dir: str | Path, transfer: str = "smpte2084") -> Path:
    """HEVC Main 10, BT.2020 primaries and matrix, PQ transfer (``transfer="arib-std-b67"``: HLG),
    64x48, 6 frames at 24 fps, with HDR10 mastering display and content light level SEI
    (as an HDR10 grade leaves the encoder; HLG clips carry none)."""
    params = "log-level=error:pools=none:frame-threads=1"
    if transfer == "smpte2084":
        params += f":hdr10=1:master-display={HDR10_MASTER_DISPLAY}:max-cll={HDR10_MAX_CLL}"
    return make_clip(
        Path(dir) / f"hdr_{transfer}.mkv", vcodec="libx265", pix_fmt="yuv420p10le", size=(64, 48), frames=6,
        rate=Fraction(24), photo="rocket",
        colour={"colorspace": "bt2020nc", "color_range": "tv", "color_primaries": "bt2020", "color_trc": transfer},
        options={"crf": "18", "preset": "fast", "x265-params": params},
    )


def interlaced_mkv(dir: str | Path, order: str = "tff") -> Path:
    """Interlaced H.264 (``order`` tff/bff), 96x64, 8 frames at 25 fps: a fast pan over the rocket,
    each frame woven from two instants 1/50 s apart, so moving edges comb."""
    return make_clip(
        Path(dir) / f"interlaced_{order}.mkv", vcodec="libx264", pix_fmt="yuv420p", size=(96, 64), frames=8,
        rate=Fraction(25), photo="rocket", moves=[((0.15, 0.55, 0.35), (0.75, 0.55, 0.35))], interlaced=order,
        options={"crf": "16"},
    )


#: Cues of ``trim_mkv``/``trim_mp4``: (start s, end s, text), spread over its 3 s.
TRIM_CUES: list[tuple[float, float, str]] = [
    (0.10, 0.90, "first cue"), (1.20, 1.90, "across the cut"), (2.10, 2.80, "last cue"),
]


def trim_mkv(dir: str | Path) -> Path:
    """H.264 96x64, 36 frames at 12 fps with a keyframe every 12 frames, AAC stereo, SubRip
    TRIM_CUES, in Matroska: a short film to cut previews from."""
    return make_clip(
        Path(dir) / "trim.mkv", vcodec="libx264", pix_fmt="yuv420p", size=(96, 64), frames=36, rate=Fraction(12),
        audio="aac", subtitles=TRIM_CUES, photo=["chelsea", "rocket"], options={"crf": "20", "g": "12"},
    )


# --------------------------------------------------------------------------------------------
# Read-back helpers


def decode_frames(path: str | Path) -> list[av.VideoFrame]:
    """Every decoded frame of the first video stream (empty if there is none)."""
    with av.open(str(path)) as c:
        if not c.streams.video:
            return []
        return list(c.decode(video=0))


def video_pts(path: str | Path) -> list[int]:
    """The pts of every decoded frame of the first video stream, in its time base."""
    return [f.pts for f in decode_frames(path)]


def packets(path: str | Path, kind: str = "audio") -> list[tuple[int | None, int | None, bytes]]:
    """(pts, dts, payload) of every non-empty packet of the first ``kind`` stream
    (``"video"``, ``"audio"``, ``"subtitle"`` or ``"data"``), in file order."""
    attr = {"subtitle": "subtitles", "subtitles": "subtitles"}.get(kind, kind)
    with av.open(str(path)) as c:
        streams = getattr(c.streams, attr)
        if not streams:
            return []
        return [(p.pts, p.dts, bytes(p)) for p in c.demux(streams[0]) if p.size]


def planes(frame: av.VideoFrame, *, tensors: bool = False) -> list[np.ndarray] | list[torch.Tensor]:
    """Each plane as a numpy array without the line padding: (h, w) uint8, or uint16 for
    formats deeper than 8 bits; planes holding several components (nv12's UV, rgb24) come
    back as (h, w, n).

    ``tensors``: torch tensors instead, samples deeper than 8 bits widened to int32 (the codes
    :mod:`vsr.kernels` take; torch has little uint16 arithmetic).
    """
    fmt = frame.format
    out = []
    for i, plane in enumerate(frame.planes):
        comps = [c for c in fmt.components if c.plane == i]
        n = len(comps)
        dtype = np.dtype("<u2" if max(c.bits for c in comps) > 8 else "u1")
        if fmt.is_big_endian:
            dtype = dtype.newbyteorder(">")
        rows = np.frombuffer(memoryview(plane), dtype=np.uint8)
        rows = rows[: plane.line_size * plane.height].reshape(plane.height, plane.line_size)
        arr = rows[:, : plane.width * n * dtype.itemsize].copy().view(dtype)
        out.append(arr if n == 1 else arr.reshape(plane.height, plane.width, n))
    if tensors:
        return [torch.from_numpy(a if a.dtype.itemsize == 1 else a.astype(np.int32)) for a in out]
    return out


# --------------------------------------------------------------------------------------------
# Repeated pictures (--dedup): animation drawn on twos and threes, a slideshow, live action


def animation_frames(size: tuple[int, int] = (96, 64)) -> tuple[np.ndarray, list[int]]:
    """Float RGB frames of a 24 fps "animation" made of real photographs, and each frame's drawing
    number (equal numbers: the same picture, so a frame whose number equals the one before repeats it).

    In order: 6 drawings held on twos, 4 on threes (each a different crop of a photograph), a slow
    pan on twos (a new camera position every second frame, 1.5 % of the width), a fade to black on
    twos over a held drawing, and a held drawing whose "eye" (a small patch, 1/16 of the width)
    blinks on and off every second frame: the one change a whole-frame comparison misses.
    """
    w, h = size
    aspect = w / h
    frames: list[np.ndarray] = []
    ids: list[int] = []

    def drawing(photo: str, cx: float, cy: float, wf: float) -> np.ndarray:
        img = _photo(photo)
        return _render(img, *_window(img.shape[0], img.shape[1], aspect, cx, cy, wf), size)

    def hold(picture: np.ndarray, count: int) -> None:
        ident = len(set(ids))
        frames.extend([picture] * count)
        ids.extend([ident] * count)

    shots = [("astronaut", 0.45, 0.35), ("chelsea", 0.6, 0.45), ("coffee", 0.5, 0.4), ("rocket", 0.5, 0.5), ("astronaut", 0.55, 0.6), ("chelsea", 0.4, 0.5)]
    for photo, cx, cy in shots:  # on twos
        hold(drawing(photo, cx, cy, 0.5), 2)
    for photo, cx, cy in shots[:4]:  # on threes
        hold(drawing(photo, cy, cx, 0.6), 3)
    for step in range(6):  # a slow pan on twos
        hold(drawing("rocket", 0.3 + 0.015 * step, 0.55, 0.45), 2)
    still = drawing("coffee", 0.5, 0.5, 0.7)
    for step in range(6):  # a fade to black on twos
        hold(still * (1.0 - step / 8), 2)
    eye = drawing("chelsea", 0.63, 0.42, 0.45)
    ew, eh = max(2, w // 16), max(2, h // 16)
    shut = eye.copy()
    shut[h // 3 : h // 3 + eh, w // 2 : w // 2 + ew] = shut[h // 3 : h // 3 + eh, w // 2 : w // 2 + ew].mean(axis=(0, 1)) * 0.3
    for step in range(6):  # the eye blinks every second frame
        hold(shut if step % 2 else eye, 2)
    return np.stack(frames), ids


def slideshow_frames(size: tuple[int, int] = (96, 64), per_slide: int = 12) -> tuple[np.ndarray, list[int]]:
    """Float RGB frames of a slideshow: five photographs, each shown for ``per_slide`` frames
    with hard cuts; and each frame's slide number."""
    photos = ["astronaut", "coffee", "chelsea", "rocket", "astronaut"]
    pictures = [camera_frames(p, size, frames=1, moves=[((0.5, 0.5, 0.9 - 0.2 * (k == 4)),) * 2])[0] for k, p in enumerate(photos)]
    return np.stack([pic for pic in pictures for _ in range(per_slide)]), [k for k in range(len(photos)) for _ in range(per_slide)]


def live_frames(size: tuple[int, int] = (96, 64), frames: int = 48, grain: float = 1.5, seed: int = 0) -> np.ndarray:
    """Float RGB frames of live action: a camera that moves in every frame over three
    photographs (hard cuts between them), with fresh sensor grain (``grain`` 8-bit codes, standard
    deviation) in every frame, as a camera records it."""
    rgb = camera_frames(["rocket", "chelsea", "coffee"], size, frames)
    noise = np.random.default_rng(seed).normal(0.0, grain / 255.0, rgb.shape)
    return np.clip(rgb + noise, 0.0, 1.0)
