"""Cutting tiles out of frames and blending tile outputs back together."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def pad_bottom_right(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """``x`` (..., H, W) grown by ``pad_h`` rows at the bottom and ``pad_w`` columns at the right:
    mirrored (reflect) where the frame is larger than the pad, the edge repeated otherwise
    (reflection cannot reach further than the frame)."""
    if not (pad_h or pad_w):
        return x
    height, width = x.shape[-2:]
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def extract_tiles(frames: torch.Tensor, origins: list[tuple[int, int, int]], tile_h: int, tile_w: int) -> torch.Tensor:
    """Stack tiles ``frames[n, :, y:y+tile_h, x:x+tile_w]`` for each ``(n, y, x)`` in ``origins``."""
    return torch.stack([frames[n, :, y : y + tile_h, x : x + tile_w] for n, y, x in origins])


def accumulate_tiles(
    out: torch.Tensor,
    tiles: torch.Tensor,
    origins: list[tuple[int, int, int]],
    weights: list[torch.Tensor],
) -> None:
    """Add ``weights[i] * tiles[i]`` into ``out[n, :, Y:Y+h, X:X+w]`` for origins ``(n, Y, X)`` in output pixels.

    ``weights[i]`` is an ``(h, w)`` map. With weights that sum to one at every pixel (see
    :func:`vsr.tiling.blend_weights`) the accumulated frame needs no normalisation afterwards.
    """
    h, w = tiles.shape[-2:]
    for tile, (n, y, x), weight in zip(tiles, origins, weights):
        out[n, :, y : y + h, x : x + w].addcmul_(tile.to(out.dtype), weight)
