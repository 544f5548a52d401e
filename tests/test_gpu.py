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
