"""Decoded frames to the network's RGB and back: the colour conversion of every run.

:func:`planes_to_rgb` turns a batch of decoded frames (their planes, pixel format and colour tags)
into float RGB on the compute device; :func:`rgb_to_planes` turns the network's RGB into the planes
of the encoder's pixel format, with the output's matrix and range; :func:`host_frames` splits a
downloaded batch into the per-frame planes the encoder takes. ``vsr run``, ``vsr batch`` segments,
training's video frames and the benchmarks all convert through here (the maths is in
:mod:`vsr.color` and :mod:`vsr.kernels.yuv`).
"""

from __future__ import annotations

import numpy as np
import torch

from . import color
from .frame import Frame
from .media import dali_decode
from .transfer import Transfer


def planes_to_rgb(frames: list[Frame], device: torch.device, transfer: Transfer | None = None) -> torch.Tensor:
    """Decoded planes of a batch of frames (one pixel format and colour) -> float32 RGB
    ``(N, 3, H, W)`` on ``device``, with the matrix and range the frames declare."""
    from .kernels.convert import to_float
    from .kernels.yuv import yuv_to_rgb

    transfer = transfer or Transfer(device)
    if frames[0].pix_fmt in dali_decode.PIX_FMTS:  # DALI: packed RGB (host or CUDA), BT.601-coded
        return dali_decode.frames_to_rgb(frames, device, upload=transfer.upload)
    colour = frames[0].colour
    lay = color.layout(frames[0].pix_fmt)
    planes = [transfer.upload(_stack([f.planes[i] for f in frames], lay.bits)) for i in range(len(frames[0].planes))]
    if lay.family == "rgb":  # gbrp: planes are G, B, R
        g, b, r = planes
        return to_float(torch.stack([r, g, b], dim=1), lay.bits)
    if lay.family == "gray":  # luma with neutral chroma: the matrix drops out, the range stays
        neutral = torch.full_like(planes[0], 1 << (lay.bits - 1))
        planes = [planes[0], neutral, neutral]
    kr, kb = color.MATRICES[colour.matrix]
    return yuv_to_rgb(*planes, kr=kr, kb=kb, bits=lay.bits, full_range=colour.full_range)


def rgb_to_planes(rgb: torch.Tensor, planar_fmt: str, colour: color.Colour) -> list[torch.Tensor]:
    """Float RGB ``(N, 3, H, W)`` -> the planes of ``planar_fmt``, batched, on the same device:
    ``(N, h, w)`` per plane (uint8, or int16 holding uint16 bits), or one ``(N, H, W, 3)`` for
    rgb24/rgb48le."""
    from .kernels.convert import quantize
    from .kernels.yuv import rgb_to_yuv

    if planar_fmt in ("rgb24", "rgb48le"):
        bits = 8 if planar_fmt == "rgb24" else 16
        return [_narrow(quantize(rgb.permute(0, 2, 3, 1), bits), bits)]
    lay = color.layout(planar_fmt)
    kr, kb = color.MATRICES[colour.matrix]
    y, u, v = rgb_to_yuv(rgb, kr=kr, kb=kb, bits=lay.bits, full_range=colour.full_range, chroma=lay.chroma)
    return [_narrow(p, lay.bits) for p in ((y,) if lay.family == "gray" else (y, u, v))]


def host_frames(planes: list[torch.Tensor]) -> list[list[np.ndarray]]:
    """Batched host planes from :func:`rgb_to_planes` -> per frame, numpy planes for the encoder."""
    arrays = [p.numpy() for p in planes]
    arrays = [a.view(np.uint16) if a.dtype == np.int16 else a for a in arrays]
    return [[a[i] for a in arrays] for i in range(arrays[0].shape[0])]


def _narrow(codes: torch.Tensor, bits: int) -> torch.Tensor:
    # Codes above 8 bits travel as int16 (the same 16 bits as uint16, which torch can barely
    # handle): half the bytes of int32 to copy off the device.
    return codes if bits <= 8 else codes.to(torch.int16)


def _stack(planes: list[np.ndarray], bits: int) -> torch.Tensor:
    data = np.stack(planes)
    if data.dtype == np.uint16:
        # torch's uint16 has few ops; 9-15 bit codes fit int16 without a copy, 16-bit needs int32.
        data = data.view(np.int16) if bits < 16 else data.astype(np.int32)
    return torch.from_numpy(data)
