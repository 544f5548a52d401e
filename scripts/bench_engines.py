#!/usr/bin/env python3
"""Engine benchmark: frames/s, achieved TFLOP/s and share of the device's matrix peak.

One row per backend (torch, onnxruntime, tensorrt: those available here) x precision x torch mode
(eager, compiled, graphs; CUDA only) x input size, and with ``--clip`` one more row per engine for
the whole ``vsr run`` pipeline on that clip. Unavailable backends and failed configurations are
skipped with a line saying why.

    python scripts/bench_engines.py --model realesr-animevideov3 --size 64x96 --repeat 3     # CPU
    python scripts/bench_engines.py --device cuda --size 540x960 --size 360x640 --repeat 20
    python scripts/bench_engines.py --device cuda --random --backend tensorrt --precision fp16 --json
    python scripts/bench_engines.py --device cuda --model realesr-animevideov3 --clip samples/sample.mp4

Method (docs/BENCHMARKS.md):
- frames/s: ``batch`` / median seconds of ``--repeat`` timed engine calls after ``--warmup``
  untimed calls (the first call includes torch.compile, graph capture and cuDNN autotuning: it is
  reported as ``warmup_s``). CUDA is synchronised before and after every timed call. The input is
  a real photograph (scikit-image's astronaut), never zeros.
- TFLOP/s = 2 x MAC per LR pixel x LR pixels per frame x frames/s / 1e12, with the MACs counted
  from the network's own Conv2d layers (vsr.engines.torch_engine.conv_macs_per_pixel).
- peak: the best TFLOP/s of a large square matmul in the same precision on the same device,
  measured in this run before and again after the rows, the better of the two kept (``--peak N``
  uses N TFLOP/s instead, ``--peak none`` leaves it out). On the CPU it is an fp32 matmul
  through torch's BLAS with the same thread count. fp32 convolutions on CUDA may use TF32
  (cuDNN's default) while the fp32 matmul peak does not, so fp32 CUDA rows can exceed 100 %.
- memory: CUDA torch rows report torch.cuda.max_memory_allocated over the row, warm-up
  included (weights, activations, autotuning, graph capture); onnxruntime and TensorRT allocate
  outside torch, so their rows report the rise in device memory in use (torch.cuda.mem_get_info).
  CPU rows report the peak rise in the process's resident set size, sampled every 5 ms.
- ``--random`` builds a random-initialised network of the named model's architecture (no weights
  needed; speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchlib import Memory, Skip, build_model, device_name, hw_size, measure_peak, photo_batch, sync, table, time_engine

BACKENDS = ("torch", "onnxruntime", "tensorrt", "openvino")
MODES = ("eager", "compiled", "graphs", "compiled+graphs")
# Every row (model or pipeline) has exactly these keys, in this order.
KEYS = (
    "kind", "model", "arch", "random", "device", "backend", "mode", "precision", "channels_last",
    "size", "batch", "frames", "fps", "ms_per_call", "warmup_s", "mac_per_px", "tflops",
    "peak_tflops", "peak_fraction", "peak_source", "mem_mib", "mem_source",
)

log = logging.getLogger("bench_engines")


@dataclass
class Config:
    backend: str
    precision: str
    mode: str  # torch: eager/compiled/graphs/compiled+graphs; others "-"


# --------------------------------------------------------------------------- arguments


def _peak(text: str) -> str | float:
    if text in ("measure", "none"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--peak takes 'measure', 'none' or a number of TFLOP/s") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("--peak must be positive")
    return value


def _csv(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)} (comma-separated or repeated)")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from vsr.engines.torch_engine import COMPILE_MODES, DEFAULT_COMPILE_MODE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="realesrgan-x4plus", help="named model or checkpoint (default realesrgan-x4plus)")
    p.add_argument("--random", action="store_true", help="random-initialised network of the model's architecture (no weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--backend", type=_csv(BACKENDS), action="append", help="torch, onnxruntime, tensorrt (default: all)")
    p.add_argument("--precision", type=_csv(("fp32", "fp16", "bf16")), action="append",
                   help="default fp32 on the CPU, fp16 and bf16 on CUDA")
    p.add_argument("--mode", type=_csv(MODES), action="append",
                   help="torch modes on CUDA (default eager, compiled, graphs; also compiled+graphs)")
    p.add_argument("--compile-mode", default=DEFAULT_COMPILE_MODE, choices=COMPILE_MODES, help=f"torch.compile mode (default {DEFAULT_COMPILE_MODE})")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="torch memory format (auto: on for CUDA)")
    p.add_argument("--size", type=hw_size, action="append", help="LR input HxW, repeatable (default 540x960 and 360x640 on CUDA, 64x96 on the CPU)")
    p.add_argument("--batch", type=int, default=1, help="frames per engine call (default 1)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per row; the median is reported (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    p.add_argument("--peak", type=_peak, default="measure", help="'measure' (default), 'none', or the peak in TFLOP/s")
    p.add_argument("--clip", type=Path, help="also time the whole vsr run pipeline on this clip")
    p.add_argument("--tile", type=int, default=0, help="pipeline tile size (0: automatic, as vsr run)")
    p.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                   help="leave torch.backends.cudnn.benchmark off (default: on for CUDA runs)")
    p.add_argument("--threads", type=int, help="torch (and OpenVINO, ncnn) CPU threads (default: torch's choice)")
    p.add_argument("--ncnn", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: reference rows from the ncnn runtime with the same weights (default on; needs the named model's weights)")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows instead of the table")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeat < 1 or args.warmup < 0:
        p.error("--batch and --repeat must be >= 1 and --warmup >= 0")
    args.backend = _flatten(args.backend) or list(BACKENDS)
    args.precision = _flatten(args.precision)
    args.mode = _flatten(args.mode)
    return args


def _flatten(groups: list[list[str]] | None) -> list[str]:
    out: list[str] = []
    for group in groups or []:
        out += [g for g in group if g not in out]
    return out


# --------------------------------------------------------------------------- measurement helpers


# --------------------------------------------------------------------------- engines


def onnx_for(model: torch.nn.Module, fp16: bool) -> Path:
    from vsr.engines.backends import cached_onnx

    return cached_onnx(model, fp16=fp16)


def check_backend(backend: str, device: torch.device) -> None:
    """Raise :class:`Skip` when ``backend`` cannot run on ``device`` here."""
    import importlib.util

    if backend == "onnxruntime":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise Skip(f"{', '.join(missing)} not installed (pip install \"vsr[onnx]\")")
        if device.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise Skip("this onnxruntime has no CUDA provider (CPU build); install onnxruntime-gpu to benchmark it on CUDA")
    elif backend == "openvino":
        check_openvino(device)
    elif backend == "tensorrt":
        if device.type != "cuda":
            raise Skip("TensorRT needs a CUDA device")
        from vsr.engines.trt_common import import_trt
        from vsr.errors import VsrError

        try:
            import_trt()
        except VsrError as err:
            raise Skip(str(err)) from None
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise Skip(f"{', '.join(missing)} not installed; the TensorRT path builds from an ONNX export")


def make_engine(cfg: Config, model: torch.nn.Module, device: torch.device, args: argparse.Namespace, shape: tuple[int, int, int, int] | None):
    """The engine for ``cfg``; ``shape`` (N, C, H, W) fixes TensorRT's profile (None: vsr run's default profile)."""
    from vsr.device import PRECISIONS

    dtype = PRECISIONS[cfg.precision]
    if cfg.backend == "torch":
        from vsr.engines import TorchEngine

        channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]
        compiled = args.compile_mode if "compiled" in cfg.mode else False
        engine = TorchEngine(model, device=device, dtype=dtype, channels_last=channels_last, compile=compiled, cuda_graphs="graphs" in cfg.mode)
        if engine.dtype != dtype:
            raise Skip(f"{cfg.precision} convolutions do not run on {device} in this torch build")
        return engine
    if cfg.backend == "openvino":
        return make_openvino_engine(model, dtype, cfg.precision)
    if cfg.precision == "bf16":
        raise Skip("the ONNX exports are fp32 or fp16; bf16 runs on the torch and openvino backends only")
    fp16 = cfg.precision == "fp16"
    if cfg.backend == "onnxruntime":
        from vsr.engines.ort_engine import OrtEngine

        return OrtEngine(onnx_for(model, fp16), device=device)
    from vsr.engines.trt_build import BuildConfig, engine_from_onnx

    if shape is not None:
        config = BuildConfig(min_shape=shape, opt_shape=shape, max_shape=shape, fp16=fp16)
    else:
        config = BuildConfig(batch=args.batch, fp16=fp16)
    return engine_from_onnx(onnx_for(model, fp16), config, spec=model.spec, device=device)


def configs(args: argparse.Namespace, device: torch.device, skipped: list[str]) -> list[Config]:
    cuda = device.type == "cuda"
    precisions = args.precision or (["fp16", "bf16"] if cuda else ["fp32"])
    modes = args.mode or (["eager", "compiled", "graphs"] if cuda else ["eager"])
    out = []
    for backend in args.backend:
        try:
            check_backend(backend, device)
        except Skip as why:
            skipped.append(f"{backend}: {why}")
            continue
        for precision in precisions:
            if backend != "torch":
                out.append(Config(backend, precision, "-"))
                continue
            for mode in modes:
                if mode != "eager" and not cuda:
                    skipped.append(f"torch {precision} {mode}: torch.compile and CUDA graphs are CUDA-only in TorchEngine")
                    continue
                out.append(Config(backend, precision, mode))
    return out


# --------------------------------------------------------------------------- CPU: OpenVINO and the ncnn reference


def check_openvino(device: torch.device) -> None:
    """Raise :class:`Skip` when the OpenVINO backend cannot run here (this script runs its CPU device)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise Skip('openvino not installed (pip install "vsr[openvino]")')
    if device.type != "cpu":
        raise Skip("this script runs OpenVINO on its CPU device (use --device cpu)")


