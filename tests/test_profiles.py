"""Engine input shapes for video (vsr.tiling.plan_frames, call_profile), the engines built per input size
(vsr.engines.trt_frames, with real torch engines as the per-size engine), and what the Upscaler
keeps on the device or remembers between calls: blend weights per (plan, device), the tile plan
per input size."""

from __future__ import annotations

import logging

import pytest
import torch

from helpers import photos, psnr, tiny_srvgg
from vsr import tiling, upscale
from vsr.engines import TorchEngine
from vsr.tiling import MIN_TILE, FramePlan, call_profile, estimate_bytes, plan_frames
from vsr.engines.trt_frames import SizedEngines
from vsr.kernels import quantize
from vsr.models import registry
from vsr.upscale import Upscaler, device_blend_weights

CPU = torch.device("cpu")
GiB = 1 << 30


def x4plus_spec():
    with torch.device("meta"):  # the spec only: no weights allocated
        return registry.build("RRDBNet", num_block=23).spec


def plan_960x540(budget: int, batch: int = 4) -> FramePlan:
    spec = x4plus_spec()
    return plan_frames(540, 960, batch=batch, budget=budget, dtype_bytes=2, activation_per_pixel=spec.activation_per_pixel)


def test_a_960x540_frame_in_batches_of_4_is_one_whole_frame_call_per_4_frames():
    plan = plan_960x540(budget=int(80 * GiB * upscale.MEMORY_SHARE["cuda"]))  # an H100's memory
    assert plan.whole and plan.tile == 0
    assert plan.call_shape == (4, 3, 540, 960)
    assert plan.calls(4) == 1 and plan.calls(48) == 12 and plan.calls(50) == 13
    assert call_profile(plan.call_shape) == ((1, 3, 540, 960), (4, 3, 540, 960), (4, 3, 540, 960))


