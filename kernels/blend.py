"""Cutting tiles out of frames and blending tile outputs back together."""

from __future__ import annotations

import torch


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
