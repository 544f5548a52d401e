"""Tile geometry, blend weights, and tiled against whole-frame upscaling."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from helpers import LimitedMemoryEngine, crop, psnr, tiny_rrdb
from vsr import tiling
from vsr.engines import TorchEngine
from vsr.errors import TransientError
from vsr.kernels import quantize
from vsr.models.spec import ModelSpec
from vsr.upscale import MIN_TILE, Upscaler, auto_tile, estimate_bytes

CPU = torch.device("cpu")


class NearestUp(nn.Module):
    """A pointwise 'network' (nearest upsampling): tiling must reproduce it exactly."""

    def __init__(self, scale: int, multiple_of: int = 1):
        super().__init__()
        self.scale = scale
        self.spec = ModelSpec(arch="NearestUp", params=(("scale", scale),), scale=scale, in_channels=3, out_channels=3, multiple_of=multiple_of, activation_per_pixel=8.0)

    def forward(self, x):
        return nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")


@pytest.mark.parametrize("length,tile,overlap,mult", [(100, 32, 8, 1), (64, 64, 8, 1), (65, 32, 0, 1), (96, 40, 12, 4), (7, 32, 4, 1), (128, 48, 47, 1)])
def test_axis_positions_cover_the_axis(length, tile, overlap, mult):
    tile = min(tile, length)
    pos = tiling.axis_positions(length, tile, overlap, mult)
    assert pos[0] == 0 and pos[-1] + tile == length
    assert all(p % mult == 0 for p in pos)
    assert all(b > a for a, b in zip(pos, pos[1:]))
    # Neighbours overlap by at least the requested amount and leave no gap.
    assert all(a + tile - b >= min(overlap, tile) for a, b in zip(pos, pos[1:]))


def test_plan_whole_frame_and_validation():
    assert tiling.plan_tiles(40, 60, tile=0, overlap=8, scale=4).whole
    assert tiling.plan_tiles(40, 60, tile=64, overlap=8, scale=4).whole
    plan = tiling.plan_tiles(40, 60, tile=32, overlap=8, scale=4)
    assert (plan.tile_h, plan.tile_w) == (32, 32) and len(plan) == len(plan.ys) * len(plan.xs) > 1
    with pytest.raises(ValueError):
        tiling.plan_tiles(40, 60, tile=32, overlap=32, scale=4)
    with pytest.raises(ValueError):
        tiling.plan_tiles(41, 60, tile=32, overlap=8, scale=2, multiple_of=2)


@pytest.mark.parametrize(
    "height,width,tile,overlap,scale,mult",
    [(100, 130, 32, 8, 4, 1), (64, 64, 32, 16, 2, 2), (37, 200, 24, 6, 1, 1), (90, 90, 40, 30, 4, 1), (48, 52, 16, 0, 3, 4)],
)
def test_blend_weights_sum_to_one_everywhere(height, width, tile, overlap, scale, mult):
    height, width = height + (-height) % mult, width + (-width) % mult
    plan = tiling.plan_tiles(height, width, tile=tile, overlap=overlap, scale=scale, multiple_of=mult)
    wy, wx = tiling.blend_weights(plan)
    total = torch.zeros(height * scale, width * scale, dtype=torch.float64)
    for (i, y), (j, x) in itertools.product(enumerate(plan.ys), enumerate(plan.xs)):
        w = wy[i][:, None].double() * wx[j][None, :].double()
        assert w.min() > 0 and w.max() <= 1 + 1e-6
        total[y * scale : (y + plan.tile_h) * scale, x * scale : (x + plan.tile_w) * scale] += w
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_weights_ramp_smoothly_across_an_overlap():
    w = tiling.axis_weights((0, 24), 32, 56, 1)  # overlap of 8 pixels at [24, 32)
    left, right = w[0, 24:32], w[1, 0:8]
    assert torch.all(left[1:] < left[:-1]) and torch.all(right[1:] > right[:-1])
    assert torch.allclose(left + right, torch.ones(8))
    assert torch.all(w[0, :24] == 1) and torch.all(w[1, 8:] == 1)


@pytest.mark.parametrize("scale,mult,size", [(4, 1, (37, 53)), (2, 2, (41, 30)), (3, 4, (50, 47))])
def test_tiled_pointwise_model_is_exact(scale, mult, size):
    engine = TorchEngine(NearestUp(scale, mult), device=CPU)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    whole = Upscaler(engine, tile=0)(x)
    tiled = Upscaler(engine, tile=16, overlap=4, batch=3)(x)
    assert whole.shape == tiled.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.allclose(whole, tiled, atol=1e-6)


def test_odd_sizes_with_pixel_unshuffle_models():
    # x2 RRDB unshuffles by 2: odd frames are padded, the output cropped back to 2x the input.
    engine = TorchEngine(tiny_rrdb(scale=2), device=CPU)
    x = torch.from_numpy(crop("coffee", 50, 60, 37, 29)).permute(2, 0, 1)[None].float() / 255
    whole = Upscaler(engine, tile=0)(x)
    assert whole.shape == (1, 3, 74, 58)
    tiled = Upscaler(engine, tile=16, overlap=6)(x)
    assert tiled.shape == whole.shape
    assert psnr(quantize(tiled, 8), quantize(whole, 8)) > 35


@pytest.mark.slow
def test_tiled_matches_whole_image_with_the_default_model(x4plus):
    # Issue 2: tiled against whole-image output on a real photo, PSNR >= 40 dB, default overlap.
    engine = TorchEngine(x4plus, device=CPU)
    x = torch.from_numpy(crop("coffee", 100, 200, 96, 128)).permute(2, 0, 1)[None].float() / 255
    whole = quantize(Upscaler(engine, tile=0)(x), 8)
    upscaler = Upscaler(engine, tile=64)
    assert len(tiling.plan_tiles(96, 128, tile=64, overlap=upscaler.overlap, scale=4)) == 6
    tiled = quantize(upscaler(x), 8)
    assert psnr(tiled, whole) >= 40
    # No visible seams: the worst 8-pixel band around the tile borders is still close.
    seam = (tiled.float() - whole.float()).abs()[..., 4 * 48 - 16 : 4 * 48 + 16, :].mean().item()
    assert seam < 1.0


def test_out_of_memory_retries_with_smaller_tiles(caplog):
    inner = TorchEngine(NearestUp(2), device=CPU)
    engine = LimitedMemoryEngine(inner, max_pixels=40 * 40)
    x = torch.rand(1, 3, 100, 120)
    upscaler = Upscaler(engine, tile=0, overlap=4, batch=1)
    out = upscaler(x)
    assert torch.allclose(out, Upscaler(inner)(x), atol=1e-6)
    assert engine.calls[0] == (1, 3, 100, 120)  # tried the whole frame first
    assert "retrying with tile" in caplog.text
    assert upscaler(x).shape == out.shape  # the fitted tile is remembered
    with pytest.raises(TransientError):
        Upscaler(LimitedMemoryEngine(inner, max_pixels=MIN_TILE), tile=0, overlap=4)(x)


def test_auto_tile_uses_the_budget():
    engine = TorchEngine(NearestUp(4), device=CPU)
    need = estimate_bytes(engine.spec.activation_per_pixel, 200 * 300, torch.float32)
    assert auto_tile(200, 300, engine=engine, batch=1, budget=need) == 0
    assert auto_tile(200, 300, engine=engine, batch=4, budget=need, frames=2) > 0  # two frames per call
    assert auto_tile(200, 300, engine=engine, batch=4, budget=2 * need, frames=2) == 0
    side = auto_tile(200, 300, engine=engine, batch=2, budget=need // 10)
    assert MIN_TILE <= side < 200 and side % 8 == 0
    assert estimate_bytes(engine.spec.activation_per_pixel, 2 * side * side, torch.float32) <= need // 10


def test_concurrent_calls_share_the_memory_budget(monkeypatch):
    # Two compute threads calling at once (a CPU video run) each plan with half the share of free
    # memory: a frame that fits one call whole is tiled when two calls run at once.
    from vsr import upscale

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = TorchEngine(tiny_rrdb(), device="cpu")
        need = estimate_bytes(engine.spec.activation_per_pixel, 128 * 128, engine.dtype)
        monkeypatch.setattr(upscale, "free_memory", lambda device: int(need / upscale.MEMORY_SHARE["cpu"] * 1.5))
        up = Upscaler(engine, batch=1)
        assert up._tile_for(128, 128, 1) == 0  # alone: the whole frame
        with up.concurrent() as workers:
            assert workers == 2 and engine.caps.concurrent
            tile = up._tile_for(128, 128, 1)
            assert 0 < tile < 128 and estimate_bytes(engine.spec.activation_per_pixel, tile * tile, engine.dtype) <= need * 1.5 / 2
        assert up._tile_for(128, 128, 1) == 0
    finally:
        torch.set_num_threads(before)
