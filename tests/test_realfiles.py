"""Real files come out whole: saturated colours, rotation, non-square pixels, HDR10 metadata,
interlacing and trimmed previews (`vsr run` end to end on clips made from real photographs).

References are independent of vsr's pipeline: FFmpeg's own decode and colour conversion
(swscale through PyAV), FFmpeg's ``idet`` filter, np.rot90, and the input file's own packets.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace

import media
from helpers import leftovers, one_line_error, psnr, run, tiny_srvgg
from vsr import color, models
from vsr.kernels.yuv import yuv_to_rgb
from vsr.media import presentation
from vsr.media.decode import frame_side_data

FAST_MODEL = "realesr-animevideov3"  # a real trained network, 27 ms per 64x64 frame on 2 cores


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("realclips")
    made: dict[tuple, Path] = {}

    def get(name: str, *args) -> Path:
        key = (name, *args)
        if key not in made:
            sub = folder / f"{len(made)}"
            sub.mkdir()
            made[key] = getattr(media, name)(sub, *args)
        return made[key]

    return get


def vsr(capsys, src: Path, dst: Path, *extra) -> str:
    code, err = run(capsys, "run", src, dst, "--progress", "none", *extra)
    assert code == 0, err
    return err


def first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as c:
        return next(c.decode(video=0))


def rgb_by_ffmpeg(path: Path, bits: int = 8) -> list[np.ndarray]:
    """Every frame converted to RGB by FFmpeg's swscale with the stream's own matrix and range
    (clamped to the cube, as swscale does)."""
    out = []
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        cs = {1: Colorspace.ITU709, 9: Colorspace.BT2020}.get(int(v.codec_context.colorspace), Colorspace.ITU601)
        rng = ColorRange.JPEG if int(v.codec_context.color_range) == 2 else ColorRange.MPEG
        for frame in c.decode(v):
            rgb = frame.reformat(format="rgb48le" if bits > 8 else "rgb24", src_colorspace=cs, src_color_range=rng, threads=1)
            out.append(rgb.to_ndarray())
    return out


# --------------------------------------------------------------------------- saturated colours


def test_saturated_444_matches_the_network_on_ffmpeg_decoded_frames(tmp_path, capsys, clips):
    src = clips("saturated_444_mkv")
    out = tmp_path / "sat.mkv"
    vsr(capsys, src, out, "--model", FAST_MODEL, "--encoder-opt", "qp=0")
    model = models.load(FAST_MODEL).eval()

    def network(rgb01: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = model(torch.from_numpy(rgb01).permute(2, 0, 1)[None].float())[0]
        return (y.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()

    # The reference: FFmpeg decodes and converts (so the frames are in the cube), the network runs.
    reference = [network(f.astype(np.float64) / 65535) for f in rgb_by_ffmpeg(src, bits=16)]
    got = rgb_by_ffmpeg(out)
    assert len(got) == len(reference) == 4
    scores = [psnr(g, r) for g, r in zip(got, reference, strict=True)]
    assert min(scores) >= 45, scores

    # The clip is saturated enough for the test to mean something: the network on the exact,
    # unclamped YUV->RGB (what vsr fed it before) is far from the reference.
    unclamped = []
    with av.open(str(src)) as c:
        for frame in c.decode(video=0):
            y, u, v = (torch.from_numpy(p.astype(np.int32))[None] for p in media.planes(frame))
            kr, kb = color.MATRICES["bt709"]
            rgb = yuv_to_rgb(y, u, v, kr=kr, kb=kb, bits=8, full_range=False)[0]
            assert rgb.min() < -0.02 or rgb.max() > 1.02  # outside the cube
            unclamped.append(network(rgb.permute(1, 2, 0).numpy()))
    assert min(psnr(u_, r) for u_, r in zip(unclamped, reference, strict=True)) < min(scores) - 5


@pytest.mark.parametrize("tile", [0, 32])
def test_the_network_only_ever_sees_rgb_in_the_cube(tile):
    from vsr.engines import TorchEngine
    from vsr.upscale import Upscaler

    model = tiny_srvgg(upscale=4)
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append((float(args[0].min()), float(args[0].max()))))
    frames = torch.linspace(-0.4, 1.4, 2 * 3 * 48 * 64).reshape(2, 3, 48, 64)
    Upscaler(TorchEngine(model, device=torch.device("cpu"), dtype=torch.float32), tile=tile, batch=2)(frames)
    assert seen and all(lo >= 0 and hi <= 1 for lo, hi in seen)
    assert frames.min() < 0  # the caller's tensor is not clamped in place


# --------------------------------------------------------------------------- rotation


def _displayed(frame: av.VideoFrame) -> tuple[int, int]:
    """(width, height) as a player shows the frame."""
    matrix = presentation.parse_display_matrix(frame_side_data(frame).get("DISPLAYMATRIX", b""))
    h, w = presentation.apply_orientation_shape(frame.height, frame.width, presentation.orientation(matrix))
    return w, h


@pytest.mark.parametrize("degrees", [90, 270])
def test_phone_rotation_is_kept_or_applied(tmp_path, capsys, clips, degrees):
    src = clips("phone_mp4", degrees)
    assert _displayed(first_frame(src)) == (48, 80)  # a portrait picture coded landscape
    plain, turned = tmp_path / "plain.mp4", tmp_path / "turned.mp4"
    err = vsr(capsys, src, plain, "--model", FAST_MODEL, "--encoder-opt", "qp=0", "-v")
    assert "display matrix kept" in err
    frame = first_frame(plain)
    assert presentation.parse_display_matrix(frame_side_data(frame)["DISPLAYMATRIX"]) == tuple(media.rotation_matrix(degrees))
    assert (frame.width, frame.height) == (320, 192) and _displayed(frame) == (192, 320)
    assert [p[2] for p in media.packets(plain)] == [p[2] for p in media.packets(src)]  # audio kept

    err = vsr(capsys, src, turned, "--model", FAST_MODEL, "--encoder-opt", "qp=0", "--auto-rotate", "-v")
    assert "--auto-rotate: the pixels are rotated" in err
    frame = first_frame(turned)
    assert "DISPLAYMATRIX" not in frame_side_data(frame)
    assert (frame.width, frame.height) == (192, 320)
    # The network ran on the turned frames; a trained SR network is close to rotation-equivariant,
    # so its output is the plain output turned by k quarter turns. Every other turn or mirror of
    # the same shape is a different picture.
    k = degrees // 90
    for got, want in zip(rgb_by_ffmpeg(turned), rgb_by_ffmpeg(plain), strict=True):
        scores = {}
        for turns in range(4):
            for flip in (False, True):
                candidate = np.rot90(want, turns)
                candidate = np.ascontiguousarray(candidate[:, ::-1] if flip else candidate)
                if candidate.shape == got.shape:
                    scores[(turns, flip)] = psnr(got, candidate)
        right = scores.pop((k, False))
        assert right > 27 and max(scores.values()) < right - 12, (right, scores)


# --------------------------------------------------------------------------- aspect ratio


@pytest.mark.parametrize("sar, size, square", [(Fraction(12, 11), (88, 72), (384, 288)), (Fraction(32, 27), (72, 48), (342, 192))])
def test_sample_aspect_ratio_is_kept_or_squared(tmp_path, capsys, clips, fast_model, sar, size, square):
    src = clips("anamorphic_mp4", sar, size)
    with av.open(str(src)) as c:
        assert c.streams.video[0].sample_aspect_ratio == sar
        dar = c.streams.video[0].display_aspect_ratio
    out, sq = tmp_path / "keep.mp4", tmp_path / "square.mp4"
    vsr(capsys, src, out, "--model", fast_model)
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (size[0] * 4, size[1] * 4)
        assert v.sample_aspect_ratio == sar and v.display_aspect_ratio == dar
    vsr(capsys, src, sq, "--model", fast_model, "--square-pixels")
    with av.open(str(sq)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == square
        assert v.sample_aspect_ratio in (None, Fraction(1), Fraction(0))
        assert abs(square[0] / square[1] - float(dar)) < 0.01


# --------------------------------------------------------------------------- HDR10


def _hdr_of(path: Path) -> presentation.HdrMetadata:
    sides = frame_side_data(first_frame(path))
    return presentation.HdrMetadata(
        presentation.parse_mastering_display(sides.get("MASTERING_DISPLAY_METADATA", b"")),
        presentation.parse_content_light(sides.get("CONTENT_LIGHT_LEVEL", b"")),
    )


@pytest.mark.parametrize("codec, ext", [("libx265", ".mkv"), ("libx264", ".mp4")])
def test_hdr10_metadata_reaches_the_output_bitstream(tmp_path, capsys, clips, fast_model, codec, ext):
    src = clips("hdr10_hevc_mkv")
    want = _hdr_of(src)
    assert want.mastering is not None and want.light == presentation.ContentLight(1000, 400)
    out = tmp_path / f"hdr{ext}"
    err = vsr(capsys, src, out, "--model", fast_model, "--codec", codec)
    assert "warning" not in err
    assert _hdr_of(out) == want
    frame = first_frame(out)
    assert (int(frame.color_trc), int(frame.color_primaries), int(frame.colorspace)) == (16, 9, 9)  # PQ, BT.2020
    assert frame.format.name == "yuv420p10le"


def test_hdr10_with_an_encoder_that_cannot_carry_it_warns(tmp_path, capsys, clips, fast_model):
    out = tmp_path / "hdr.webm"
    err = vsr(capsys, clips("hdr10_hevc_mkv"), out, "--model", fast_model)
    assert "cannot write it" in err and "libx265" in err
    assert int(first_frame(out).color_trc) == 16


def test_hlg_keeps_its_transfer(tmp_path, capsys, clips, fast_model):
    out = tmp_path / "hlg.mkv"
    err = vsr(capsys, clips("hdr10_hevc_mkv", "arib-std-b67"), out, "--model", fast_model, "--codec", "libx265")
    assert "warning" not in err
    frame = first_frame(out)
    assert int(frame.color_trc) == 18 and "MASTERING_DISPLAY_METADATA" not in frame_side_data(frame)


# --------------------------------------------------------------------------- interlacing


def idet(path: Path, size: tuple[int, int] = (96, 64)) -> list[str]:
    """FFmpeg's interlace detector on every frame, shrunk to the source size first."""
    verdicts = []
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        graph = av.filter.Graph()
        chain = [graph.add_buffer(template=v), graph.add("scale", f"{size[0]}:{size[1]}:flags=area"), graph.add("idet"), graph.add("buffersink")]
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        graph.configure()

        def drain():
            while True:
                try:
                    verdicts.append(graph.pull().metadata["lavfi.idet.single.current_frame"])
                except (av.error.BlockingIOError, av.error.EOFError):
                    return

        for frame in c.decode(v):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return verdicts


