"""Running fixed-shape engines on what a tiler sends: input checks, padding, batch groups.

A fixed-shape engine (an ONNX export with ``--tile H W --batch B``, an OpenVINO model reshaped
for an NPU) takes exactly ``(B, C, H, W)``. The tiler plans tiles of that size, but it also sends
any number of tiles and, for a frame smaller than the tile, smaller ones. :func:`run_fixed` makes
both work: tiles run ``B`` at a time (the last group zero-padded, exact because batch items are
independent), a smaller tile is padded bottom/right (:func:`vsr.kernels.pad_bottom_right`, as the Upscaler pads frames)
and the output cropped. Larger tiles are a ``ValueError``. Shared by every backend with fixed
shapes, so they behave the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..kernels import pad_bottom_right
from ..models.spec import ModelSpec


def check_input(x: torch.Tensor, spec: ModelSpec, shape: tuple[int | None, ...], name: str) -> None:
    """Refuse an input a network with ``spec`` and input ``shape`` (None: dynamic dim) cannot take."""
    if x.dim() != 4 or x.shape[1] != spec.in_channels:
        raise ValueError(f"expected (N, {spec.in_channels}, H, W) input, got shape {tuple(x.shape)}")
    height, width = x.shape[2], x.shape[3]
    m = spec.multiple_of
    if height % m or width % m:
        raise ValueError(f"input {width}x{height} is not a multiple of {m}; pad it first (the Upscaler does)")
    fixed_h, fixed_w = shape[2], shape[3]
    if (fixed_h is not None and height > fixed_h) or (fixed_w is not None and width > fixed_w):
        raise ValueError(
            f"{name} was built for {fixed_w}x{fixed_h} tiles and cannot take {width}x{height};"
            f" use tiles of at most that size (engine.fixed_shape) or a dynamic-shape engine"
        )


def run_fixed(x: torch.Tensor, shape: tuple[int | None, ...], scale: int, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``run`` over ``x`` (already checked) for an engine whose input ``shape`` may fix batch, H, W.

    ``run`` gets contiguous inputs of exactly the fixed dims and returns the upscaled batch.
    """
    n, _, height, width = x.shape
    fixed_h, fixed_w = shape[2], shape[3]
    pad_h = fixed_h - height if fixed_h is not None else 0
    pad_w = fixed_w - width if fixed_w is not None else 0
    x = pad_bottom_right(x, pad_h, pad_w)
    group = shape[0] or n
    outs = []
    for start in range(0, n, group):
        chunk = x[start : start + group]
        count = chunk.shape[0]
        if count < group:
            chunk = torch.cat([chunk, chunk.new_zeros((group - count, *chunk.shape[1:]))])
        outs.append(run(chunk.contiguous())[:count])
    y = outs[0] if len(outs) == 1 else torch.cat(outs)
    return y[..., : height * scale, : width * scale] if (pad_h or pad_w) else y
