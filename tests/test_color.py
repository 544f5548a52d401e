"""Colour: the Y'CbCr <-> RGB kernels against swscale and textbook values, and vsr.color's rules.

The YUV frames the kernels are tested on are made by swscale (PyAV's ``reformat``) from real
photographs, so the input does not come from the code under test.
"""

from __future__ import annotations

import functools
import logging

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import Colorspace, ColorRange

from helpers import photo
from media import planes
from vsr import color
from vsr.kernels import quantize, rgb_to_yuv, yuv_to_rgb

SWS_MATRIX = {"bt601": Colorspace.ITU601, "bt709": Colorspace.ITU709, "bt2020": Colorspace.BT2020}
CHROMA = {"420": (2, 2), "422": (1, 2), "444": (1, 1), "440": (2, 1)}


@functools.cache
def images() -> dict[str, np.ndarray]:
    """Two photographs, plus a crop with odd width *and* height (the last chroma block is cut)."""
    coffee = photo("coffee")
    return {
        "astronaut": photo("astronaut"),
        "coffee": coffee,
        "coffee-101x77": np.ascontiguousarray(coffee[150:251, 300:377]),
    }


def swscale_yuv(rgb: np.ndarray, fmt: str, matrix: str, full: bool) -> list[torch.Tensor]:
    # threads=1: this swscale's sliced (threaded) path writes garbage rows at slice boundaries
    # when it outputs more than 8 bits (seen with yuv4xxp10le from rgb24 and from p010le).
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format=fmt,
        dst_colorspace=SWS_MATRIX[matrix],
        dst_color_range=ColorRange.JPEG if full else ColorRange.MPEG,
        threads=1,
    )
    return planes(frame, tensors=True)


def to_rgb(y, u, v, matrix: str, bits: int, full: bool, dtype=torch.float32) -> torch.Tensor:
    kr, kb = color.MATRICES[matrix]
    return yuv_to_rgb(y[None], u[None], v[None], kr=kr, kb=kb, bits=bits, full_range=full, dtype=dtype)


def to_yuv(rgb, matrix: str, bits: int, full: bool, chroma, **kw):
    kr, kb = color.MATRICES[matrix]
    return [p[0] for p in rgb_to_yuv(rgb, kr=kr, kb=kb, bits=bits, full_range=full, chroma=chroma, **kw)]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.to(torch.int64) - b.to(torch.int64)).abs().max())


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("bits", [8, 10])
@pytest.mark.parametrize("layout", ["420", "422", "444"])
def test_round_trip_of_swscale_frames(bits, layout):
    fmt = f"yuv{layout}p" + ("10le" if bits == 10 else "")
    sub = CHROMA[layout]
    for name, rgb8 in images().items():
        for full in (False, True):
            for matrix in SWS_MATRIX:
                case = f"{name} {matrix} {'full' if full else 'limited'}"
                y, u, v = swscale_yuv(rgb8, fmt, matrix, full)
                rgb = to_rgb(y, u, v, matrix, bits, full)
                assert rgb.shape == (1, 3, *y.shape)

                # Without the clamp the chroma resampling and the matrix undo each other exactly.
                exact = to_yuv(rgb, matrix, bits, full, sub, clamp=False)
                for got, want in zip(exact, (y, u, v)):
                    assert got.shape == want.shape, case
                    assert max_diff(got, want) <= 1, case

                # The pipeline's path clamps RGB. Pixels whose chroma block stays inside the RGB
                # cube come back within one code; saturated edges that chroma interpolation pushes
                # outside it move (up to 14 codes at 8 bits here) but are a small minority (at most
                # 0.9% of the pixels at 8 bits, 4.3% on the saturated 10-bit crop).
                back = to_yuv(rgb, matrix, bits, full, sub)
                outside = ((rgb < 0) | (rgb > 1)).any(dim=1, keepdim=True).float()
                block_out = torch.nn.functional.max_pool2d(outside, sub, ceil_mode=True)[0, 0] > 0
                luma_out = block_out.repeat_interleave(sub[0], 0).repeat_interleave(sub[1], 1)
                luma_out = luma_out[: y.shape[0], : y.shape[1]]
                assert max_diff(back[0][~luma_out], y[~luma_out]) <= 1, case
                assert max_diff(back[1][~block_out], u[~block_out]) <= 1, case
                assert max_diff(back[2][~block_out], v[~block_out]) <= 1, case
                off = (back[0].to(torch.int32) - y.to(torch.int32)).abs() > 1
                assert off.float().mean() < 0.05, case


