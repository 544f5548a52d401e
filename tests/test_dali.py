"""``--decoder dali``: DALI's frames behind the same contract as the PyAV decode of the same file.

The DALI tests need ``nvidia.dali`` (``pip install "vsr[dali]"``) and skip cleanly without it;
DALI's CPU backend runs without a GPU but reads VP8/VP9/MJPEG only, so the clips here are VP9 in
WebM (scripts/media.py: real photographs, Opus audio, irregular timestamps). Each is decoded by PyAV
(``iter_media``) and by DALI (``iter_media_dali``) and compared: frame count, pts and time base,
the Opus packets, and the pixels as the pipeline sees them (float RGB from ``planes_to_rgb`` vs
``frames_to_rgb``), in PSNR per frame on 8-bit codes. The thresholds sit a little below what was
measured (see each case): DALI's chroma upsampling differs from vsr's, and it clips to 8-bit RGB.

The presentation-order logic (``PtsOrder``) and the input checks need no DALI and always run.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import media
from helpers import psnr
from vsr.errors import BackendUnavailable
from vsr.frame import CopiedPacket
from vsr.media import dali_decode
from vsr.media.dali_decode import (
    PIX_FMT_CUDA,
    PIX_FMT_HOST,
    DaliFrameCountMismatch,
    PtsOrder,
    check_input,
    frames_to_rgb,
    iter_media_dali,
)
from vsr.media.decode import iter_media, open_input
from vsr.planes import planes_to_rgb

VP9 = {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "0"}
VFR_PTS = [0, 1, 2, 5, 6, 8, 13, 14]  # in 1/30 s; WebM stores milliseconds

# name -> (maker, min PSNR per frame in dB). Measured (DALI 2.4 CPU, PyAV 18.1):
#   vp9_opus   BT.709 limited 4:2:0   46.2 .. 48.0   (44 asserted)
#   vfr        untagged (BT.601)      47.9 .. 51.7   (45)
#   bt709_pc   BT.709 full, saturated 40.7 .. 44.1   (38; 32.3 .. 34.1 without the re-matrix)
#   444_bt709  BT.709 limited 4:4:4   53.3 .. 54.0   (50; no chroma upsampling: the matrix alone)
CLIPS = {
    "vp9_opus": (lambda d: media.vp9_opus_webm(d), 44.0),
    "vfr": (lambda d: media.make_clip(
        d / "vfr_vp9.webm", vcodec="libvpx-vp9", size=(96, 64), frames=len(VFR_PTS), rate=Fraction(30),
        pts=VFR_PTS, audio="opus", photo="chelsea", options=VP9), 45.0),
    "bt709_pc": (lambda d: media.make_clip(
        d / "bt709_pc.webm", vcodec="libvpx-vp9", size=(96, 64), frames=4, photo="coffee",
        colour={"colorspace": "bt709", "color_range": "pc"}, options=VP9), 38.0),
    "444_bt709": (lambda d: media.make_clip(
        d / "444_bt709.webm", vcodec="libvpx-vp9", pix_fmt="yuv444p", size=(96, 64), frames=4, photo="coffee",
        colour={"colorspace": "bt709", "color_range": "tv"}, options=VP9), 50.0),
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dali_clips")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = CLIPS[name][0](folder) if name in CLIPS else getattr(media, name)(folder)
        return made[name]

    return get


@pytest.fixture(scope="module")
def dali():
    return pytest.importorskip("nvidia.dali", reason='needs NVIDIA DALI (pip install "vsr[dali]")')


def decode(path: Path, *, dali_device: str | None = None, batch: int = 3) -> tuple[list, list]:
    """(frames, copied packets) of ``path`` with every audio stream copied; PyAV without
    ``dali_device``."""
    container, info = open_input(path)
    try:
        copy = [s.index for s in container.streams if s.type == "audio"]
        if dali_device is None:
            items = list(iter_media(container, info, copy_streams=copy))
        else:
            items = list(iter_media_dali(container, info, copy_streams=copy, device=dali_device, batch=batch))
    finally:
        container.close()
    frames = [x for x in items if not isinstance(x, CopiedPacket)]
    packets = [(x.source_index, x.packet.pts, x.packet.dts, bytes(x.packet)) for x in items if isinstance(x, CopiedPacket)]
    return frames, packets


def codes(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb.clamp(0, 1) * 255).round().cpu()


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """PSNR of each frame of two RGB batches, on their 8-bit codes."""
    return [psnr(x, y) for x, y in zip(codes(a), codes(b), strict=True)]


# --------------------------------------------------------------------------- CPU backend, VP9


@pytest.mark.parametrize("name,batch", [("vp9_opus", 4), ("vfr", 3), ("bt709_pc", 8), ("444_bt709", 3)])
def test_vp9_frames_match_pyav(dali, clip, name, batch):
    path = clip(name)
    ref, ref_packets = decode(path)
    got, got_packets = decode(path, dali_device="cpu", batch=batch)

    assert len(got) == len(ref)
    assert [f.index for f in got] == list(range(len(ref)))
    assert [(f.pts, f.time_base) for f in got] == [(f.pts, f.time_base) for f in ref]
    assert got_packets == ref_packets  # Opus passed through as it is, in file order
    for f in got:
        assert f.pix_fmt == PIX_FMT_HOST and (f.width, f.height) == (96, 64)
        (rgb,) = f.planes
        assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
        assert f.colour == ref[0].colour

    scores = psnr_per_frame(planes_to_rgb(ref, torch.device("cpu")), frames_to_rgb(got, "cpu"))
    assert min(scores) >= CLIPS[name][1], [round(s, 1) for s in scores]


def test_vfr_timestamps_survive(dali, clip):
    frames, _ = decode(clip("vfr"), dali_device="cpu")
    assert [f.pts for f in frames] == [round(p * 1000 / 30) for p in VFR_PTS]
    assert frames[0].time_base == Fraction(1, 1000)


def test_rematrix_is_what_makes_bt709_right(dali, clip):
    """DALI converts with BT.601 whatever the tags say; without the fix a saturated BT.709 clip
    is far off (measured 32-34 dB), with it close (40-44 dB)."""
    path = clip("bt709_pc")
    ref, _ = decode(path)
    got, _ = decode(path, dali_device="cpu")
    raw = torch.from_numpy(np.stack([f.planes[0] for f in got])).permute(0, 3, 1, 2).float() / 255
    want = planes_to_rgb(ref, torch.device("cpu"))
    assert max(psnr_per_frame(want, raw)) < 36.0
    assert min(psnr_per_frame(want, frames_to_rgb(got, "cpu"))) >= 38.0
    assert dali_decode.rematrix("bt601") is None


def test_frame_count_mismatch_is_an_error(dali, clip, monkeypatch):
    path = clip("vp9_opus")
    real = dali_decode._DaliFrames._sequence

    def short(self, out):  # DALI "loses" a frame per run
        return real(self, out)[1:]

    monkeypatch.setattr(dali_decode._DaliFrames, "_sequence", short)
    with pytest.raises(DaliFrameCountMismatch, match=r"DALI decoded \d+ frames, the container holds at least \d+ video packets"):
        decode(path, dali_device="cpu", batch=4)

    def long(self, out):  # DALI "finds" an extra frame
        seq = real(self, out)
        return np.concatenate([seq, seq[-1:]])

    monkeypatch.setattr(dali_decode._DaliFrames, "_sequence", long)
    with pytest.raises(DaliFrameCountMismatch, match="DALI decoded 10 frames, the container holds 8 video packets") as err:
        decode(path, dali_device="cpu", batch=4)
    assert err.value.exit_code == 65 and "\n" not in str(err.value)


def test_h264_on_cpu_is_backend_unavailable(clip):
    container, info = open_input(clip("h264_aac_mp4"))
    with container, pytest.raises(BackendUnavailable) as err:
        next(iter_media_dali(container, info, copy_streams=[], device="cpu"))
    assert str(err.value) == (
        "DALI's CPU decoder reads VP8, VP9 and MJPEG only; this file is h264: use --decoder pyav (default) or a GPU"
    )
    assert err.value.exit_code == 69


# --------------------------------------------------------------------------- without DALI


def test_missing_dali_names_the_extra(clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali -> ImportError
    container, info = open_input(clip("vp9_opus"))
    with container, pytest.raises(BackendUnavailable, match=r'pip install "vsr\[dali\]"') as err:
        next(iter_media_dali(container, info, copy_streams=[]))
    assert err.value.exit_code == 69 and "\n" not in str(err.value)
    assert not dali_decode.available()
    with pytest.raises(BackendUnavailable, match=r'pip install "vsr\[dali\]"'):
        dali_decode.require()


def test_input_checks(clip):
    container, info = open_input(clip("vp9_opus"))
    container.close()
    check_input(info, "cpu")
    check_input(replace(info, codec="h264"), "gpu")
    with pytest.raises(BackendUnavailable, match="10-bit yuv420p10le"):
        check_input(replace(info, pix_fmt="yuv420p10le"), "cpu")
    with pytest.raises(BackendUnavailable, match="4:2:0 video only"):
        check_input(replace(info, codec="hevc", pix_fmt="yuv444p"), "gpu")
    with pytest.raises(BackendUnavailable, match="this file is prores"):
        check_input(replace(info, codec="prores"), "gpu")
    two = replace(info, streams=(*info.streams, replace(info.streams[0], index=9)))
    with pytest.raises(BackendUnavailable, match="DALI chooses the video stream itself"):
        check_input(two, "cpu")


@pytest.mark.parametrize("maker", ["h264_aac_mp4", "vfr_mp4", "hevc10_opus_srt_mkv"])
@pytest.mark.parametrize("with_dts", [True, False])
def test_pts_order_matches_the_decoder_on_reordered_streams(clip, maker, with_dts):
    """B-frames: packets come in decode order; PtsOrder must hand out PyAV's decoded pts, in
    order, and without dts (as Matroska often has none) still within a small window."""
    path = clip(maker)
    with av.open(str(path)) as c:
        packets = [(p.pts, p.dts) for p in c.demux(c.streams.video[0]) if p.size]
    order = PtsOrder(window=32 if with_dts else 3)
    out, lag = [], 0
    for n, (pts, dts) in enumerate(packets, 1):
        out += order.push(pts, dts if with_dts else None)
        lag = max(lag, n - len(out))
    out += order.flush()
    assert out == media.video_pts(path)
    assert lag <= (3 if with_dts else 4)  # frames are released as soon as they are final
    assert order.packets == len(packets) == order.emitted


# --------------------------------------------------------------------------- GPU: NVDEC


@pytest.mark.needs_cuda
def test_nvdec_h264_matches_pyav(dali, clip):
    """DALI ``mixed`` (NVDEC) on H.264 with B-frames and AAC: CUDA frames, PyAV's timestamps."""
    path = clip("h264_aac_mp4")
    ref, ref_packets = decode(path)
    got, got_packets = decode(path, dali_device="gpu", batch=3)
    assert [(f.pts, f.time_base) for f in got] == [(f.pts, f.time_base) for f in ref]
    assert got_packets == ref_packets
    for f in got:
        (rgb,) = f.planes
        assert f.pix_fmt == PIX_FMT_CUDA
        assert isinstance(rgb, torch.Tensor) and rgb.is_cuda and rgb.dtype == torch.uint8
        assert tuple(rgb.shape) == (70, 98, 3)
    device = got[0].planes[0].device
    scores = psnr_per_frame(planes_to_rgb(ref, device), frames_to_rgb(got, device))
    # Not measured yet (no GPU here): NVDEC decodes H.264 exactly, so only DALI's BT.601 kernel,
    # its bilinear chroma and 8-bit rounding differ; expect the mid-40s like the CPU clips.
    assert min(scores) >= 38.0, [round(s, 1) for s in scores]


