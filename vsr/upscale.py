"""Upscaling float frames with an engine: pad, tile, batch, blend, crop, resample.

This is the compute step shared by image and video jobs. It owns no I/O and keeps no frame state
between calls; all it remembers is the tile plan per input size and the tile size that last
fitted in memory. Blend weights live on the device once per tile plan (no copy per call).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

import torch
from torch.nn import functional as F

from . import tiling
from .device import to_device_once
from .engines import Engine
from .errors import TransientError
from .runtime import torch_threads
from .kernels import accumulate_tiles, extract_tiles, pad_bottom_right

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = 16
DEFAULT_BATCH = 4
# LR pixels per engine call on the CPU when --batch is not given. Measured on a 2-core AVX-512 CPU
# (docs/BENCHMARKS.md, "torch on the CPU"): a batch of 32x48 frames costs less per frame than
# single frames, at 64x96 it makes no difference, and from 96x128 up a batch of 2 or 4 costs more
# per frame than one frame (the activations of a batch leave the caches).
CPU_BATCH_PIXELS = 8192
# Smallest tile the out-of-memory fallback will try before giving up.
MIN_TILE = tiling.MIN_TILE
# Share of free memory the automatic tile size may plan to use (activations are estimates).
MEMORY_SHARE = {"cuda": 0.7, "cpu": 0.5}


def free_memory(device: torch.device) -> int:
    """Bytes that can be allocated on ``device`` now (CUDA free memory, or MemAvailable on Linux)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory torch's caching allocator holds but no tensor uses is free for our purposes.
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def estimate_bytes(activation_per_pixel: float, pixels: int, dtype: torch.dtype) -> int:
    """Rough peak activation memory for ``pixels`` input pixels in one engine call."""
    return tiling.estimate_bytes(activation_per_pixel, pixels, dtype.itemsize)


def auto_tile(height: int, width: int, *, engine: Engine, batch: int, budget: int, frames: int = 1) -> int:
    """Tile side for ``--tile 0``: 0 (whole frames) when one engine call of up to ``batch`` of the
    ``frames`` fits ``budget``, else the largest square tile for which ``batch`` tiles fit
    (:func:`vsr.tiling.plan_frames`)."""
    plan = tiling.plan_frames(
        height, width, batch=batch, budget=budget, dtype_bytes=engine.dtype.itemsize,
        activation_per_pixel=engine.spec.activation_per_pixel, channels=engine.spec.in_channels,
        multiple_of=engine.spec.multiple_of, frames=frames,
    )
    return plan.tile


