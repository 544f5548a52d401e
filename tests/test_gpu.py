"""CUDA paths of the torch engine and the tiler. Skipped without a GPU unless VSR_REQUIRE_CUDA=1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import crop, psnr
from vsr.cli import main
from vsr.engines import TorchEngine
from vsr.kernels import quantize
from vsr.media.image import read_image, write_image
from vsr.upscale import Upscaler

pytestmark = pytest.mark.needs_cuda


def _photo_tensor() -> torch.Tensor:
    return torch.from_numpy(crop("astronaut", 100, 180, 64, 96)).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("precision,min_db", [("fp32", 50.0), ("fp16", 40.0), ("bf16", 33.0)])
def test_cuda_engine_matches_the_cpu_fp32_reference(x4plus, precision, min_db):
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    x = _photo_tensor()
    ref = quantize(TorchEngine(x4plus, device=torch.device("cpu"))(x), 8)
    engine = TorchEngine(x4plus, device=torch.device("cuda"), dtype=dtype)
    assert engine.dtype == dtype
    out = quantize(engine(x.cuda()).float(), 8).cpu()
    assert psnr(out, ref) >= min_db


def test_cuda_tiled_matches_whole(x4plus):
    engine = TorchEngine(x4plus, device=torch.device("cuda"), dtype=torch.float16)
    x = _photo_tensor().cuda()
    whole = quantize(Upscaler(engine, tile=0)(x), 8)
    tiled = quantize(Upscaler(engine, tile=32, overlap=8, batch=6)(x), 8)
    assert psnr(tiled.cpu(), whole.cpu()) >= 38


def test_cli_on_cuda(tmp_path, capsys):
    write_image(tmp_path / "i.png", crop("chelsea", 60, 130, 48, 64))
    code = main(["run", str(tmp_path / "i.png"), str(tmp_path / "o.png"), "--device", "cuda:0", "--fp16"])
    assert code == 0, capsys.readouterr().err
    out = read_image(tmp_path / "o.png")
    assert out.shape == (192, 256, 3) and out.dtype == np.uint8


def test_yuv_kernels_on_cuda_match_the_cpu():
    from vsr.kernels.yuv import rgb_to_yuv, yuv_to_rgb

    rgb = _photo_tensor()
    for bits, chroma in ((8, (2, 2)), (10, (2, 2)), (10, (1, 1))):
        planes = rgb_to_yuv(rgb, kr=0.2126, kb=0.0722, bits=bits, full_range=False, chroma=chroma)
        cpu = yuv_to_rgb(*planes, kr=0.2126, kb=0.0722, bits=bits, full_range=False)
        gpu = yuv_to_rgb(*(p.cuda() for p in planes), kr=0.2126, kb=0.0722, bits=bits, full_range=False)
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
        back = rgb_to_yuv(gpu, kr=0.2126, kb=0.0722, bits=bits, full_range=False, chroma=chroma)
        assert all((b.cpu().long() - p.long()).abs().max() <= 1 for b, p in zip(back, planes))


@pytest.mark.parametrize("hwaccel", [False, True])
def test_video_on_cuda(tmp_path, capsys, hwaccel):
    import media

    src = media.h264_aac_mp4(tmp_path)
    argv = ["run", str(src), str(tmp_path / "o.mp4"), "--device", "cuda", "--fp16", "--model", "realesr-animevideov3", "--progress", "none"]
    code = main(argv + (["--hwaccel", "cuda"] if hwaccel else []))
    assert code == 0, capsys.readouterr().err
    assert len(media.decode_frames(tmp_path / "o.mp4")) == 8
    assert [p[2] for p in media.packets(tmp_path / "o.mp4")] == [p[2] for p in media.packets(src)]