def make_openvino_engine(model: torch.nn.Module, dtype: torch.dtype, precision: str):
    """An OpenVINO engine as ``vsr run --backend openvino`` builds it (dynamic shapes, cached)."""
    from vsr.engines.openvino_engine import OpenVinoEngine

    engine = OpenVinoEngine(model, device="CPU", dtype=dtype, threads=torch.get_num_threads())
    if engine.caps.compute_dtype != dtype:
        raise Skip(f"OpenVINO's CPU device does not run {precision} here")
    return engine


def ncnn_model_rows(bench: Bench, sizes: list[tuple[int, int]], skipped: list[str]) -> list[dict]:
    """Reference rows: the same weights in the ncnn runtime on the CPU, same photo crops, batch 1.

    ncnn runs one image per call; ``--batch`` does not apply. Its ``default`` options are what
    the ncnn tools run (fp16 storage, Winograd); ``fp32`` turns low precision off. TFLOP/s use
    the counted direct-convolution MACs, so ncnn's Winograd kernels (fewer multiplies) can show
    more than the fp32 matmul peak.
    """
    import ncnn_ref

    args = bench.args
    if bench.device.type != "cpu":
        skipped.append("ncnn: the reference rows run on the CPU only")
        return []
    if args.random:
        skipped.append("ncnn: --random weights have no ncnn files; run with the named model's real weights")
        return []
    rows = []
    nets, failed = ncnn_ref.load_variants(args.model, threads=torch.get_num_threads())
    skipped += failed
    frames = [((h, w), ncnn_ref.as_chw(photo_batch(1, h, w))[0]) for h, w in sizes]
    for variant, net in nets:
        cfg = Config("ncnn", "fp32", variant)  # mode column: ncnn's option set
        for (h, w), frame in frames:
            with Memory(bench.device, "ncnn") as memory:
                started = time.perf_counter()
                seconds = ncnn_ref.call_seconds(net, frame, repeat=args.repeat, warmup=args.warmup)
                warm = time.perf_counter() - started - seconds * args.repeat
            row = bench.row("model", cfg, None, size=(h, w), batch=1, frames=None, seconds_per_call=seconds, fps=1 / seconds,
                            warmup=max(0.0, warm), memory=memory)
            rows.append(row)
    return rows