def test_cli_decoder_dali(dali, clip, tmp_path, capsys):
    """`vsr run --decoder dali` end to end: same frames, timestamps and Opus packets as the source."""
    from helpers import run, tiny_srvgg

    src = clip("vp9_opus_webm")
    model = tmp_path / "tiny.pth"
    torch.save({"params_ema": tiny_srvgg(upscale=2).state_dict()}, model)
    out = tmp_path / "o.webm"
    code, err = run(capsys, "run", src, out, "--model", model, "--decoder", "dali", "--progress", "none")
    assert code == 0, err
    assert media.video_pts(out) == media.video_pts(src)
    assert [p[2] for p in media.packets(out)] == [p[2] for p in media.packets(src)]
    assert media.decode_frames(out)[0].width == 192


def test_cli_decoder_dali_refuses_h264_on_cpu_with_one_line(clip, tmp_path, capsys):
    from helpers import one_line_error, run

    code, err = run(capsys, "run", clip("h264_aac_mp4"), tmp_path / "o.mp4", "--decoder", "dali", "--model", "realesr-animevideov3")
    assert code == 69, err
    assert "VP8, VP9 and MJPEG" in one_line_error(err) or "vsr[dali]" in one_line_error(err)
    assert list(tmp_path.iterdir()) == []


def test_rematrix_is_uploaded_once_per_matrix_and_device():
    cpu = torch.device("cpu")
    weights = dali_decode.rematrix_on("bt709", cpu)
    assert dali_decode.rematrix_on("bt709", cpu) is weights  # no copy per batch
    assert weights.dtype == torch.float32 and np.allclose(weights.numpy(), dali_decode.rematrix("bt709"))
    assert dali_decode.rematrix_on("bt601", cpu) is None
