"""Pure functions behind keeping what a file says about its pictures: display matrices, sample
aspect ratios, HDR10 metadata, field order, trims and the output plan. Checked against FFmpeg's
own layouts (matrices and side data written and read back by PyAV) where a layout is the point."""

from __future__ import annotations

import struct
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import media
from vsr import color
from vsr.errors import UsageError
from vsr.frame import VideoInfo
from vsr.media import deinterlace, presentation
from vsr.media.decode import frame_side_data
from vsr.media.plan import PictureOptions, plan_video
from vsr.media.trim import Trim, Window, format_time, parse_time, shift_packet


def info(**kw) -> VideoInfo:
    base = dict(
        path=Path("in.mp4"), container="mp4", codec="h264", width=88, height=72, pix_fmt="yuv420p", time_base=Fraction(1, 25),
        rate=Fraction(25), frames_hint=10, duration=0.4, colour=color.resolve(1, 1, 1, 1, pix_fmt="yuv420p", width=88, height=72),
        stream_index=0,
    )
    return VideoInfo(**(base | kw))


# --------------------------------------------------------------------------- display matrix


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
@pytest.mark.parametrize("hflip", [False, True])
def test_orientation_of_every_right_angle_matrix_as_pyav_writes_it(tmp_path, degrees, hflip):
    # The matrix PyAV/FFmpeg write for a turn, read back from a decoded frame's side data.
    path = tmp_path / "m.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 32, 16, "yuv420p"
        if hflip:
            s.set_display_rotation(degrees, hflip=True)
        else:
            s.set_display_rotation(degrees)
        f = av.VideoFrame.from_ndarray(np.zeros((16, 32, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
        f.pts = 0
        out.mux(s.encode(f))
        out.mux(s.encode(None))
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        sides = frame_side_data(frame)
    if degrees == 0 and not hflip:
        assert "DISPLAYMATRIX" not in sides or presentation.parse_display_matrix(sides["DISPLAYMATRIX"]) == presentation.IDENTITY
        return
    matrix = presentation.parse_display_matrix(sides["DISPLAYMATRIX"])
    got = presentation.orientation(matrix)
    assert got == presentation.Orientation(degrees // 90, hflip)
    assert matrix == tuple(media.rotation_matrix(degrees, hflip))


def test_orientation_of_odd_matrices():
    assert presentation.orientation(None).identity
    assert presentation.parse_display_matrix(b"\0" * 35) is None
    thirty = (56756, -32768, 0, 32768, 56756, 0, 0, 0, 1 << 30)  # 30 degrees: keepable, not applicable
    assert not presentation.orientation(thirty).exact
    assert presentation.orientation(tuple(media.rotation_matrix(90))).describe() == "rotated 90 degrees counterclockwise"
    assert presentation.orientation(tuple(media.rotation_matrix(180, True))).describe() == "rotated 180 degrees and mirrored left-right"


def test_sar_helpers():
    assert presentation.normalise_sar(None) == 1
    assert presentation.normalise_sar(Fraction(0, 1)) == 1
    assert presentation.rotated_sar(Fraction(12, 11), presentation.Orientation(1)) == Fraction(11, 12)
    assert presentation.rotated_sar(Fraction(12, 11), presentation.Orientation(2)) == Fraction(12, 11)


# --------------------------------------------------------------------------- HDR10


def _mdcv_bytes(values, has=(1, 1)) -> bytes:
    return struct.pack("<20i2i", *values, *has)


def test_mastering_display_round_trip_to_encoder_strings():
    # FFmpeg's struct: R, G, B, white point (x, y rationals), then min and max luminance.
    raw = _mdcv_bytes([34000, 50000, 16000, 50000, 13250, 50000, 34500, 50000, 7500, 50000, 3000, 50000,
                       15635, 50000, 16450, 50000, 50, 10000, 10000000, 10000])
    m = presentation.parse_mastering_display(raw)
    assert m.red == (Fraction(34000, 50000), Fraction(16000, 50000))
    assert m.max_luminance == 1000 and m.min_luminance == Fraction(1, 200)
    assert m.x265() == media.HDR10_MASTER_DISPLAY
    assert m.svtav1() == "G(0.26500,0.69000)B(0.15000,0.06000)R(0.68000,0.32000)WP(0.31270,0.32900)L(1000.0000,0.0050)"
    assert presentation.parse_mastering_display(_mdcv_bytes([0] * 20, has=(0, 0))) is None
    assert presentation.parse_mastering_display(raw[:40]) is None
    light = presentation.parse_content_light(struct.pack("<2I", 1000, 400))
    hdr = presentation.HdrMetadata(m, light)
    assert presentation.hdr_params("libx265", hdr) == {"master-display": media.HDR10_MASTER_DISPLAY, "max-cll": "1000,400", "hdr10": "1"}
    assert presentation.hdr_params("libx264", hdr) == {"mastering-display": media.HDR10_MASTER_DISPLAY, "cll": "1000,400"}
    assert set(presentation.hdr_params("libsvtav1", hdr)) == {"mastering-display", "content-light"}
    assert presentation.hdr_params("libvpx-vp9", hdr) == {}


def test_merge_params_keeps_what_the_user_set():
    assert presentation.merge_params("log-level=error", {"max-cll": "1,2"}) == "log-level=error:max-cll=1,2"
    assert presentation.merge_params("max-cll=5,6", {"max-cll": "1,2", "hdr10": "1"}) == "max-cll=5,6:hdr10=1"
    assert presentation.merge_params(None, {"a": "1"}) == "a=1"


def test_field_order_names():
    assert presentation.field_order_name(2) == "tt"
    assert presentation.field_order_name(0) == "unknown"
    assert presentation.field_order_name("bb") == "bb"
    assert presentation.interlaced_field_order("tb") and not presentation.interlaced_field_order("progressive")
    assert presentation.top_field_first("tt") and not presentation.top_field_first("bb")


# --------------------------------------------------------------------------- trims


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("1.5", Fraction(3, 2)), (".25", Fraction(1, 4)), ("01:30", 90), ("00:01:00", 60), ("1:02:03.5", Fraction(7447, 2)),
     ("00:00:10.040", Fraction(251, 25))],
)
def test_parse_time(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["-1", "1:60:00", "00:00:61", "ten", "1:2:3:4", ""])
def test_parse_time_refuses(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_trim_window_rules():
    with pytest.raises(UsageError):
        Trim(duration=Fraction(0))
    with pytest.raises(UsageError):
        Trim(frames=0)
    assert not Trim().active
    w = Trim(Fraction(1), Fraction(2), 3).window(Fraction(10))  # a file whose timeline starts at 10 s
    assert w == Window(Fraction(11), Fraction(13), 3)
    assert w.before(Fraction(109, 10)) and not w.before(Fraction(11))
    assert w.past(Fraction(13), 0) and w.past(Fraction(12), 3) and not w.past(Fraction(12), 2)
    # packets: kept when they overlap the range; one straddling the start is kept whole
    assert w.keeps_packet(Fraction(1099, 100), Fraction(2, 100), w.end)
    assert not w.keeps_packet(Fraction(1097, 100), Fraction(2, 100), w.end)
    assert not w.keeps_packet(Fraction(13), Fraction(1, 100), w.end)
    assert w.keeps_packet(Fraction(11), Fraction(0), w.end)
    assert format_time(Fraction(3661, 1) + Fraction(1, 4)) == "01:01:01.250"


def test_shift_packet_audio_keeps_negative_subtitles_clip():
    tb = Fraction(1, 48000)
    assert shift_packet(47000, 47000, 1024, tb, Fraction(1), clip=False) == (-1000, -1000, 1024)
    assert shift_packet(1000, 1000, 700, Fraction(1, 1000), Fraction(3, 2), clip=True) == (0, 0, 200)
    assert shift_packet(2000, None, 500, Fraction(1, 1000), Fraction(3, 2), clip=True) == (500, None, 500)


# --------------------------------------------------------------------------- plans


def test_deinterlace_plans():
    prog = info(field_order="progressive")
    assert deinterlace.plan("auto", "frame", prog) == deinterlace.DeinterlacePlan(lazy=True, rate="frame", deint="interlaced")
    assert deinterlace.plan("auto", "frame", info(field_order="tt", interlaced_frames=True)).enabled
    flagless = deinterlace.plan("auto", "field", info(field_order="bb"))
    assert (flagless.enabled, flagless.deint, flagless.parity, flagless.doubles_rate) == (True, "all", "bff", True)
    assert not deinterlace.plan("off", "frame", info(field_order="tt", interlaced_frames=True)).enabled
    forced = deinterlace.plan("on", "frame", prog)
    assert (forced.enabled, forced.deint, forced.parity) == (True, "all", "tff")
    assert deinterlace.output_time_base(Fraction(1, 25), flagless) == Fraction(1, 50)
    assert deinterlace.output_time_base(Fraction(1, 25), prog and deinterlace.plan("auto", "frame", prog)) == Fraction(1, 25)
    with pytest.raises(UsageError):
        deinterlace.plan("maybe", "frame", prog)


def test_plan_keeps_the_display_matrix_or_turns_the_pixels():
    src = info(width=80, height=48, display_matrix=tuple(media.rotation_matrix(90)))
    kept = plan_video(src, PictureOptions(), scale=4, outscale=None, planar_fmt="yuv420p")
    assert (kept.width, kept.height, kept.display_matrix, kept.orient.identity) == (320, 192, src.display_matrix, True)
    turned = plan_video(src, PictureOptions(auto_rotate=True), scale=4, outscale=None, planar_fmt="yuv420p")
    assert (turned.width, turned.height, turned.display_matrix, turned.orient.quarter_turns) == (192, 320, None, 1)


def test_plan_keeps_the_sample_aspect_ratio_or_squares_the_pixels():
    dvd = info(width=72, height=48, sar=Fraction(32, 27))
    kept = plan_video(dvd, PictureOptions(), scale=4, outscale=None, planar_fmt="yuv420p")
    assert (kept.width, kept.height, kept.sar, kept.resize) == (288, 192, Fraction(32, 27), False)
    square = plan_video(dvd, PictureOptions(square_pixels=True), scale=4, outscale=None, planar_fmt="yuv420p")
    # 288 * 32/27 = 341.3 -> 341, made even for 4:2:0: the display aspect stays 16:9 to a pixel.
    assert (square.width, square.height, square.sar, square.resize) == (342, 192, 1, True)
    pal = plan_video(info(sar=Fraction(12, 11)), PictureOptions(square_pixels=True), scale=2, outscale=None, planar_fmt="yuv444p")
    assert (pal.width, pal.height) == (192, 144)  # 176x144 at 12:11 is 4:3: 192x144
    turned = plan_video(replace(dvd, display_matrix=tuple(media.rotation_matrix(270))), PictureOptions(auto_rotate=True), scale=1, outscale=None, planar_fmt="yuv444p")
    assert (turned.width, turned.height, turned.sar) == (48, 72, Fraction(27, 32))


def test_plan_field_rate_doubles_the_rate_and_halves_the_time_base():
    src = info(field_order="tt", interlaced_frames=True)
    plan = plan_video(src, PictureOptions(deinterlace_rate="field"), scale=4, outscale=None, planar_fmt="yuv420p")
    assert (plan.rate, plan.time_base) == (50, Fraction(1, 50))
    same = plan_video(src, PictureOptions(), scale=4, outscale=None, planar_fmt="yuv420p")
    assert (same.rate, same.time_base) == (25, Fraction(1, 25))


def test_trim_chapters():
    from vsr.media.trim import trim_chapters

    tb = Fraction(1, 1000)
    chapters = [{"id": i, "start": a, "end": b, "time_base": tb, "metadata": {"title": t}}
                for i, (a, b, t) in enumerate([(0, 60000, "one"), (60000, 120000, "two"), (120000, 180000, "three")])]
    got = trim_chapters(chapters, Fraction(50), Fraction(70))
    assert [(c["metadata"]["title"], c["start"], c["end"]) for c in got] == [("one", 0, 10000), ("two", 10000, 20000)]
    assert [c["metadata"]["title"] for c in trim_chapters(chapters, Fraction(130), None)] == ["three"]
