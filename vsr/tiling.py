"""Tile geometry: pure functions of (frame size, tile, overlap, multiple_of, scale).

A frame is covered by equal-sized overlapping tiles (equal sizes keep engine input shapes fixed,
which TensorRT and CUDA graphs want). The last tile on each axis is moved back to end at the frame
edge instead of being padded. Overlaps are blended, not cropped: each tile's output is weighted by
a smooth ramp across every overlap it shares, and the weights are normalised so they sum to exactly
one at every output pixel. Weights are separable (one 1-D ramp per axis), and the normalisation
is done per axis, which is exact because the tiles form a grid.

Whether a frame needs tiles at all is planned here too (:func:`plan_frames`), by pure arithmetic
on (frame size, batch, memory budget, the model's activation estimate): whole padded frames in
batches when they fit in memory, tiles only when they do not. The Upscaler asks it for
``--tile 0``, and a TensorRT engine for video is built with :func:`call_profile` of exactly the
shape the Upscaler then sends: a 960x540 frame with ``--batch 4`` is one engine call of
``(4, 3, 540, 960)`` per four frames on a GPU with the memory for it, where a fixed 256x256 tile
profile would run twelve overlapping tiles per frame (1.52x the frame's pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

# An engine input shape, (N, C, H, W).
Shape = tuple[int, int, int, int]

# Smallest tile side the planner and the out-of-memory fallback go down to.
MIN_TILE = 32
# Tile sides are multiples of this (or of the model's multiple_of when larger).
TILE_STEP = 8
# Activation elements per input pixel assumed for a model whose spec gives no estimate.
DEFAULT_ACTIVATION_PER_PIXEL = 1024.0


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


# --------------------------------------------------------------------------- whole frames or tiles


def estimate_bytes(activation_per_pixel: float, pixels: int, dtype_bytes: int) -> int:
    """Rough peak activation memory of one engine call over ``pixels`` input pixels."""
    return int(activation_per_pixel * pixels * dtype_bytes)


@dataclass(frozen=True)
class FramePlan:
    """How frames of one (padded) size go through the engine."""

    height: int
    width: int
    channels: int
    batch: int  # inputs per engine call: frames when whole, tiles otherwise
    tile: int  # 0: whole frames; else the tile side (a tile never exceeds the frame)

    @property
    def whole(self) -> bool:
        return self.tile == 0

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of one engine input."""
        if self.whole:
            return self.height, self.width
        return min(self.tile, self.height), min(self.tile, self.width)

    @property
    def call_shape(self) -> Shape:
        """The largest engine input, ``(batch, C, H, W)``."""
        return (self.batch, self.channels, *self.input_size)

    def calls(self, frames: int, tiles_per_frame: int = 1) -> int:
        """Engine calls for ``frames`` frames (``tiles_per_frame`` from the tile plan when tiled)."""
        per_frame = 1 if self.whole else tiles_per_frame
        return math.ceil(frames * per_frame / self.batch)


def plan_frames(
    height: int,
    width: int,
    *,
    batch: int,
    budget: int,
    dtype_bytes: int,
    activation_per_pixel: float = 0.0,
    channels: int = 3,
    multiple_of: int = 1,
    frames: int | None = None,
) -> FramePlan:
    """Whole frames or tiles for ``height`` x ``width`` frames (already padded to ``multiple_of``).

    Whole frames when one call of ``min(batch, frames)`` of them (``frames``: how many the caller
    has at once; default ``batch``) fits ``budget`` bytes of activations; else the largest square
    tile, a multiple of ``max(8, multiple_of)`` and at least :data:`MIN_TILE`, for which ``batch``
    tiles fit.
    """
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"batch and frame size must be positive, got batch {batch} and {width}x{height}")
    app = activation_per_pixel or DEFAULT_ACTIVATION_PER_PIXEL
    per_call = min(batch, frames) if frames else batch
    if estimate_bytes(app, per_call * height * width, dtype_bytes) <= budget:
        return FramePlan(height, width, channels, per_call, 0)
    side = math.isqrt(max(1, budget // max(1, estimate_bytes(app, batch, dtype_bytes))))
    step = max(TILE_STEP, multiple_of)
    return FramePlan(height, width, channels, batch, max(MIN_TILE, side // step * step))


def call_profile(shape: Shape) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) of a TensorRT profile for engine inputs of ``shape`` = (N, C, H, W): exactly
    that H and W, tuned for batch N, accepting 1..N (the last call of a clip is shorter)."""
    n, c, h, w = (int(v) for v in shape)
    if min(n, c, h, w) < 1:
        raise ValueError(f"profile shape must be positive, got {shape}")
    return (1, c, h, w), (n, c, h, w), (n, c, h, w)
