"""What the benchmark scripts share: the measurement method (timing, matmul peak, memory), the
inputs (real photographs, the models, the clip to run), machine names and the Markdown table.

The scripts import it as a sibling module: ``python scripts/bench_x.py`` puts scripts/ first on
``sys.path``, and pytest does the same for the tests (``pythonpath`` in pyproject.toml). One
method for every script, so their numbers compare (docs/BENCHMARKS.md describes it).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Architecture and hyper-parameters of the named models, for --random (registry.build defaults
# are nf=64, gc=32, x4).
RANDOM_ARCH = {
    "realesrgan-x4plus": ("RRDBNet", {"num_block": 23}),
    "realesrgan-x4plus-anime": ("RRDBNet", {"num_block": 6}),
    "realesr-animevideov3": ("SRVGGNetCompact", {"num_conv": 16}),
}


class Skip(Exception):
    """A configuration that cannot run here; the message says why."""


# --------------------------------------------------------------------------- arguments


def hw_size(text: str) -> tuple[int, int]:
    """``HxW`` (an engine input size, e.g. 540x960) -> (h, w), for argparse."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW (e.g. 540x960)") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


def _clip_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH (e.g. 176x144)") from None
    if w < 2 or h < 2 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be even and >= 2 (yuv420p)")
    return w, h


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """``--clip PATH`` or ``--make-clip WxH`` (with ``--frames N``): the clip a script runs."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--clip", type=Path, help="the clip (default samples/sample.mp4)")
    src.add_argument("--make-clip", type=_clip_size, metavar="WxH", help="make a clip of this size with scripts/media.py instead")
    parser.add_argument("--frames", type=int, default=120, help="frames of --make-clip (default 120)")


def clip_of(args: argparse.Namespace, folder: Path) -> Path:
    """The clip :func:`add_clip_arguments` asked for (a made one is written into ``folder``)."""
    return make_clip(folder, args.make_clip, args.frames) if args.make_clip else (args.clip or ROOT / "samples" / "sample.mp4")


def make_clip(folder: Path, size: tuple[int, int], frames: int) -> Path:
    """A real clip from the media factory (scripts/media.py), ``size`` = (width, height)."""
    import media  # the factory's PyAV and scikit-image work is only needed for --make-clip

    return media.make_clip(Path(folder) / f"clip-{size[0]}x{size[1]}-{frames}.mp4", size=size, frames=frames, audio="aac", photo="astronaut")


# --------------------------------------------------------------------------- inputs


def build_model(ref: str, random: bool) -> torch.nn.Module:
    """The CPU fp32 model: the named/checkpoint model, or a seeded random one of its architecture."""
    from vsr import models

    if not random:
        return models.load(ref)
    if ref in RANDOM_ARCH:
        arch, params = RANDOM_ARCH[ref]
    else:
        spec = models.load(ref).spec  # a checkpoint file: its architecture, fresh weights
        arch, params = spec.arch, spec.kwargs
    torch.manual_seed(0)  # same weights every run, so the ONNX/engine caches are reused
    return models.build(arch, **params).eval()


def photo_batch(batch: int, height: int, width: int) -> torch.Tensor:
    """``(batch, 3, height, width)`` float crops of a real photograph (different per item)."""
    from torch.nn import functional as F

    try:
        from skimage import data

        img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    except ImportError:  # no scikit-image: a smooth pattern with texture, still not constant
        yy, xx = torch.meshgrid(torch.linspace(0, 6, 512), torch.linspace(0, 9, 512), indexing="ij")
        img = torch.stack([torch.sin(xx + yy), torch.cos(xx * yy / 5), torch.sin(3 * xx)])[None] * 0.4 + 0.5
    need_h, need_w = height + 8 * batch, width + 8 * batch
    if img.shape[-2] < need_h or img.shape[-1] < need_w:
        img = F.interpolate(img, size=(max(need_h, 512), max(need_w, 512)), mode="bicubic", align_corners=False).clamp(0, 1)
    return torch.cat([img[..., 8 * i : 8 * i + height, 8 * i : 8 * i + width] for i in range(batch)]).contiguous()


# --------------------------------------------------------------------------- measurement


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(device: torch.device, dtype: torch.dtype, seconds: float | None = None, rounds: int = 5) -> float:
    """Best TFLOP/s of ``n x n @ n x n`` matmuls in ``dtype`` on ``device`` (n 8192 on CUDA, 2048 on CPU)."""
    n = 8192 if device.type == "cuda" else 2048
    if seconds is None:  # per round
        seconds = 0.25 if device.type == "cuda" else 0.1
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    with torch.inference_mode():
        for _ in range(2):
            torch.matmul(a, b, out=c)
        sync(device)
        started = time.perf_counter()
        torch.matmul(a, b, out=c)
        sync(device)
        one = max(time.perf_counter() - started, 1e-6)
        iters = max(1, min(1000, int(seconds / one)))
        best = 0.0
        for _ in range(rounds):
            sync(device)
            started = time.perf_counter()
            for _ in range(iters):
                torch.matmul(a, b, out=c)
            sync(device)
            best = max(best, 2 * n**3 * iters / (time.perf_counter() - started) / 1e12)
    del a, b, c
    return best


class RssPeak:
    """Peak rise of this process's resident set size while the block runs (Linux /proc; else None)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> RssPeak:
        self.base = self.rss()
        self.peak = self.base
        if self.base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = self.rss()
            if now is not None and now > (self.peak or 0):
                self.peak = now

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.base is not None:
            self._thread.join()
            now = self.rss()
            if now is not None and now > (self.peak or 0):
                self.peak = now

    @property
    def delta(self) -> int | None:
        return None if self.base is None or self.peak is None else self.peak - self.base