def ncnn_ratios(rows: list[dict]) -> list[str]:
    """One line per vsr model row with an ncnn row of the same size: vsr frames/s / best ncnn frames/s."""
    best: dict[str, float] = {}
    for r in rows:
        if r["backend"] == "ncnn":
            best[r["size"]] = max(best.get(r["size"], 0.0), r["fps"])
    lines = []
    for r in rows:
        if r["backend"] != "ncnn" and r["kind"] == "model" and r["size"] in best:
            lines.append(f"vsr/ncnn {r['backend']} {r['precision']} {r['size']} batch {r['batch']}: {r['fps'] / best[r['size']]:.2f}")
    return lines


# --------------------------------------------------------------------------- rows


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device, model: torch.nn.Module, macs: float):
        self.args, self.device, self.model, self.macs = args, device, model, macs
        self._peaks: dict[str, float | None] = {}

    def peak(self, precision: str) -> tuple[float | None, str]:
        if self.args.peak == "none":
            return None, "-"
        if isinstance(self.args.peak, float):
            return self.args.peak, "given"
        if precision not in self._peaks:
            self.measure_peak(precision)
        value = self._peaks[precision]
        return value, (f"{precision} matmul" if value else "-")

    def measure_peak(self, precision: str) -> None:
        """Measure the matmul peak again and keep the best seen (a busy machine only lowers it)."""
        from vsr.device import PRECISIONS

        try:
            value = measure_peak(self.device, PRECISIONS[precision])
        except (RuntimeError, NotImplementedError) as err:
            log.warning("cannot measure the %s matmul peak on %s: %s", precision, self.device, err)
            value = None
        old = self._peaks.get(precision)
        self._peaks[precision] = max(v for v in (old, value, 0.0) if v is not None) or None

    def refresh_peaks(self, rows: list[dict]) -> None:
        """Re-measure every peak after the rows (best of before and after) and update the rows."""
        if self.args.peak != "measure":
            return
        for precision in list(self._peaks):
            self.measure_peak(precision)
        for row in rows:
            peak, source = self.peak(row["precision"])
            row["peak_tflops"] = None if peak is None else round(peak, 4)
            row["peak_fraction"] = None if not peak else round(row["tflops"] / peak, 6)
            row["peak_source"] = source

    def row(self, kind: str, cfg: Config, engine, *, size: tuple[int, int], batch: int, frames: int | None,
            seconds_per_call: float | None, fps: float, warmup: float | None, memory: Memory) -> dict:
        h, w = size
        tflops = 2 * self.macs * h * w * fps / 1e12
        peak, source = self.peak(cfg.precision)
        channels_last = getattr(engine, "channels_last", None)
        return {
            "kind": kind,
            "model": self.args.model,
            "arch": self.model.spec.arch,
            "random": self.args.random,
            "device": device_name(self.device),
            "backend": cfg.backend,
            "mode": getattr(engine, "mode", cfg.mode) if cfg.backend == "torch" else cfg.mode,
            "precision": cfg.precision,
            "channels_last": channels_last,
            "size": f"{h}x{w}",
            "batch": batch,
            "frames": frames,
            "fps": round(fps, 4),
            "ms_per_call": None if seconds_per_call is None else round(seconds_per_call * 1e3, 3),
            "warmup_s": None if warmup is None else round(warmup, 3),
            "mac_per_px": round(self.macs, 1),
            "tflops": round(tflops, 6),
            "peak_tflops": None if peak is None else round(peak, 4),
            "peak_fraction": None if not peak else round(tflops / peak, 6),
            "peak_source": source,
            "mem_mib": None if memory.mib is None else round(memory.mib, 1),
            "mem_source": memory.source,
        }

    def model_row(self, cfg: Config, size: tuple[int, int]) -> dict:
        args = self.args
        h, w = size
        m = self.model.spec.multiple_of
        if h % m or w % m:
            raise Skip(f"size {h}x{w} is not a multiple of {m} for this model")
        x = photo_batch(args.batch, h, w)
        engine = None
        try:
            with Memory(self.device, cfg.backend) as memory:
                engine = make_engine(cfg, self.model, self.device, args, (args.batch, self.model.spec.in_channels, h, w))
                x = x.to(self.device, engine.dtype)
                per_call, warm = time_engine(engine, x, repeat=args.repeat, warmup=args.warmup)
            return self.row("model", cfg, engine, size=size, batch=args.batch, frames=None, seconds_per_call=per_call,
                            fps=args.batch / per_call, warmup=warm, memory=memory)
        finally:
            if engine is not None:
                engine.close()

    def pipeline_row(self, cfg: Config) -> dict:
        import importlib.util

        if importlib.util.find_spec("av") is None:
            raise Skip("PyAV is not installed (the pipeline decodes and encodes with it)")
        from vsr.media.decode import open_input
        from vsr.pipeline import VideoJob, run_video
        from vsr.upscale import Upscaler

        args = self.args
        container, info = open_input(args.clip)
        container.close()
        engine = None
        try:
            with Memory(self.device, cfg.backend) as memory:
                engine = make_engine(cfg, self.model, self.device, args, None)
                upscaler = Upscaler(engine, tile=args.tile, batch=args.batch)
                started = time.perf_counter()
                upscaler(photo_batch(args.batch, info.height, info.width).to(self.device))  # compile / capture / autotune
                sync(self.device)
                warm = time.perf_counter() - started
                with tempfile.TemporaryDirectory() as tmp:
                    result = run_video(VideoJob(args.clip, Path(tmp) / f"out{args.clip.suffix}"), upscaler)
            return self.row("pipeline", cfg, engine, size=(info.height, info.width), batch=args.batch, frames=result.frames,
                            seconds_per_call=None, fps=result.frames / result.seconds, warmup=warm, memory=memory)
        finally:
            if engine is not None:
                engine.close()