def test_interlaced_source_is_deinterlaced(tmp_path, capsys, clips, fast_model):
    src = clips("interlaced_mkv", "tff")
    assert idet(src) == ["tff"] * 8  # the detector sees the combing of the source
    out = tmp_path / "prog.mkv"
    err = vsr(capsys, src, out, "--model", fast_model, "-v")
    assert "deinterlaced with bwdif" in err
    assert idet(out) == ["progressive"] * 8
    assert media.video_pts(out) == media.video_pts(src)
    with av.open(str(out)) as c:
        assert presentation.field_order_name(c.streams.video[0].codec_context.field_order) == "progressive"


def test_field_rate_doubles_the_frames_at_field_times(tmp_path, capsys, clips, fast_model):
    src = clips("interlaced_mkv", "tff")
    out = tmp_path / "fields.mkv"
    vsr(capsys, src, out, "--model", fast_model, "--deinterlace-rate", "field")
    times_in = [Fraction(p) / 1000 for p in media.video_pts(src)]  # Matroska: 1 ms time base
    times_out = [Fraction(p) / 1000 for p in media.video_pts(out)]
    assert times_out == [t + half for t in times_in for half in (0, Fraction(1, 50))]
    verdicts = idet(out)
    # idet judges a frame by its neighbours; the first and last have only one.
    assert verdicts[1:-1] == ["progressive"] * 14