class Memory:
    """Memory used by one row: see the module notes for what each device/backend reports."""

    def __init__(self, device: torch.device, backend: str):
        self.device, self.backend = device, backend
        self.mib: float | None = None
        self.source = "-"

    def __enter__(self) -> Memory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._alloc = torch.cuda.memory_allocated(self.device)
            free, total = torch.cuda.mem_get_info(self.device)
            self._used = total - free
        else:
            self._rss = RssPeak().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self.backend == "torch":
                self.mib = (torch.cuda.max_memory_allocated(self.device) - self._alloc) / 2**20
                self.source = "torch peak"
            else:
                free, total = torch.cuda.mem_get_info(self.device)
                self.mib = (total - free - self._used) / 2**20
                self.source = "device used"
        else:
            self._rss.__exit__(*exc)
            delta = self._rss.delta
            self.mib, self.source = (None, "-") if delta is None else (delta / 2**20, "RSS peak")


def time_engine(engine, x: torch.Tensor, *, repeat: int, warmup: int) -> tuple[float, float]:
    """(median seconds per call, seconds of the warm-up calls)."""
    device = engine.device
    sync(device)
    started = time.perf_counter()
    for _ in range(warmup):
        engine(x)
    sync(device)
    warm = time.perf_counter() - started
    times = []
    for _ in range(repeat):
        sync(device)
        started = time.perf_counter()
        engine(x)
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), warm


# --------------------------------------------------------------------------- machine and output


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def table(rows: list[dict], columns, cell) -> str:
    """A Markdown table of ``rows``: ``columns`` (header, key) pairs, ``cell(key, value)`` formats a
    value; text columns left-aligned, the numbers from the 7th on right."""
    cells = [[name for name, _ in columns]] + [[cell(key, r[key]) for _, key in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) if i >= 6 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |")
    return "\n".join(lines)


def held_pairs_warp_error(outputs: list, ids: list[int]) -> float:
    """The flow-warping error (Lai et al. 2018; :func:`vsr.perceptual.temporal.warp_error`, flow
    from the outputs themselves) averaged over the pairs of consecutive frames that show one held
    picture (``ids[i] == ids[i - 1]``): how much the output changes while the picture stands still,
    i.e. the network "boiling" the coding noise of a held drawing. 0 when every held frame's output
    is the same."""
    import numpy as np

    from vsr.perceptual.temporal import warp_error

    pairs = [i for i in range(1, len(ids)) if ids[i] == ids[i - 1]]
    return float(np.mean([warp_error(outputs[i - 1 : i + 1]) for i in pairs]))
