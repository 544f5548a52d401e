"""TensorRT for ``--tile 0``: engines built around the inputs the Upscaler sends, not a fixed tile.

A :class:`~vsr.engines.trt_runtime.TrtEngine` has one optimisation profile, and an Upscaler fits
every frame into it. With the old default profile (batch 4 of 256x256 tiles) a 960x540 frame became
twelve overlapping tiles, a third of the GPU work redundant, even where the GPU had the memory for
whole frames.

:func:`trt_frame_engine` has no profile of its own: the Upscaler plans whole frames or tiles from
free memory (:func:`vsr.tiling.plan_frames`, as for every engine without limits), and on
the first call of an input size a TensorRT engine is built (once, through the engine cache) for
exactly that size in batches of 1..``batch`` (:func:`vsr.tiling.call_profile`). A video
has one such size (its padded frame, or its tile); a folder of images of many sizes builds one
engine per size, so for those ``--tile N`` (one engine for every size) is the better choice. The
ONNX file is read, parsed and hashed once, on the first build, and serves every later size.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import TransientError
from ..models.spec import ModelSpec
from ..tiling import Shape, call_profile
from .caps import EngineCaps

log = logging.getLogger(__name__)

# Built engines kept in memory (each holds its activation memory); more come back from the cache.
MAX_ENGINES = 2


class SizedEngines:
    """The Engine protocol over engines built per input size: ``build((batch, C, H, W))`` makes an
    engine for up to ``batch`` inputs of H x W, on the first call of that size; at most
    ``max_engines`` stay open (least recently used closed first)."""

    def __init__(
        self, build: Callable[[Shape], object], *, spec: ModelSpec, device: torch.device, dtype: torch.dtype, batch: int,
        max_engines: int = MAX_ENGINES,
    ):
        self.build, self.spec, self.device, self.dtype, self.batch = build, spec, device, dtype, batch
        # No shape limits of its own: each size gets an engine built for it.
        self.caps = EngineCaps(input_dtype=dtype, compute_dtype=dtype, device_label=str(device))
        self.max_engines = max_engines
        self._engines: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine_for(tuple(x.shape))(x)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of the engines open now, least recently used first."""
        return list(self._engines)

    def engine_for(self, shape: tuple[int, ...]):
        """The engine for inputs of ``shape`` (N, C, H, W), built on first use."""
        if shape[0] > self.batch:
            raise ValueError(f"batch of {shape[0]} inputs; this engine takes at most {self.batch} per call")
        key = (int(shape[2]), int(shape[3]))
        with self._lock:
            engine = self._engines.get(key)
            if engine is not None:
                self._engines.move_to_end(key)
                return engine
            if self._engines:
                log.warning(
                    "building another engine, for %dx%d inputs; inputs of many sizes (a folder of images) are better"
                    " served by --tile N, one engine for every size", key[1], key[0],
                )
            try:
                engine = self.build((self.batch, int(shape[1]), *key))
            except torch.OutOfMemoryError:
                # The Upscaler retries with smaller tiles: give it the memory the open engines hold.
                self._close_all()
                raise
            self._engines[key] = engine
            while len(self._engines) > self.max_engines:
                self._engines.popitem(last=False)[1].close()
            return engine

    def close(self) -> None:
        """Close every built engine."""
        with self._lock:
            self._close_all()

    def _close_all(self) -> None:
        # The caller holds self._lock (not reentrant).
        while self._engines:
            self._engines.popitem()[1].close()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{w}x{h}" for h, w in self._engines) or "none built yet"
        return f"SizedEngines({self.spec.describe()}, {self.device}, batch {self.batch}, sizes: {sizes})"


def trt_frame_engine(
    onnx_path: Path, *, spec: ModelSpec, device: torch.device, fp16: bool, batch: int, root: Path | None = None,
) -> SizedEngines:
    """TensorRT engines for ``onnx_path`` (a dynamic-shape export) built per input size."""
    from .trt_build import BuildConfig, OnnxSource, engine_from_onnx
    from .trt_common import cuda_device
    from .trt_runtime import TrtEngine

    device = cuda_device(device)
    # Read lazily, on the first build; SizedEngines builds under its lock, as OnnxSource needs.
    source = OnnxSource(onnx_path, spec=spec)

    def build(shape: Shape) -> TrtEngine:
        lo, opt, hi = call_profile(shape)
        config = BuildConfig(min_shape=lo, opt_shape=opt, max_shape=hi, fp16=fp16)
        try:
            return engine_from_onnx(source, config, device=device, root=root)
        except TransientError as err:
            # Out of device memory while building or creating the context: the Upscaler retries
            # with smaller tiles, as for an out-of-memory error of any engine.
            raise torch.OutOfMemoryError(str(err)) from err

    return SizedEngines(build, spec=spec, device=device, dtype=torch.float16 if fp16 else torch.float32, batch=batch)