def test_a_frame_too_big_for_memory_goes_in_tiles_that_fit():
    spec = x4plus_spec()
    budget = 4 * GiB
    assert estimate_bytes(spec.activation_per_pixel, 4 * 540 * 960, 2) > budget  # whole frames would not fit
    plan = plan_960x540(budget)
    assert not plan.whole and MIN_TILE <= plan.tile < 540 and plan.tile % 8 == 0
    assert estimate_bytes(spec.activation_per_pixel, 4 * plan.tile**2, 2) <= budget
    assert plan.call_shape == (4, 3, plan.tile, plan.tile)
    tiles = len(tiling.plan_tiles(540, 960, tile=plan.tile, overlap=16, scale=4))
    assert tiles > 1 and plan.calls(4, tiles_per_frame=tiles) == -(-4 * tiles // 4)
    # Fewer frames at hand than the batch: whole frames if those fit.
    one = plan_frames(540, 960, batch=4, budget=budget, dtype_bytes=2, activation_per_pixel=spec.activation_per_pixel, frames=1)
    assert one.whole and one.call_shape == (1, 3, 540, 960)
    # Nothing fits: the smallest tile, never zero.
    assert plan_960x540(budget=1).tile == MIN_TILE


def test_planner_validation_and_multiple_of():
    with pytest.raises(ValueError):
        plan_frames(0, 960, batch=4, budget=GiB, dtype_bytes=2)
    with pytest.raises(ValueError):
        call_profile((0, 3, 64, 64))
    plan = plan_frames(1080, 1920, batch=2, budget=GiB, dtype_bytes=4, activation_per_pixel=5000, multiple_of=12)
    assert plan.tile % 12 == 0 and not plan.whole


def test_upscaler_auto_tile_is_the_planner():
    engine = TorchEngine(tiny_srvgg(), device=CPU)
    for budget in (10**6, 10**8, 10**10):
        expected = plan_frames(200, 300, batch=2, budget=budget, dtype_bytes=4, activation_per_pixel=engine.spec.activation_per_pixel, frames=2)
        assert upscale.auto_tile(200, 300, engine=engine, batch=2, budget=budget, frames=2) == expected.tile


# --------------------------------------------------------------------------- per-size engines


def pan(n: int) -> list[tuple[str, int, int]]:
    """Crop origins of ``n`` frames of a slow pan down the astronaut photograph (9 rows a frame),
    for :func:`helpers.photos`."""
    return [("astronaut", 60 + 9 * i, 100) for i in range(n)]


def test_sized_engines_build_once_per_input_size_under_the_upscaler(caplog):
    model = tiny_srvgg()
    reference = TorchEngine(model, device=CPU)
    built: list[tuple[int, int, int, int]] = []

    def build(shape):
        built.append(shape)
        return TorchEngine(model, device=CPU)

    engine = SizedEngines(build, spec=reference.spec, device=CPU, dtype=torch.float32, batch=4, max_engines=2)
    upscaler = Upscaler(engine, tile=0, batch=4)
    assert upscaler.batch == 4 and engine.caps.limits is None  # no fixed profile to fit frames into
    x = photos(64, 96, pan(4))
    out = upscaler(x)
    assert built == [(4, 3, 64, 96)]  # one whole-frame engine, batch 4, built on first use
    assert torch.allclose(out, Upscaler(reference, tile=0, batch=4)(x), atol=1e-6)
    upscaler(x[:2])  # the clip's shorter last batch: the same engine
    assert built == [(4, 3, 64, 96)]
    with caplog.at_level(logging.WARNING, logger="vsr.engines.trt_frames"):
        Upscaler(engine, tile=0, batch=4)(photos(48, 64, pan(1)))
    assert built[-1] == (4, 3, 48, 64) and "--tile N" in caplog.text
    first = engine.engine_for((1, 3, 64, 96))
    Upscaler(engine, tile=0, batch=4)(photos(40, 40, pan(1)))  # a third size: the least recently used closes
    assert engine.sizes == [(64, 96), (40, 40)]
    assert built.count((4, 3, 48, 64)) == 1
    with pytest.raises(ValueError, match="at most 4"):
        engine(photos(64, 96, pan(5)))
    engine.close()
    assert engine.sizes == []
    with pytest.raises(RuntimeError, match="after close"):
        first(x)


def test_out_of_memory_while_building_frees_the_open_engines_for_the_smaller_tiles():
    model = tiny_srvgg()
    opened: list[TorchEngine] = []

    def build(shape):
        if shape[2] * shape[3] > 48 * 48:  # this "GPU" has room for small inputs only
            raise torch.OutOfMemoryError("out of memory building the engine (test budget)")
        opened.append(TorchEngine(model, device=CPU))
        return opened[-1]

    engine = SizedEngines(build, spec=model.spec, device=CPU, dtype=torch.float32, batch=2)
    engine(photos(32, 32, pan(1)))
    upscaler = Upscaler(engine, tile=0, overlap=4, batch=2)
    out = upscaler(photos(64, 96, pan(2)))  # whole 64x96 frames do not fit: retried with 48x48 tiles
    assert upscaler._fitted_tile == 48 and engine.sizes == [(48, 48)]
    with pytest.raises(RuntimeError, match="after close"):
        opened[0](photos(32, 32, pan(1)))  # the engine that was open when memory ran out was closed
    whole = Upscaler(TorchEngine(model, device=CPU), tile=0)(photos(64, 96, pan(2)))
    assert out.shape == whole.shape and psnr(quantize(out, 8), quantize(whole, 8)) >= 40  # blended tiles


# --------------------------------------------------------------------------- what the Upscaler keeps


def test_blend_weights_are_kept_per_plan_and_device():
    plan = tiling.plan_tiles(96, 128, tile=48, overlap=8, scale=4)
    wy, wx = device_blend_weights(plan, CPU)
    again = device_blend_weights(plan, CPU)
    assert again[0] is wy and again[1] is wx  # same tensors, no copy per call
    host = tiling.blend_weights(plan)
    assert wy is host[0] and wx is host[1]  # on the CPU: the host tensors themselves
    other = device_blend_weights(tiling.plan_tiles(96, 128, tile=64, overlap=8, scale=4), CPU)
    assert other[0] is not wy


def test_tile_plan_is_made_once_per_input_size(monkeypatch):
    engine = TorchEngine(tiny_srvgg(), device=CPU)
    free = iter([10**12, 1])  # plenty, then (after the first batch's activations) almost nothing
    readings: list[int] = []
    monkeypatch.setattr(upscale, "free_memory", lambda device: readings.append(1) or next(free))
    upscaler = Upscaler(engine, tile=0, batch=2)
    x = photos(64, 96, pan(2))
    first = upscaler(x)
    second = upscaler(x)
    assert len(readings) == 1  # not queried again per batch ...
    assert torch.equal(first, second)
    assert upscaler._tile_for(64, 96, 2) == 0  # ... and the plan did not flip to tiles