@pytest.mark.parametrize("layout", ["420", "422", "440", "444"])
@pytest.mark.parametrize("bits", [8, 10, 16])
@pytest.mark.parametrize("size", [(37, 53), (36, 54)], ids=["odd", "even"])
def test_random_planes_round_trip_exactly(layout, bits, size):
    # Any codes at all (most are outside the RGB cube): nothing but rounding may differ. Odd and
    # even sides take different chroma averaging code (avg_pool2d; sums of strided halves).
    sub_y, sub_x = CHROMA[layout]
    h, w = size
    gen = torch.Generator().manual_seed(bits)
    top = (1 << bits) - 1
    dtype = torch.uint8 if bits == 8 else torch.int32
    y = torch.randint(0, top + 1, (2, h, w), generator=gen).to(dtype)
    u, v = torch.randint(0, top + 1, (2, 2, -(-h // sub_y), -(-w // sub_x)), generator=gen).to(dtype)
    for full in (False, True):
        kr, kb = color.MATRICES["bt709"]
        rgb = yuv_to_rgb(y, u, v, kr=kr, kb=kb, bits=bits, full_range=full)
        got = rgb_to_yuv(rgb, kr=kr, kb=kb, bits=bits, full_range=full, chroma=(sub_y, sub_x), clamp=False)
        for a, b in zip(got, (y, u, v)):
            assert a.dtype == dtype
            assert max_diff(a, b) == 0


def test_chroma_block_average_matches_avg_pool_on_even_and_odd_sides():
    # The even-side fast path of rgb_to_yuv's chroma average against avg_pool2d's block means.
    from vsr.kernels.yuv import _box_average

    gen = torch.Generator().manual_seed(3)
    for h, w in ((36, 54), (37, 53), (36, 53), (37, 54)):
        x = torch.rand(2, 3, h, w, generator=gen)
        kept = x.clone()
        for sub in ((2, 2), (1, 2), (2, 1)):
            want = torch.nn.functional.avg_pool2d(x, sub, ceil_mode=True)
            got = _box_average(x, *sub)
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6), (h, w, sub)
        assert torch.equal(x, kept)  # the caller's frame is left as it was
    assert _box_average(x, 1, 1) is x


def test_chroma_upsampling_is_linear_and_smooth():
    # A chroma ramp (centre-sited, 8 codes per chroma sample) comes back as the full-resolution
    # ramp, 4 codes per pixel; the edge samples use the one-sided slope; flat chroma stays flat.
    h, w = 4, 16
    y = torch.full((1, h, w), 126, dtype=torch.uint8)
    u = (128 + 8 * torch.arange(8)).expand(1, h, 8).to(torch.uint8)
    v = torch.full((1, h, 8), 128, dtype=torch.uint8)
    rgb = yuv_to_rgb(y, u, v, kr=0.2126, kb=0.0722, bits=8, full_range=False)
    # Cr' = 0 makes R = Y', and B - Y' = 2 (1 - Kb) Cb': read the upsampled Cb codes back.
    cb = (rgb[0, 2] - rgb[0, 0]) / (2 * (1 - 0.0722)) * 224 + 128
    ramp = 126 + 4 * torch.arange(16, dtype=torch.float32)
    assert torch.allclose(cb[:, 2:14], ramp[2:14].expand(h, 12), atol=1e-3)
    assert torch.allclose(cb[:, :2], torch.tensor([127.0, 129.0]).expand(h, 2), atol=1e-3)
    assert torch.allclose(cb[:, 14:], torch.tensor([183.0, 185.0]).expand(h, 2), atol=1e-3)
    flat = yuv_to_rgb(y, v, v, kr=0.2126, kb=0.0722, bits=8, full_range=False)
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat))


