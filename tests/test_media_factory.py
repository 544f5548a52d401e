"""The test media read back with PyAV with the properties scripts/media.py promises."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import media
from helpers import psnr

NAMED = [
    "h264_aac_mp4",
    "hevc10_opus_srt_mkv",
    "vfr_mp4",
    "yuvj420p_mp4",
    "vp9_opus_webm",
    "truncated_ts",
    "audio_only",
    "empty_file",
    "text_file",
    "yuv444_odd_mkv",
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {name: getattr(media, name)(d) for name in NAMED}


def kinds(path: Path) -> list[str]:
    with av.open(str(path)) as c:
        return [s.type for s in c.streams]


def audio_rms(path: Path) -> float:
    with av.open(str(path)) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def test_h264_aac_mp4(clips):
    path = clips["h264_aac_mp4"]
    # MP4 keeps chapters as a QuickTime text track: it reads back as a third, data, stream.
    assert kinds(path) == ["video", "audio", "data"]
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, v.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (v.codec_context.width, v.codec_context.height) == (98, 70)
        assert v.average_rate == 12
        assert (a.codec_context.name, a.codec_context.sample_rate) == ("aac", 48000)
        assert a.codec_context.layout.name == "stereo"
        assert c.metadata["title"] == "vsr test clip"
        assert "astronaut" in c.metadata["comment"]
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["Intro", "Close-up"]
    frames = media.decode_frames(path)
    assert len(frames) == 8
    f = frames[0]
    assert (f.colorspace, f.color_range, f.color_primaries, f.color_trc) == (1, 1, 1, 1)
    assert [p.shape for p in media.planes(f)] == [(70, 98), (35, 49), (35, 49)]
    steps = np.diff(media.video_pts(path))
    assert len(set(steps.tolist())) == 1 and steps[0] > 0
    assert len(media.packets(path, "audio")) > 0
    assert audio_rms(path) > 0.02  # a real signal, not silence


def test_frames_are_the_photographs(clips):
    """Decoded back to RGB with the tagged matrix, each frame matches the rendered camera move."""
    frames = media.decode_frames(clips["h264_aac_mp4"])
    ref = np.round(media.camera_frames("astronaut", (98, 70), 8) * 255)
    for f, r in zip(frames, ref):
        assert psnr(f.to_ndarray(format="rgb24"), r) > 30
    # the camera moves: consecutive frames differ
    assert psnr(frames[0].to_ndarray(format="rgb24"), frames[-1].to_ndarray(format="rgb24")) < 20


def test_hevc10_opus_srt_mkv(clips):
    path = clips["hevc10_opus_srt_mkv"]
    assert kinds(path) == ["video", "audio", "subtitle"]
    with av.open(str(path)) as c:
        v, a, s = c.streams
        assert c.format.name.startswith("matroska")
        assert (v.codec_context.name, v.codec_context.pix_fmt) == ("hevc", "yuv420p10le")
        assert (v.codec_context.width, v.codec_context.height) == (96, 64)
        assert (a.codec_context.name, a.codec_context.sample_rate) == ("opus", 48000)
        assert s.codec_context.name in ("subrip", "srt")
        texts = []
        for pkt in c.demux(s):
            for sub in s.decode(pkt):
                texts.append(sub.dialogue.decode())
    assert texts == [t for _, _, t in media.SUBTITLE_CUES]
    subs = media.packets(path, "subtitle")
    assert [p[0] for p in subs] == [round(a * 1000) for a, _, _ in media.SUBTITLE_CUES]
    assert [p[2].decode() for p in subs] == [t for _, _, t in media.SUBTITLE_CUES]
    frames = media.decode_frames(path)
    assert len(frames) == 8
    f = frames[3]
    assert (f.colorspace, f.color_range, f.color_primaries, f.color_trc) == (1, 1, 1, 1)
    y, u, v = media.planes(f)
    assert y.dtype == np.uint16 and y.shape == (64, 96) and u.shape == (32, 48)
    assert 64 <= y.min() and y.max() <= 940  # 10-bit limited range
    assert np.mean(y % 4 != 0) > 0.5  # the two low bits carry information
    assert len(np.unique(y)) > 256
    assert len(media.packets(path, "audio")) > 0


def test_vfr_mp4(clips):
    path = clips["vfr_mp4"]
    assert kinds(path) == ["video"]
    with av.open(str(path)) as c:
        assert c.streams.video[0].time_base == media.VFR_TIME_BASE
    pts = media.video_pts(path)
    assert pts == media.vfr_pts()
    assert len(set(np.diff(pts).tolist())) > 1  # irregular


def test_yuvj420p_mp4(clips):
    path = clips["yuvj420p_mp4"]
    assert kinds(path) == ["video"]
    frames = media.decode_frames(path)
    assert len(frames) == 8
    f = frames[0]
    assert f.format.name in ("yuvj420p", "yuv420p") and f.color_range == 2
    assert f.colorspace in (5, 6)
    assert (f.width, f.height) == (80, 64)
    y = media.planes(f)[0]
    assert y.min() < 16 or y.max() > 235  # really full range


def test_vp9_opus_webm(clips):
    path = clips["vp9_opus_webm"]
    assert kinds(path) == ["video", "audio"]
    with av.open(str(path)) as c:
        assert "webm" in c.format.name
        assert c.streams.video[0].codec_context.name == "vp9"
        assert c.streams.audio[0].codec_context.name == "opus"
    frames = media.decode_frames(path)
    assert len(frames) == 8 and frames[0].format.name == "yuv420p"
    assert (frames[0].width, frames[0].height) == (96, 64)
    assert frames[0].colorspace == 1
    assert len(media.packets(path, "audio")) > 0


def test_truncated_ts(clips):
    path = clips["truncated_ts"]
    assert path.stat().st_size % 188 != 0  # cut inside a TS packet
    assert kinds(path) == ["video", "audio"]
    frames = media.decode_frames(path)  # no exception: the tail is just missing
    assert 0 < len(frames) < media.TRUNCATED_FRAMES
    assert len(media.packets(path, "audio")) > 0


def test_audio_only(clips):
    path = clips["audio_only"]
    assert path.suffix == ".mp4" and kinds(path) == ["audio"]
    assert media.decode_frames(path) == []
    assert len(media.packets(path, "audio")) > 0
    assert audio_rms(path) > 0.02


@pytest.mark.parametrize("name", ["empty_file", "text_file"])
def test_not_media(clips, name):
    path = clips[name]
    assert path.suffix == ".mp4"
    with pytest.raises(av.FFmpegError):
        media.decode_frames(path)


def test_yuv444_odd_mkv(clips):
    path = clips["yuv444_odd_mkv"]
    frames = media.decode_frames(path)
    assert len(frames) == 6
    f = frames[0]
    assert f.format.name == "yuv444p" and (f.width, f.height) == (97, 71)
    assert [p.shape for p in media.planes(f)] == [(71, 97)] * 3


def test_planes_match_to_ndarray(clips):
    f = media.decode_frames(clips["h264_aac_mp4"])[0]
    assert f.planes[0].line_size > f.width  # there is padding to strip
    y, u, v = media.planes(f)
    packed = f.to_ndarray()  # yuv420p: (h * 3 / 2, w), Y then U then V
    assert np.array_equal(packed[:70], y)
    assert np.array_equal(packed[70:].reshape(-1)[: u.size].reshape(u.shape), u)
    rgb = media.planes(f.reformat(format="rgb24"))
    assert len(rgb) == 1 and rgb[0].shape == (70, 98, 3)


def test_odd_size_420_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        media.make_clip(tmp_path / "odd.mp4", size=(97, 71), pix_fmt="yuv420p")


@pytest.mark.parametrize("name", ["h264_aac_mp4", "hevc10_opus_srt_mkv", "vp9_opus_webm"])
def test_deterministic(clips, tmp_path, name):
    again = getattr(media, name)(tmp_path)
    assert again.read_bytes() == clips[name].read_bytes()


def test_make_clip_mov_text_and_mp3(tmp_path):
    """The generic writer: mov_text subtitles in MP4, MP3 audio, two shots, explicit rate."""
    path = media.make_clip(tmp_path / "x.mp4", frames=6, rate=Fraction(25), audio="mp3",
                           subtitles=media.SUBTITLE_CUES[:2], photo=["coffee", "rocket"])
    assert kinds(path) == ["video", "audio", "subtitle"]
    with av.open(str(path)) as c:
        assert c.streams.subtitles[0].codec_context.name == "mov_text"
        assert c.streams.audio[0].codec_context.name.startswith("mp3")
    payloads = [p[2] for p in media.packets(path, "subtitle")]
    assert any(media.SUBTITLE_CUES[0][2].encode() in p for p in payloads)
    assert len(media.decode_frames(path)) == 6