@functools.lru_cache(maxsize=32)
def device_blend_weights(plan: tiling.TilePlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`vsr.tiling.blend_weights` of ``plan`` resident on ``device``: copied there once per
    (plan, device), then the same tensors on every call (on the CPU, the host tensors themselves)."""
    return tuple(to_device_once(w, device) for w in tiling.blend_weights(plan))


def cpu_batch(height: int, width: int, *, most: int = DEFAULT_BATCH, pixels: int = CPU_BATCH_PIXELS) -> int:
    """Inputs of ``height`` x ``width`` per engine call on the CPU when ``--batch`` is not given:
    as many as fit in ``pixels`` LR pixels, from 1 to ``most``."""
    return max(1, min(most, pixels // max(1, height * width)))


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    # The CPU allocator raises a plain RuntimeError.
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


class Upscaler:
    """Upscale batches of float frames ``(N, C, H, W)`` with an :class:`Engine`; the network sees
    them clamped to [0, 1].

    ``tile`` 0 picks the tile size from free memory (the whole frame when it fits). If the device
    still runs out of memory, the frame is retried with half the tile size, down to ``MIN_TILE``;
    only then does it fail with exit 75. ``batch`` is the number of tiles per engine call; None
    (``--batch`` not given) groups frames by ``DEFAULT_BATCH`` and, on the CPU, sizes each engine
    call by :func:`cpu_batch` for the tile or frame size (logged once per size).
    """

    def __init__(self, engine: Engine, *, tile: int = 0, overlap: int = DEFAULT_OVERLAP, batch: int | None = DEFAULT_BATCH):
        self.auto_batch = batch is None
        batch = DEFAULT_BATCH if batch is None else batch
        if tile < 0 or overlap < 0 or batch < 1:
            raise ValueError("tile and overlap must be >= 0 and batch >= 1")
        if tile and overlap >= tile:
            raise ValueError(f"tile overlap {overlap} must be smaller than the tile {tile}")
        self.engine = engine
        self.limits = engine.caps.limits  # (batch, height, width) at most per call, or None
        self.tile = tile
        self.overlap = overlap
        # A fixed-shape or profiled engine caps the batch; the tile is capped per frame (_tile_for).
        self.batch = min(batch, self.limits[0]) if self.limits else batch
        self._fitted_tile: int | None = None  # smaller tile found by an out-of-memory fallback
        self._planned: dict[tuple[int, int, int, int], int] = {}  # (height, width, frames, calls at once) -> tile
        self._call_batches: dict[tuple[int, int], int] = {}
        self._calls_at_once = 1  # engine calls running at once while concurrent() is held

    @property
    def scale(self) -> int:
        return self.engine.spec.scale

    @contextlib.contextmanager
    def glue_threads(self) -> Iterator[None]:
        """Torch on one thread for the duration when the engine computes on the CPU in a thread
        pool of its own (``engine.caps.cpu_thread_pool``: OpenVINO's CPU, onnxruntime's CPU).

        Torch then only does the per-frame glue (clamp, padding, colour conversion), and its
        OpenMP workers spin-wait for a while after every parallel op: on a machine with as many
        network threads as cores, each spinning worker takes a core from the engine's pool and
        from the encoder (measured at 96x64, OpenVINO bf16 on 2 cores: 80 frames/s through the
        Upscaler with torch's 2 threads, 118 with 1, the engine alone 120; docs/BENCHMARKS.md).
        Every call holds it (switching costs about a microsecond), and so do runs
        (:func:`vsr.pipeline.run_video`, :func:`vsr.images.run_tasks`), whose colour conversion is
        glue too; torch's count is put back afterwards. The count is process-wide: one run at a
        time per process.
        """
        with torch_threads(1) if self.engine.caps.cpu_thread_pool else contextlib.nullcontext():
            yield

    @contextlib.contextmanager
    def concurrent(self) -> Iterator[int]:
        """Hold the engine's ``concurrent()`` where it declares one (``engine.caps.concurrent``);
        yields how many calls may run at once (1 for every other engine). While held, each call
        plans its tiles with that share of the free memory."""
        if not self.engine.caps.concurrent:
            yield 1
            return
        with self.engine.concurrent() as calls:
            self._calls_at_once = calls
            try:
                yield calls
            finally:
                self._calls_at_once = 1

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Upscale ``frames``; returns float32 ``(N, C, H*scale, W*scale)`` on the engine's device."""
        if frames.dim() != 4:
            raise ValueError(f"expected (N, C, H, W) frames, got shape {tuple(frames.shape)}")
        with self.glue_threads():  # a no-op inside a run, which holds it already
            return self._upscale(frames)

    def _upscale(self, frames: torch.Tensor) -> torch.Tensor:
        n, _, height, width = frames.shape
        spec = self.engine.spec
        # The network was trained on in-gamut RGB: YUV converted exactly can leave the cube at
        # saturated edges (values below 0 or above 1), which the network would turn into artefacts.
        min_side = max(spec.min_size, self.engine.caps.min_side)
        x = _pad(frames.to(self.engine.device, self.engine.dtype).clamp(0, 1), spec.multiple_of, min_side)
        tile = self._tile_for(x.shape[-2], x.shape[-1], n)
        while True:
            try:
                out = self._run(x, tile)
                break
            except Exception as err:
                if not _is_out_of_memory(err):
                    raise
                current = tile or max(x.shape[-2:])
                if current <= MIN_TILE:
                    raise TransientError(
                        f"out of memory on {self.engine.device} even with {tile or 'whole-frame'} tiles"
                        f" of a {width}x{height} frame; free device memory or use a smaller --batch"
                    ) from err
                smaller = max(MIN_TILE, current // 2)
                log.warning("out of memory with tile %s on %s; retrying with tile %d", tile or "whole frame", self.engine.device, smaller)
                if self.engine.device.type == "cuda":
                    torch.cuda.empty_cache()
                tile = self._fitted_tile = smaller
        return out[..., : height * self.scale, : width * self.scale]

    def _tile_for(self, height: int, width: int, frames: int) -> int:
        if self._fitted_tile is not None:
            return self._fitted_tile
        # Planned once per input size: free memory drops once the caching allocator holds the first
        # batch's activations, and a plan that flipped between whole frames and tiles would cost a
        # new CUDA graph capture or TensorRT build; nor does the device get queried every batch.
        # An engine running several calls at once (a CPU video run's compute threads) splits the
        # share between them.
        calls = self._calls_at_once
        key = (height, width, frames, calls)
        if key not in self._planned:
            if self.tile:
                tile = self.tile
            else:
                budget = int(free_memory(self.engine.device) * MEMORY_SHARE.get(self.engine.device.type, 0.5)) // calls
                tile = auto_tile(height, width, engine=self.engine, batch=self.batch, budget=budget, frames=frames)
            self._planned[key] = self._within_limits(tile, height, width)
        return self._planned[key]

    def _within_limits(self, tile: int, height: int, width: int) -> int:
        """Shrink ``tile`` (0 = whole frame) to what a fixed-shape or profiled engine accepts."""
        if not self.limits:
            return tile
        _, max_h, max_w = self.limits
        if tile == 0 and height <= max_h and width <= max_w:
            return 0
        side = min(max_h, max_w)
        side -= side % self.engine.spec.multiple_of
        return side if tile == 0 else min(tile, side)

    def call_batch(self, height: int, width: int) -> int:
        """Inputs per engine call for ``height`` x ``width`` tiles (or whole frames)."""
        if not self.auto_batch or self.engine.device.type != "cpu":
            return self.batch
        key = (height, width)
        if key not in self._call_batches:
            self._call_batches[key] = cpu_batch(height, width, most=self.batch)
            log.info("batch %d per call for %dx%d inputs on the CPU (--batch not given)", self._call_batches[key], width, height)
        return self._call_batches[key]

    def _run(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        n, c, height, width = x.shape
        s = self.scale
        spec = self.engine.spec
        overlap = min(self.overlap, max(0, tile - spec.multiple_of)) if tile else 0
        plan = tiling.plan_tiles(height, width, tile=tile, overlap=overlap, scale=s, multiple_of=spec.multiple_of)
        batch = self.call_batch(plan.tile_h, plan.tile_w)
        if plan.whole:
            return torch.cat([self.engine(x[i : i + batch]).float() for i in range(0, n, batch)])
        out = torch.zeros(n, spec.out_channels, height * s, width * s, device=x.device, dtype=torch.float32)
        wy, wx = device_blend_weights(plan, x.device)
        # Tiles of all frames in one stream, so a batch can mix frames (n, row i, column j).
        work = [(f, i, j) for f in range(n) for i in range(len(plan.ys)) for j in range(len(plan.xs))]
        for chunk in _chunks(work, batch):
            origins = [(f, plan.ys[i], plan.xs[j]) for f, i, j in chunk]
            tiles_out = self.engine(extract_tiles(x, origins, plan.tile_h, plan.tile_w))
            weights = [wy[i][:, None] * wx[j][None, :] for _, i, j in chunk]
            accumulate_tiles(out, tiles_out, [(f, y * s, x0 * s) for f, y, x0 in origins], weights)
        return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _pad(x: torch.Tensor, multiple_of: int, min_size: int) -> torch.Tensor:
    """Pad bottom/right to a multiple of ``multiple_of`` and at least ``min_size`` (reflect where possible)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = tiling.pad_to_multiple(max(height, min_size), max(width, min_size), multiple_of)
    pad_h += max(0, min_size - height)
    pad_w += max(0, min_size - width)
    return pad_bottom_right(x, pad_h, pad_w)


def resample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize float frames to ``height`` x ``width`` (bicubic, antialiased when shrinking)."""
    if x.shape[-2:] == (height, width):
        return x
    shrinking = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=shrinking)