# --------------------------------------------------------------------------- against swscale


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("full", [False, True], ids=["limited", "full"])
def test_yuv_to_rgb_matches_the_photo_and_swscale(matrix, full):
    rng = ColorRange.JPEG if full else ColorRange.MPEG
    for name in ("astronaut", "coffee"):
        rgb8 = images()[name]
        frame = av.VideoFrame.from_ndarray(rgb8, format="rgb24").reformat(
            format="yuv444p", dst_colorspace=SWS_MATRIX[matrix], dst_color_range=rng, threads=1
        )
        ours = quantize(to_rgb(*planes(frame, tensors=True), matrix, 8, full), 8)[0].permute(1, 2, 0).numpy()
        theirs = frame.reformat(
            format="rgb24", src_colorspace=SWS_MATRIX[matrix], src_color_range=rng, threads=1
        ).to_ndarray()
        # 8-bit Y'CbCr cannot hold every RGB triple: two codes back to the photo, as swscale does.
        assert np.abs(ours.astype(int) - rgb8).max() <= 2, name
        assert np.abs(ours.astype(int) - theirs).max() <= 1, name


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("fmt", ["yuv444p", "yuv444p10le"])
@pytest.mark.parametrize("full", [False, True], ids=["limited", "full"])
def test_rgb_to_yuv_matches_swscale(matrix, fmt, full):
    bits = 10 if fmt.endswith("10le") else 8
    for name in ("astronaut", "coffee"):
        rgb8 = images()[name]
        want = swscale_yuv(rgb8, fmt, matrix, full)
        rgb = torch.from_numpy(rgb8).permute(2, 0, 1)[None].float() / 255
        got = to_yuv(rgb, matrix, bits, full, (1, 1))
        for a, b in zip(got, want):
            assert max_diff(a, b) <= 1, name
        # Luma rounds the same way nearly everywhere (seen: <= 0.9% differ at 8 bits, 3.4% at 10).
        # swscale's full-range chroma sits half a code low on average, so half its chroma codes
        # differ by one there; only the bound above holds for chroma.
        assert (got[0].to(torch.int32) != want[0]).float().mean() < (0.02 if bits == 8 else 0.05), name


# --------------------------------------------------------------------------- known values


def _one(rgb: tuple[float, float, float], matrix: str, bits: int, full: bool) -> list[int]:
    x = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
    return [int(p) for p in to_yuv(x, matrix, bits, full, (1, 1))]


def test_documented_code_values():
    white, black, grey = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.5, 0.5, 0.5)
    assert _one(white, "bt709", 8, False) == [235, 128, 128]
    assert _one(black, "bt709", 8, False) == [16, 128, 128]
    assert _one(grey, "bt709", 8, False) == [126, 128, 128]  # 16 + 109.5, rounded half up
    assert _one(white, "bt601", 10, False) == [940, 512, 512]
    assert _one(black, "bt2020", 10, False) == [64, 512, 512]
    assert _one(white, "bt709", 16, False) == [235 << 8, 128 << 8, 128 << 8]
    assert _one(white, "bt709", 8, True) == [255, 128, 128]
    assert _one(black, "bt601", 8, True) == [0, 128, 128]
    assert _one(grey, "bt601", 8, True) == [128, 128, 128]
    assert _one(white, "bt2020", 10, True) == [1023, 512, 512]
    # Saturated primaries: the textbook 8-bit values (BT.709 red 63/102/240, BT.601 red 81/90/240).
    assert _one((1.0, 0.0, 0.0), "bt709", 8, False) == [63, 102, 240]
    assert _one((0.0, 1.0, 0.0), "bt709", 8, False) == [173, 42, 26]
    assert _one((0.0, 0.0, 1.0), "bt709", 8, False) == [32, 240, 118]
    assert _one((1.0, 0.0, 0.0), "bt601", 8, False) == [81, 90, 240]


def test_code_values_decode_to_the_rgb_cube():
    def rgb_of(y, u, v, matrix, bits, full):
        t = lambda c: torch.tensor([[[c]]], dtype=torch.int32)  # noqa: E731
        return to_rgb(t(y)[0], t(u)[0], t(v)[0], matrix, bits, full)[0, :, 0, 0].tolist()

    assert rgb_of(235, 128, 128, "bt709", 8, False) == pytest.approx([1, 1, 1], abs=1e-6)
    assert rgb_of(64, 512, 512, "bt2020", 10, False) == pytest.approx([0, 0, 0], abs=1e-6)
    assert rgb_of(1023, 512, 512, "bt601", 10, True) == pytest.approx([1, 1, 1], abs=1e-6)
    assert rgb_of(63, 102, 240, "bt709", 8, False) == pytest.approx([1, 0, 0], abs=0.01)
    # Not clamped: super-white and below-black codes keep their distance from the cube.
    assert rgb_of(254, 128, 128, "bt709", 8, False)[0] > 1.08
    assert rgb_of(1, 128, 128, "bt709", 8, False)[0] < -0.06