def test_deinterlace_off_warns_and_keeps_the_combing(tmp_path, capsys, clips, fast_model):
    out = tmp_path / "combed.mkv"
    err = vsr(capsys, clips("interlaced_mkv", "tff"), out, "--model", fast_model, "--deinterlace", "off")
    assert "--deinterlace off" in err and "warning" in err
    assert idet(out).count("tff") >= 6


# --------------------------------------------------------------------------- trims


def _times(path: Path, kind: str) -> list[tuple[Fraction, Fraction, bytes]]:
    attr = {"subtitle": "subtitles"}.get(kind, kind)
    with av.open(str(path)) as c:
        stream = getattr(c.streams, attr)[0]
        tb = Fraction(stream.time_base)
        return [(p.pts * tb, (p.duration or 0) * tb, bytes(p)) for p in c.demux(stream) if p.size]


def test_trim_cuts_frames_audio_and_subtitles_in_sync(tmp_path, capsys, clips, fast_model):
    src = clips("trim_mkv")
    full, cut = tmp_path / "full.mkv", tmp_path / "cut.mkv"
    vsr(capsys, src, full, "--model", fast_model, "--encoder-opt", "qp=0")
    vsr(capsys, src, cut, "--model", fast_model, "--encoder-opt", "qp=0", "--start", "1.5", "--duration", "1")
    # Video: the 12 frames from 1.5 s (frame 18, not a keyframe), moved to start at 0.
    pts = media.video_pts(cut)
    assert [Fraction(p, 1000) for p in pts] == [Fraction(round(i * 1000 / 12), 1000) for i in range(12)]
    whole, part = media.decode_frames(full)[18:30], media.decode_frames(cut)
    assert len(part) == 12
    for a, b in zip(whole, part, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(media.planes(a), media.planes(b), strict=True))
    # Audio: a contiguous run of the input's packets, byte for byte, the first straddling 1.5 s.
    audio_in, audio_out = _times(src, "audio"), _times(cut, "audio")
    payloads = [a[2] for a in audio_in]
    first = payloads.index(audio_out[0][2])
    assert [a[2] for a in audio_out] == payloads[first : first + len(audio_out)]
    t0, d0 = audio_in[first][:2]
    assert t0 <= Fraction(3, 2) < t0 + d0  # the kept packet straddles the cut
    assert audio_in[first + len(audio_out)][0] >= Fraction(5, 2) > audio_in[first + len(audio_out) - 1][0]
    shift = audio_out[1][0] - audio_in[first + 1][0]
    assert abs(shift + Fraction(3, 2)) <= Fraction(1, 1000)  # same shift as the video (to the ms of Matroska)
    # Subtitles: the cue on screen at the cut starts at 0; the one starting inside is shifted; payloads kept.
    subs = _times(cut, "subtitle")
    assert [s[2] for s in subs] == [b"across the cut", b"last cue"]
    assert subs[0][:2] == (0, Fraction(4, 10)) and subs[1][0] == Fraction(6, 10)


