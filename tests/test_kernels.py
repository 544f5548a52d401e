"""The plain-torch kernels: integer <-> float conversion and tile blending."""

from __future__ import annotations

import numpy as np
import torch

from vsr.kernels import accumulate_tiles, extract_tiles, quantize, to_float
from vsr.kernels.convert import max_value


def test_every_code_round_trips():
    for bits, dtype in ((8, torch.uint8), (16, torch.int32)):
        codes = torch.arange(max_value(bits) + 1, dtype=dtype)
        assert torch.equal(quantize(to_float(codes, bits), bits).to(dtype), codes)


def test_quantize_rounds_half_up_and_clamps():
    x = torch.tensor([-0.3, 0.0, 0.5 / 255, 1.49 / 255, 1.5 / 255, 1.0, 1.7, float("inf")])
    assert quantize(x, 8).tolist() == [0, 0, 1, 1, 2, 255, 255, 255]
    assert quantize(torch.tensor([1.0, 32767.5 / 65535]), 16).tolist() == [65535, 32768]


def test_fp16_frames_keep_16_bit_codes():
    # fp16 cannot hold 65535; quantize must compute in float32.
    codes = torch.tensor([0, 1000, 40000, 65535], dtype=torch.int32)
    back = quantize(to_float(codes, 16, torch.bfloat16), 16)
    assert (back - codes).abs().max() <= 65535 / 256  # bf16 has 8 bits of mantissa
    assert quantize(to_float(codes, 16), 16).tolist() == codes.tolist()


def test_extract_and_accumulate():
    frames = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)
    origins = [(0, 0, 0), (1, 2, 4)]
    tiles = extract_tiles(frames, origins, 4, 4)
    assert torch.equal(tiles[1], frames[1, :, 2:6, 4:8])
    out = torch.zeros(2, 3, 6, 8)
    half = torch.full((4, 4), 0.5)
    accumulate_tiles(out, tiles, origins, [half, half])
    accumulate_tiles(out, tiles, origins, [half, half])
    assert torch.equal(out[1, :, 2:6, 4:8], frames[1, :, 2:6, 4:8])
    assert torch.count_nonzero(out[0, :, 4:, :]) == 0
    assert np.isclose(out.sum().item(), tiles.sum().item())