# --------------------------------------------------------------------------- API details


def test_output_dtype_and_inputs_left_alone():
    y, u, v = swscale_yuv(images()["coffee-101x77"], "yuv420p10le", "bt709", False)
    ref = to_rgb(y, u, v, "bt709", 10, False)
    for dtype, tol in ((torch.bfloat16, 2**-8), (torch.float16, 2**-10)):
        got = to_rgb(y, u, v, "bt709", 10, False, dtype=dtype)
        assert got.dtype == dtype
        assert (got.float() - ref).abs().max() <= tol * ref.abs().max()
        # Half-precision RGB back to codes: the rounding of the input costs at most a code or so.
        back = to_yuv(got, "bt709", 8, False, (2, 2))
        exact = to_yuv(ref, "bt709", 8, False, (2, 2))
        assert all(max_diff(a, b) <= 1 for a, b in zip(back, exact))
    over = ref * 1.5 - 0.25
    copy = over.clone()
    to_yuv(over, "bt709", 10, False, (2, 2))
    assert torch.equal(over, copy)  # the clamp works on a copy


def test_shape_errors():
    y = torch.zeros(1, 6, 8, dtype=torch.uint8)
    c = torch.zeros(1, 3, 3, dtype=torch.uint8)  # width 3 fits neither 8 nor 4
    with pytest.raises(ValueError, match="width"):
        yuv_to_rgb(y, c, c, kr=0.2126, kb=0.0722, bits=8, full_range=False)
    with pytest.raises(ValueError, match="subsampling"):
        rgb_to_yuv(torch.zeros(1, 3, 4, 4), kr=0.2126, kb=0.0722, bits=8, full_range=False, chroma=(4, 4))


# --------------------------------------------------------------------------- policy: resolve


def test_resolve_untagged_sd_and_hd():
    sd = color.resolve(2, 0, 2, 2, pix_fmt="yuv420p", width=720, height=576)
    assert sd == color.Colour("bt601", False, colorspace=6, color_range=1, primaries=2, transfer=2)
    assert sd.describe() == "bt601 limited"
    assert color.resolve(2, 0, 2, 2, pix_fmt="yuv420p", width=1024, height=576).matrix == "bt601"
    assert color.resolve(2, 0, 2, 2, pix_fmt="yuv420p", width=1025, height=576).matrix == "bt709"
    assert color.resolve(2, 0, 2, 2, pix_fmt="yuv420p", width=720, height=577).matrix == "bt709"
    hd = color.resolve(2, 0, 2, 2, pix_fmt="yuv420p10le", width=1920, height=1080)
    assert (hd.matrix, hd.colorspace, hd.color_range, hd.describe()) == ("bt709", 1, 1, "bt709 limited")


def test_resolve_tags_win_and_are_kept():
    pal = color.resolve(5, 2, 5, 6, pix_fmt="yuv420p", width=1920, height=1080)
    assert (pal.matrix, pal.full_range, pal.colorspace, pal.color_range) == ("bt601", True, 5, 2)
    assert (pal.primaries, pal.transfer) == (5, 6)
    assert color.resolve(6, 1, 6, 6, pix_fmt="yuv420p", width=3840, height=2160).colorspace == 6
    assert color.resolve(7, 1, 7, 7, pix_fmt="yuv420p", width=1920, height=1080).matrix == "smpte240m"
    assert color.resolve(4, 1, 4, 4, pix_fmt="yuv420p", width=320, height=240).matrix == "fcc"
    hdr = color.resolve(9, 1, 9, 16, pix_fmt="yuv420p10le", width=3840, height=2160)
    assert (hdr.matrix, hdr.colorspace, hdr.primaries, hdr.transfer) == ("bt2020", 9, 9, 16)


