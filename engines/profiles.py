"""Engine input shapes for video: whole padded frames in batches when they fit in memory, tiles only
when they do not.

Pure arithmetic on (frame size, batch, memory budget, the model's activation estimate). The
Upscaler asks :func:`plan_frames` whether a frame goes through the network whole or in tiles
(``--tile 0``), and a TensorRT engine for video is built with :func:`call_profile` of exactly the
shape the Upscaler then sends: a 960x540 frame with ``--batch 4`` is one engine call of
``(4, 3, 540, 960)`` per four frames on a GPU with the memory for it, where a fixed 256x256 tile
profile would run twelve overlapping tiles per frame (1.52x the frame's pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Shape = tuple[int, int, int, int]

# Smallest tile side the planner and the out-of-memory fallback go down to.
MIN_TILE = 32
# Tile sides are multiples of this (or of the model's multiple_of when larger).
TILE_STEP = 8
# Activation elements per input pixel assumed for a model whose spec gives no estimate.
DEFAULT_ACTIVATION_PER_PIXEL = 1024.0


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