def test_trim_by_frame_count_and_clock_time(tmp_path, capsys, clips, fast_model):
    src = clips("trim_mkv")
    out = tmp_path / "five.mkv"
    vsr(capsys, src, out, "--model", fast_model, "--start", "00:00:01.25", "--frames", "5")
    assert len(media.video_pts(out)) == 5 and media.video_pts(out)[0] == 0
    tail = tmp_path / "tail.mkv"
    vsr(capsys, src, tail, "--model", fast_model, "--start", "2.9")
    assert len(media.video_pts(tail)) == 1  # frame 35 at 2.917 s


def test_trim_keeps_variable_frame_rate_gaps(tmp_path, capsys, clips, fast_model):
    src = clips("vfr_mp4")
    out = tmp_path / "vfr.mp4"
    vsr(capsys, src, out, "--model", fast_model, "--start", "0.1")
    kept = [p for p in media.vfr_pts() if p >= 9000]
    assert media.video_pts(out) == [p - kept[0] for p in kept]


def test_trim_an_animated_gif(tmp_path, capsys, fast_model):
    gif = tmp_path / "anim.gif"
    frames = media.camera_frames("coffee", (48, 32), 10)
    with av.open(str(gif), "w") as out:
        s = out.add_stream("gif", rate=10)
        s.width, s.height, s.pix_fmt = 48, 32, "rgb8"
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray((rgb * 255).round().astype(np.uint8), format="rgb24").reformat(format="rgb8")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    dst = tmp_path / "anim.mp4"
    vsr(capsys, gif, dst, "--model", fast_model, "--start", "0.3", "--frames", "4")
    assert len(media.video_pts(dst)) == 4 and media.video_pts(dst)[0] == 0


def test_trim_refuses_a_start_past_the_end(tmp_path, capsys, clips, fast_model):
    out = tmp_path / "none.mkv"
    code, err = run(capsys, "run", clips("trim_mkv"), out, "--model", fast_model, "--start", "00:01:00")
    assert code == 2 and "past the end" in one_line_error(err)
    assert not out.exists() and leftovers(tmp_path) == []
    code, err = run(capsys, "run", clips("trim_mkv"), out, "--model", fast_model, "--start", "1:75")
    assert code == 2 and "--start" in one_line_error(err)