def test_resolve_bt2020_from_primaries_and_constant_luminance(caplog):
    c = color.resolve(2, 0, 9, 14, pix_fmt="yuv420p10le", width=640, height=360)
    assert (c.matrix, c.colorspace, c.primaries, c.transfer) == ("bt2020", 9, 9, 14)
    with caplog.at_level(logging.WARNING, logger="vsr.color"):
        cl = color.resolve(10, 1, 9, 14, pix_fmt="yuv420p10le", width=3840, height=2160)
    assert (cl.matrix, cl.colorspace) == ("bt2020", 9)  # converted and tagged as NCL
    assert "constant-luminance" in caplog.text


def test_resolve_range_rules():
    assert color.resolve(2, 0, 2, 2, pix_fmt="yuvj420p", width=640, height=480).full_range
    assert color.resolve(2, 0, 2, 2, pix_fmt="yuvj420p", width=640, height=480).color_range == 2
    assert not color.resolve(2, 1, 2, 2, pix_fmt="yuvj420p", width=640, height=480).full_range  # tag wins
    assert color.resolve(2, 2, 2, 2, pix_fmt="yuv420p", width=640, height=480).full_range
    # RGB sources: the range tag describes RGB, not the YUV that vsr writes.
    rgb = color.resolve(0, 2, 1, 13, pix_fmt="gbrp", width=1920, height=1080)
    assert (rgb.matrix, rgb.full_range, rgb.colorspace, rgb.color_range) == ("bt709", False, 1, 1)


def test_for_output_keeps_the_source_colour():
    src = color.resolve(2, 0, 2, 2, pix_fmt="yuv420p", width=720, height=480)
    assert color.for_output(src, "yuv420p") == src  # SD upscaled stays BT.601
    j = color.for_output(src, "yuvj420p")
    assert (j.full_range, j.color_range, j.matrix) == (True, 2, "bt601")


# --------------------------------------------------------------------------- policy: formats


def test_layout():
    L = color.PixelLayout
    assert color.layout("yuv420p") == L("yuv", 8, (2, 2))
    assert color.layout("yuv422p") == L("yuv", 8, (1, 2))
    assert color.layout("yuv444p") == L("yuv", 8, (1, 1))
    assert color.layout("yuv440p") == L("yuv", 8, (2, 1))
    assert color.layout("yuvj420p") == L("yuv", 8, (2, 2), full_range_hint=True)
    assert color.layout("yuvj440p") == L("yuv", 8, (2, 1), full_range_hint=True)
    assert color.layout("yuv420p10le") == L("yuv", 10, (2, 2))
    assert color.layout("yuv422p12le") == L("yuv", 12, (1, 2))
    assert color.layout("yuv444p16le") == L("yuv", 16, (1, 1))
    assert color.layout("yuv420p9le").bits == 9
    assert color.layout("yuv444p14le").bits == 14
    assert color.layout("gray") == L("gray", 8, (1, 1))
    for bits in (10, 12, 16):
        assert color.layout(f"gray{bits}le") == L("gray", bits, (1, 1))
    assert color.layout("gbrp16le") == L("rgb", 16, (1, 1))
    for name in ("nv12", "p010le", "rgb24", "yuva420p", "bayer_rggb8", "yuv420p10be", "yuv411p",
                 "yuv444p10msble", "gray10be", "yuvj420p10le", "grayf32le", "cuda", "no-such-format"):
        assert color.layout(name) is None, name


def test_fallback_format():
    cases = {
        "nv12": "yuv420p", "nv21": "yuv420p", "p010le": "yuv420p10le", "p016le": "yuv420p16le",
        "nv16": "yuv422p", "p210le": "yuv422p10le", "nv24": "yuv444p", "yuyv422": "yuv422p",
        "y210le": "yuv422p10le", "yuva420p": "yuv420p", "yuva444p10le": "yuv444p10le",
        "yuv420p10be": "yuv420p10le", "yuv411p": "yuv444p", "yuv410p": "yuv444p",
        "rgb24": "gbrp", "bgra": "gbrp", "pal8": "gbrp", "bayer_rggb8": "gbrp",
        "rgb48le": "gbrp16le", "x2rgb10le": "gbrp16le", "gbrp10le": "gbrp16le", "bayer_rggb16le": "gbrp16le",
        "ya8": "gray", "ya16le": "gray16le", "monob": "gray", "gray10be": "gray10le",
        "yuv420p": "yuv420p",  # already readable
    }
    for src, want in cases.items():
        assert color.fallback_format(src) == want, src
        assert color.layout(want) is not None
    with pytest.raises(ValueError):
        color.fallback_format("cuda")