# --------------------------------------------------------------------------- output


COLUMNS = (
    ("kind", "kind"), ("backend", "backend"), ("mode", "mode"), ("prec", "precision"), ("layout", "channels_last"),
    ("size", "size"), ("batch", "batch"), ("frames/s", "fps"), ("ms/call", "ms_per_call"), ("TFLOP/s", "tflops"),
    ("peak", "peak_tflops"), ("% peak", "peak_fraction"), ("mem MiB", "mem_mib"), ("warm-up s", "warmup_s"),
)


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "channels_last":
        return "NHWC" if value else "NCHW"
    if key == "peak_fraction":
        pct = 100 * value
        return f"{pct:.2f}" if pct >= 0.01 or pct == 0 else f"{pct:.2g}"
    if key in ("fps", "ms_per_call", "peak_tflops", "warmup_s"):
        return f"{value:.4g}" if key != "warmup_s" else f"{value:.2f}"
    if key == "tflops":
        return f"{value:.4g}"
    if key == "mem_mib":
        return f"{value:.0f}"
    return str(value)


def header(args: argparse.Namespace, device: torch.device, model: torch.nn.Module, macs: float) -> str:
    versions = [f"torch {torch.__version__}"]
    if device.type == "cuda":
        versions.append(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, cudnn.benchmark={torch.backends.cudnn.benchmark}")
    for name in ("onnxruntime", "tensorrt", "openvino", "ncnn"):
        with contextlib.suppress(Exception):
            module = __import__(name)
            versions.append(f"{name} {module.__version__}")
    weights = "random weights" if args.random else "real weights"
    return (
        f"# vsr engine benchmark {datetime.date.today().isoformat()}: {args.model} ({model.spec.arch}, {weights},"
        f" {macs:,.0f} MAC per LR pixel) on {device_name(device)} ({device}, {torch.get_num_threads()} torch threads)\n"
        f"# {', '.join(versions)}; median of {args.repeat} after {args.warmup} warm-up calls; batch {args.batch}"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)

    from vsr.device import resolve_device
    from vsr.engines.torch_engine import conv_macs_per_pixel
    from vsr.errors import VsrError

    try:
        if args.clip is not None and not args.clip.is_file():
            from vsr.errors import InputMissing

            raise InputMissing(f"--clip {args.clip} does not exist")
        device = resolve_device(args.device)
        model = build_model(args.model, args.random)
    except VsrError as err:
        print(f"bench_engines: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    if device.type == "cuda" and args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    sizes = args.size or ([(540, 960), (360, 640)] if device.type == "cuda" else [(64, 96)])
    macs = conv_macs_per_pixel(model)
    bench = Bench(args, device, model, macs)

    skipped: list[str] = []
    rows: list[dict] = []
    todo = configs(args, device, skipped)
    for precision in dict.fromkeys(cfg.precision for cfg in todo):
        bench.peak(precision)  # measured up front, on an idle device
    for cfg in todo:
        label = f"{cfg.backend} {cfg.precision}" + (f" {cfg.mode}" if cfg.backend == "torch" else "")
        jobs: list[tuple[int, int] | None] = [*sizes, *([None] if args.clip else [])]  # None: the pipeline row
        for size in jobs:
            what = f"{label} {size[0]}x{size[1]}" if size else f"{label} pipeline {args.clip}"
            try:
                rows.append(bench.model_row(cfg, size) if size else bench.pipeline_row(cfg))
            except Skip as why:
                skipped.append(f"{what}: {why}")
            except Exception as err:  # one failed configuration must not stop the others
                if os.environ.get("VSR_DEBUG") == "1":
                    raise
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                skipped.append(f"{what}: failed: {type(err).__name__}: {first}")
            finally:
                if "compiled" in cfg.mode:
                    # Each compiled row starts from a clean slate: no recompile-limit carry-over
                    # between rows (dynamo caches per code object, not per engine).
                    torch.compiler.reset()
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    if args.ncnn:
        rows += ncnn_model_rows(bench, sizes, skipped)
    bench.refresh_peaks(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
    else:
        print(header(args, device, model, macs))
        print(table(rows, COLUMNS, _cell) if rows else "(no rows)")
        for line in ncnn_ratios(rows):
            print(f"# {line}")
        for line in skipped:
            print(f"# skipped {line}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