def test_video_flags_are_refused_for_images(tmp_path, capsys, fast_model):
    img = Path(__file__).parent.parent / "samples" / "chelsea.png"
    code, err = run(capsys, "run", img, tmp_path / "o.png", "--model", fast_model, "--start", "1", "--deinterlace", "on")
    assert code == 2 and "--start" in one_line_error(err) and "--deinterlace" in err


# --------------------------------------------------------------------------- batches


def _same_video(a: Path, b: Path) -> None:
    assert media.video_pts(a) == media.video_pts(b)
    for x, y in zip(media.decode_frames(a), media.decode_frames(b), strict=True):
        assert all(np.array_equal(p, q) for p, q in zip(media.planes(x), media.planes(y), strict=True))


def test_batch_trims_every_job_and_segments_agree_with_a_single_run(tmp_path, capsys, clips, fast_model):
    src = clips("trim_mkv")
    single = tmp_path / "single.mkv"
    trim = ("--start", "0.5", "--frames", "20", "--encoder-opt", "qp=0")
    vsr(capsys, src, single, "--model", fast_model, *trim)
    # Whole-file jobs of a folder, each cut the same way.
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.mkv", "b.mkv"):
        (folder / name).write_bytes(src.read_bytes())
    code, err = run(capsys, "batch", folder, "--output-dir", tmp_path / "out", "--model", fast_model, "--progress", "none", *trim)
    assert code == 0, err
    for name in ("a.mkv", "b.mkv"):
        _same_video(tmp_path / "out" / name, single)
        assert media.packets(tmp_path / "out" / name) == media.packets(single)
    # Segments of the trimmed range, joined: the frames, timestamps, pixels and audio of the single run.
    code, err = run(capsys, "batch", src, "--output-dir", tmp_path / "seg", "--model", fast_model, "--progress", "none", "--segments", "3", *trim)
    assert code == 0, err
    joined = tmp_path / "seg" / src.name
    _same_video(joined, single)
    assert [p[2] for p in media.packets(joined)] == [p[2] for p in media.packets(single)]
    assert [p[2] for p in media.packets(joined, "subtitle")] == [p[2] for p in media.packets(single, "subtitle")]


def test_batch_segments_of_an_interlaced_source_agree_with_a_single_run(tmp_path, capsys, clips, fast_model):
    src = clips("interlaced_mkv", "tff")
    single = tmp_path / "single.mkv"
    vsr(capsys, src, single, "--model", fast_model, "--encoder-opt", "qp=0")
    code, err = run(capsys, "batch", src, "--output-dir", tmp_path / "seg", "--model", fast_model, "--progress", "none",
                    "--segment-frames", "3", "--encoder-opt", "qp=0")
    assert code == 0, err
    _same_video(tmp_path / "seg" / src.name, single)


@pytest.mark.parametrize("trim", [("--start", "2", "--frames", "100"), ("--start", "1.2", "--duration", "1")])
def test_batch_segments_of_other_trims(tmp_path, capsys, clips, fast_model, trim):
    src = clips("trim_mkv")
    single = tmp_path / "single.mkv"
    vsr(capsys, src, single, "--model", fast_model, "--encoder-opt", "qp=0", *trim)
    code, err = run(capsys, "batch", src, "--output-dir", tmp_path / "seg", "--model", fast_model, "--progress", "none",
                    "--segments", "2", "--encoder-opt", "qp=0", *trim)
    assert code == 0, err
    joined = tmp_path / "seg" / src.name
    _same_video(joined, single)
    audio = [p[2] for p in media.packets(joined)]
    assert audio == [p[2] for p in media.packets(single)] and audio


def test_trim_keeps_the_chapters_of_its_range(tmp_path, capsys, clips, fast_model):
    src = clips("h264_aac_mp4")  # chapters "Intro" 0-1/3 s and "Close-up" 1/3-2/3 s
    out = tmp_path / "ch.mp4"
    vsr(capsys, src, out, "--model", fast_model, "--start", "0.25", "--frames", "3")
    with av.open(str(out)) as c:
        got = [(ch["metadata"]["title"], float(ch["start"] * ch["time_base"]), float(ch["end"] * ch["time_base"])) for ch in c.chapters()]
    assert [g[0] for g in got] == ["Intro", "Close-up"]
    assert got[0][1] == 0 and abs(got[0][2] - 1 / 12) < 2e-3 and abs(got[1][2] - 0.25) < 2e-3