def _formats(codec: str) -> list[str]:
    try:
        return [f.name for f in av.codec.Codec(codec, "w").video_formats or []]
    except av.codec.codec.UnknownCodecError:
        pytest.skip(f"this FFmpeg has no {codec} encoder")


def test_output_pix_fmt_with_real_encoders(caplog):
    x264, x265 = _formats("libx264"), _formats("libx265")
    assert color.output_pix_fmt("yuv420p", x264) == "yuv420p"
    assert color.output_pix_fmt("yuvj420p", x264) == "yuv420p"  # full range rides on the tag
    assert color.output_pix_fmt("yuv420p10le", x264) == "yuv420p10le"
    assert color.output_pix_fmt("p010le", x264) == "yuv420p10le"
    assert color.output_pix_fmt("yuv422p10le", x264) == "yuv422p10le"
    assert color.output_pix_fmt("yuv440p", x264) == "yuv444p"  # more chroma, never less
    assert color.output_pix_fmt("gray", x264) == "gray"
    assert color.output_pix_fmt("gray10le", x264) == "gray10le"
    assert color.output_pix_fmt("rgb24", x264) == "yuv444p"
    assert color.output_pix_fmt("yuv420p12le", x265) == "yuv420p12le"
    assert color.output_pix_fmt("yuv420p9le", x265) == "yuv420p10le"  # smallest depth that holds it
    with caplog.at_level(logging.WARNING, logger="vsr.color"):
        assert color.output_pix_fmt("yuv444p12le", x264) == "yuv444p10le"
    assert "loses 2 bits" in caplog.text

    svt = _formats("libsvtav1")
    assert color.output_pix_fmt("yuv420p10le", svt) == "yuv420p10le"
    assert color.output_pix_fmt("gray", svt) == "yuv420p"
    assert color.output_pix_fmt("yuv444p", svt) == "yuv420p"  # nothing better exists

    vp9 = _formats("libvpx-vp9")
    assert color.output_pix_fmt("yuv440p", vp9) == "yuv440p"
    assert color.output_pix_fmt("yuva420p", vp9) == "yuv420p"  # alpha formats are not candidates
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vsr.color"):
        got = color.output_pix_fmt("yuv420p10le", vp9)
    # This libvpx may or may not be built for high bit depth; either way nothing is lost silently.
    assert got == "yuv420p10le" if "yuv420p10le" in vp9 else got == "yuv420p" and "loses 2 bits" in caplog.text

    with pytest.raises(ValueError, match="no YUV format"):
        color.output_pix_fmt("yuv420p", _formats("libx264rgb"))


def test_output_pix_fmt_rules():
    # 4:2:0 without a 4:2:0 format: 4:2:2 (one axis more) before 4:4:4, and both before 4:2:0-less.
    assert color.output_pix_fmt("yuv420p", ["yuv444p", "yuv422p"]) == "yuv422p"
    assert color.output_pix_fmt("yuv420p", ["yuv444p", "gray"]) == "yuv444p"
    assert color.output_pix_fmt("yuv422p", ["yuv420p", "yuv444p10le"]) == "yuv444p10le"
    # Depth: the smallest that holds the source; planar before repacked; yuvj only as a last resort.
    assert color.output_pix_fmt("yuv420p10le", ["yuv420p16le", "yuv420p12le"]) == "yuv420p12le"
    assert color.output_pix_fmt("yuv420p10le", ["yuv420p", "nv12", "p010le", "yuv444p16le"]) == "p010le"
    assert color.output_pix_fmt("yuv420p", ["nv12", "yuv420p"]) == "yuv420p"
    assert color.output_pix_fmt("yuv420p", ["yuvj420p", "yuv420p"]) == "yuv420p"
    assert color.output_pix_fmt("yuv420p", ["yuvj420p"]) == "yuvj420p"
    assert color.output_pix_fmt("gray12le", ["yuv420p", "yuv420p12le"]) == "yuv420p12le"
