"""Tile geometry: pure functions of (frame size, tile, overlap, multiple_of, scale).

A frame is covered by equal-sized overlapping tiles (equal sizes keep engine input shapes fixed,
which TensorRT and CUDA graphs want). The last tile on each axis is moved back to end at the frame
edge instead of being padded. Overlaps are blended, not cropped: each tile's output is weighted by
a smooth ramp across every overlap it shares, and the weights are normalised so they sum to exactly
one at every output pixel. Weights are separable (one 1-D ramp per axis), and the normalisation
is done per axis, which is exact because the tiles form a grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one frame size go. All sizes are in input pixels unless named ``out``."""

    height: int  # frame size after padding to multiple_of
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]  # tile origins along each axis
    xs: tuple[int, ...]
    scale: int

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def whole(self) -> bool:
        """True when one tile covers the frame, so no stitching is needed."""
        return len(self) == 1


def pad_to_multiple(height: int, width: int, multiple_of: int) -> tuple[int, int]:
    """Bottom and right padding that makes the frame a multiple of ``multiple_of``."""
    return (-height) % multiple_of, (-width) % multiple_of


def axis_positions(length: int, tile: int, overlap: int, multiple_of: int = 1) -> tuple[int, ...]:
    """Tile origins covering ``[0, length)`` with tiles of ``tile`` overlapping by at least ``overlap``.

    Origins are multiples of ``multiple_of``; the last tile ends exactly at ``length``.
    """
    if tile >= length:
        return (0,)
    step = max(multiple_of, (tile - overlap) // multiple_of * multiple_of)
    positions = list(range(0, length - tile, step))
    positions.append(length - tile)
    return tuple(positions)


def plan_tiles(height: int, width: int, *, tile: int, overlap: int, scale: int, multiple_of: int = 1) -> TilePlan:
    """Plan tiles for a ``height`` x ``width`` frame (already padded to ``multiple_of``).

    ``tile`` <= 0 means one tile for the whole frame. ``tile`` is rounded down to ``multiple_of``.
    """
    if height % multiple_of or width % multiple_of:
        raise ValueError(f"frame {width}x{height} is not padded to a multiple of {multiple_of}")
    if tile <= 0:
        return TilePlan(height, width, height, width, (0,), (0,), scale)
    tile = max(multiple_of, tile // multiple_of * multiple_of)
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"tile overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    th, tw = min(tile, height), min(tile, width)
    return TilePlan(
        height, width, th, tw, axis_positions(height, th, overlap, multiple_of), axis_positions(width, tw, overlap, multiple_of), scale
    )


def _ramp(n: int) -> torch.Tensor:
    """Smooth rise over ``n`` samples, strictly between 0 and 1 (raised cosine at pixel centres)."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.sin(t * (math.pi / 2)) ** 2


def axis_weights(positions: tuple[int, ...], tile: int, length: int, scale: int) -> torch.Tensor:
    """Blend weights along one axis, shape ``(len(positions), tile * scale)``, in output pixels.

    Each tile ramps up across its overlap with the previous tile and down across its overlap with
    the next; the result is normalised so the weights of all tiles sum to one at every pixel.
    """
    out_tile = tile * scale
    starts = [p * scale for p in positions]
    weights = torch.ones(len(positions), out_tile, dtype=torch.float64)
    for k, start in enumerate(starts):
        if k > 0:
            n = starts[k - 1] + out_tile - start
            weights[k, :n] *= _ramp(n)
        if k + 1 < len(starts):
            n = start + out_tile - starts[k + 1]
            weights[k, out_tile - n :] *= _ramp(n).flip(0)
    total = torch.zeros(length * scale, dtype=torch.float64)
    for k, start in enumerate(starts):
        total[start : start + out_tile] += weights[k]
    for k, start in enumerate(starts):
        weights[k] /= total[start : start + out_tile]
    return weights.float()


@lru_cache(maxsize=32)
def blend_weights(plan: TilePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis weights ``(wy, wx)`` for ``plan``; tile ``(i, j)`` gets ``wy[i][:, None] * wx[j]``."""
    return (
        axis_weights(plan.ys, plan.tile_h, plan.height, plan.scale),
        axis_weights(plan.xs, plan.tile_w, plan.width, plan.scale),
    )
