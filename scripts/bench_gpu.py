#!/usr/bin/env python3
"""The GPU table (issue 12): the two networks through every torch mode, and the whole ``vsr run``.

Rows, in the order they run (cheap first, so a short lease still gets the core of the table):

* ``model``: RRDBNet x4 (nb=23, nf=64, gc=32: x4plus's architecture) and SRVGGNetCompact x4
  (nf=64, 16 convs: animevideov3's), random-initialised (the cost does not depend on the weights),
  at 540x960 in batches of ``--batch``, in fp16 and bf16, through torch ``eager`` (NCHW),
  ``channels_last`` (eager, NHWC), ``graphs`` (CUDA graphs, NHWC) and, last, ``compiled``
  (torch.compile, mode ``--compile-mode``, NHWC). frames/s = batch / median seconds of
  ``--repeat`` calls after ``--warmup`` (CUDA synchronised around each call, inputs are crops of a
  real photograph); TFLOP/s from the conv MAC count (DESIGN.md section 9); % peak against the best
  bf16 matmul rate measured in this run, before and after the rows.
* ``pipeline``: ``vsr.pipeline.run_video`` (what ``vsr run`` calls) on a 960x540 H.264 clip made
  here from a photograph, into libx264 with vsr's defaults (CRF 18, preset faster), for each network
  in fp16 and bf16 (``channels_last``: vsr run's default on CUDA) and fp16 ``graphs``.
* ``encoder``: the same ``vsr run`` with the network replaced by nearest-neighbour upsampling (no
  compute): libx264 on the same 3840x2160 frames is all that is left, the bound a pipeline row
  cannot beat (H100/H200 have no NVENC: encoding is on the CPU).

Each row is checked against the time left (``--deadline-s`` from the start; the rest is skipped
with the reason) and the JSON is rewritten under ``--out`` after every row, so a run cut short
still leaves what it measured. ``--cpu-smoke`` runs every code path on the CPU at tiny sizes
(CUDA-only modes are skipped with the reason): a dry run, its numbers mean nothing.

    python3 scripts/bench_gpu.py --out "$OUT"                 # on the GPU host (scripts/gpu_host.sh)
    python3 scripts/bench_gpu.py --cpu-smoke --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch

import benchlib  # the measurement method bench_engines.py uses too: one method for both scripts


# Table label -> the named model whose architecture is timed (benchlib.RANDOM_ARCH).
NETWORKS = {"RRDBNet": "realesrgan-x4plus", "SRVGG": "realesr-animevideov3"}
# Mode -> TorchEngine options.
MODES = {
    "eager": dict(channels_last=False),
    "channels_last": dict(channels_last=True),
    "graphs": dict(channels_last=True, cuda_graphs=True),
    "compiled": dict(channels_last=True, compile=True),  # compile mode set from --compile-mode
}
# (mode, precision) of the pipeline rows per network.
PIPELINE = (("channels_last", "fp16"), ("channels_last", "bf16"), ("graphs", "fp16"))
# Seconds a row needs at least, so it is not started when less is left (compiling RRDBNet is the long one).
NEEDS = {("compiled", "RRDBNet"): 150, ("compiled", "SRVGG"): 45, "pipeline": 30, "encoder": 25}
NEEDS_DEFAULT = 15

log = logging.getLogger("bench_gpu")


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")), help="folder for bench_gpu.json (default $OUT)")
    p.add_argument("--cpu-smoke", action="store_true", help="dry run on the CPU at tiny sizes (numbers mean nothing)")
    p.add_argument("--size", type=benchlib.hw_size, help="LR input HxW (default 540x960; 32x48 with --cpu-smoke)")
    p.add_argument("--batch", type=int, help="frames per engine call (default 4, vsr run's; 1 with --cpu-smoke)")
    p.add_argument("--repeat", type=int, help="timed calls per model row (default 10; 1 with --cpu-smoke)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--frames", type=int, help="frames of the pipeline clip (default 48; 4 with --cpu-smoke)")
    p.add_argument("--network", choices=NETWORKS, action="append", help="default: both")
    p.add_argument("--mode", choices=MODES, action="append", help="default: all four")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"), action="append", help="default fp16 and bf16 (fp32 with --cpu-smoke)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled rows (default 'default': no autotuning)")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="leave out the pipeline and encoder rows")
    p.add_argument("--deadline-s", type=float, default=420.0, help="stop starting rows this many seconds after the start (default 420)")
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    args.size = args.size or ((32, 48) if smoke else (540, 960))
    args.batch = args.batch or (1 if smoke else 4)
    args.repeat = args.repeat or (1 if smoke else 10)
    args.frames = args.frames or (4 if smoke else 48)
    args.network = args.network or list(NETWORKS)
    args.mode = args.mode or list(MODES)
    args.precision = args.precision or (["fp32"] if smoke else ["fp16", "bf16"])
    return args


# --------------------------------------------------------------------------- the run


class Run:
    """Rows, skips and the clock of one benchmark run; every row is saved as soon as it is made."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.started = time.perf_counter()
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self.peak: float | None = None
        self.info = environment(device)
        args.out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.args.deadline_s - (time.perf_counter() - self.started)

    def fits(self, what: str, need: float) -> bool:
        if self.left() >= need:
            return True
        self.skipped.append(f"{what}: not started, {self.left():.0f} s left of --deadline-s {self.args.deadline_s:.0f} (needs ~{need:.0f} s)")
        return False

    def measure_peak(self) -> None:
        """The bf16 matmul rate: best of the measurements so far (a busy moment only lowers it)."""
        seconds, rounds = (0.01, 1) if self.device.type == "cpu" else (None, 5)
        value = benchlib.measure_peak(self.device, torch.bfloat16, seconds=seconds, rounds=rounds)
        self.peak = max(self.peak or 0.0, value)
        for row in self.rows:
            row["peak_tflops"] = round(self.peak, 3)
            row["peak_fraction"] = None if row["tflops"] is None else round(row["tflops"] / self.peak, 4)

    def add(self, row: dict) -> None:
        if row["tflops"] is not None and self.peak:
            row["peak_tflops"], row["peak_fraction"] = round(self.peak, 3), round(row["tflops"] / self.peak, 4)
        self.rows.append(row)
        log.warning("%s", " ".join(f"{k}={row[k]}" for k in ("kind", "network", "mode", "precision", "fps")))
        self.save()

    def save(self) -> None:
        data = {"environment": self.info, "args": {k: str(v) for k, v in vars(self.args).items()}, "rows": self.rows, "skipped": self.skipped}
        tmp = self.args.out / "bench_gpu.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.args.out / "bench_gpu.json")


def environment(device: torch.device) -> dict:
    """What the table was measured on: GPU, driver, library versions, CPU."""
    import av

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": benchlib.device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
        "pyav": av.__version__, "ffmpeg": getattr(av, "ffmpeg_version_info", None), "cpu": benchlib.cpu_model(), "cores": os.cpu_count(),
    }
    with contextlib.suppress(ImportError):
        import triton

        info["triton"] = triton.__version__
    if device.type == "cuda":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
            ).stdout.strip()
    return info


def row(kind: str, network: str, mode: str, precision: str, *, size, batch, fps, macs, frames=None, ms=None, warm=None, mem=None, engine=None) -> dict:
    h, w = size
    return {
        "kind": kind, "network": network, "mode": mode, "precision": precision,
        "layout": None if engine is None else ("NHWC" if engine.channels_last else "NCHW"),
        "runs": None if engine is None else engine.mode, "size": f"{h}x{w}", "batch": batch, "frames": frames,
        "fps": round(fps, 3), "ms_per_call": None if ms is None else round(ms, 2), "warmup_s": None if warm is None else round(warm, 2),
        "tflops": None if macs is None else round(2 * macs * h * w * fps / 1e12, 3), "peak_tflops": None, "peak_fraction": None,
        "mem_mib": None if mem is None else round(mem, 0),
    }


def make_engine(model: torch.nn.Module, device: torch.device, mode: str, precision: str, compile_mode: str):
    from vsr.device import PRECISIONS
    from vsr.engines import TorchEngine

    options = dict(MODES[mode])
    if options.get("compile"):
        options["compile"] = compile_mode
    engine = TorchEngine(model, device=device, dtype=PRECISIONS[precision], **options)
    if engine.dtype != PRECISIONS[precision]:
        raise benchlib.Skip(f"{precision} convolutions do not run on {device} in this torch build")
    return engine


def model_rows(run: Run, network: str, model: torch.nn.Module, macs: float, modes: list[str]) -> None:
    args, device = run.args, run.device
    h, w = args.size
    x = benchlib.photo_batch(args.batch, h, w)
    for mode in modes:
        for precision in args.precision:
            what = f"{network} {mode} {precision}"
            if device.type != "cuda" and mode in ("graphs", "compiled"):
                run.skipped.append(f"{what}: CUDA only")
                continue
            if not run.fits(what, NEEDS.get((mode, network), NEEDS_DEFAULT)):
                continue
            engine = None
            try:
                with benchlib.Memory(device, "torch") as memory:
                    engine = make_engine(model, device, mode, precision, args.compile_mode)
                    per_call, warm = benchlib.time_engine(engine, x.to(device, engine.dtype), repeat=args.repeat, warmup=args.warmup)
                run.add(row("model", network, mode, precision, size=args.size, batch=args.batch, fps=args.batch / per_call, macs=macs,
                            ms=per_call * 1e3, warm=warm, mem=memory.mib, engine=engine))
            except benchlib.Skip as why:
                run.skipped.append(f"{what}: {why}")
            except Exception as err:  # one failed row must not stop the others
                run.skipped.append(f"{what}: failed: {type(err).__name__}: {first_line(err)}")
            finally:
                release(engine, compiled=mode == "compiled")


def pipeline_rows(run: Run, network: str, model: torch.nn.Module, macs: float, clip: Path) -> None:
    from vsr.pipeline import VideoJob, run_video
    from vsr.upscale import Upscaler

    args, device = run.args, run.device
    plan = [("channels_last", args.precision[0])] if args.cpu_smoke else [(m, p) for m, p in PIPELINE if p in args.precision]
    for mode, precision in plan:
        what = f"{network} pipeline {mode} {precision}"
        if device.type != "cuda" and mode == "graphs":
            run.skipped.append(f"{what}: CUDA only")
            continue
        if not run.fits(what, NEEDS["pipeline"]):
            continue
        engine = None
        try:
            with benchlib.Memory(device, "torch") as memory:
                engine = make_engine(model, device, mode, precision, args.compile_mode)
                upscaler = Upscaler(engine, batch=args.batch)
                started = time.perf_counter()
                upscaler(benchlib.photo_batch(args.batch, *args.size).to(device))  # graph capture, cuDNN autotuning
                benchlib.sync(device)
                warm = time.perf_counter() - started
                with tempfile.TemporaryDirectory() as tmp:
                    result = run_video(VideoJob(clip, Path(tmp) / "out.mp4"), upscaler)
            run.add(row("pipeline", network, mode, precision, size=args.size, batch=args.batch, fps=result.fps, macs=macs,
                        frames=result.frames, warm=warm, mem=memory.mib, engine=engine))
        except benchlib.Skip as why:
            run.skipped.append(f"{what}: {why}")
        except Exception as err:
            run.skipped.append(f"{what}: failed: {type(err).__name__}: {first_line(err)}")
        finally:
            release(engine)


class NearestUp(torch.nn.Module):
    """A network that costs nothing: nearest-neighbour upsampling by ``scale``."""

    def __init__(self, scale: int):
        from vsr.models.spec import ModelSpec

        super().__init__()
        self.scale = scale
        self.spec = ModelSpec(arch="NearestUp", params=(("scale", scale),), scale=scale, in_channels=3, out_channels=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")


def encoder_row(run: Run, clip: Path, scale: int) -> None:
    """``vsr run`` on the clip with the network replaced by nearest-neighbour upsampling: decode,
    colour conversion and copies cost little beside libx264 on the 4x frames, so this is the
    encoder's own rate, the bound of the pipeline rows."""
    from vsr.engines import TorchEngine
    from vsr.pipeline import VideoJob, run_video
    from vsr.upscale import Upscaler

    if not run.fits("encoder", NEEDS["encoder"]):
        return
    engine = TorchEngine(NearestUp(scale), device=run.device, dtype=torch.float16 if run.device.type == "cuda" else torch.float32)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_video(VideoJob(clip, Path(tmp) / "out.mp4"), Upscaler(engine, batch=run.args.batch))
    except Exception as err:
        run.skipped.append(f"encoder: failed: {type(err).__name__}: {first_line(err)}")
        return
    finally:
        release(engine)
    h, w = run.args.size
    alone = row("encoder", "none", "no network", "-", size=run.args.size, batch=run.args.batch, fps=result.fps, macs=None, frames=result.frames)
    alone["size"] = f"{h * scale}x{w * scale} out"  # what it encodes: the pipeline's output frames
    run.add(alone)


def make_clip(path: Path, height: int, width: int, frames: int) -> Path:
    """An H.264 clip of ``frames`` frames: a slow pan across scikit-image's astronaut photograph,
    enlarged to twice the clip's size (real content, no flat areas)."""
    import av
    import numpy as np
    from skimage import data
    from torch.nn import functional as F

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    big = F.interpolate(photo, size=(2 * height, 2 * width), mode="bicubic", align_corners=False).clamp(0, 255).to(torch.uint8)[0]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(24), options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            y = round(i * (height - 1) / max(1, frames - 1))
            x0 = round(i * (width - 1) / max(1, frames - 1))
            rgb = np.ascontiguousarray(big[:, y : y + height, x0 : x0 + width].permute(1, 2, 0).numpy())
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def release(engine, compiled: bool = False) -> None:
    if engine is not None:
        engine.close()
    if compiled:
        torch.compiler.reset()  # each compiled row from a clean slate (no recompile-limit carry-over)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


# --------------------------------------------------------------------------- output


COLUMNS = (
    ("kind", "kind"), ("network", "network"), ("mode", "mode"), ("prec", "precision"), ("layout", "layout"), ("size", "size"),
    ("batch", "batch"), ("frames/s", "fps"), ("ms/call", "ms_per_call"), ("TFLOP/s", "tflops"), ("% bf16 peak", "peak_fraction"),
    ("mem MiB", "mem_mib"), ("warm-up s", "warmup_s"),
)


def cell(key: str, value) -> str:
    """One table cell: '-' for no value, the peak share in per cent, floats to 4 digits."""
    if value is None:
        return "-"
    if key == "peak_fraction":
        return f"{100 * value:.1f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    return benchlib.table(rows, COLUMNS, cell)


def report(run: Run) -> str:
    info = run.info
    head = (
        f"# vsr GPU benchmark {info['date']}: {info['device']}, driver {info.get('driver', '-')}, torch {info['torch']}, CUDA {info['cuda']},"
        f" cuDNN {info['cudnn']}, triton {info.get('triton', '-')}, PyAV {info['pyav']}; {info['cpu']} ({info['cores']} cores)\n"
        f"# random-initialised networks; median of {run.args.repeat} calls after {run.args.warmup}; bf16 matmul peak"
        f" {run.peak or 0:.1f} TFLOP/s (best of before/after); pipeline = vsr run on a {run.args.size[1]}x{run.args.size[0]}"
        f" H.264 clip of {run.args.frames} frames into libx264 CRF 18 medium; encoder = the same run with no network (nearest x4)"
    )
    tail = "".join(f"\n# skipped {s}" for s in run.skipped)
    return f"{head}\n{table(run.rows) if run.rows else '(no rows)'}{tail}"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda", 0)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: error: torch sees no CUDA device; use --cpu-smoke for a dry run on the CPU", file=sys.stderr)
        return 69
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as bench_engines: cuDNN picks its fastest kernels per shape
    from vsr.engines.torch_engine import conv_macs_per_pixel

    run = Run(args, device)
    try:
        run.measure_peak()
        run.save()
        networks = {name: benchlib.build_model(NETWORKS[name], random=True) for name in args.network}
        macs = {name: conv_macs_per_pixel(model) for name, model in networks.items()}
        cheap = [m for m in args.mode if m != "compiled"]
        for name, model in networks.items():
            model_rows(run, name, model, macs[name], cheap)
        if args.pipeline:
            with tempfile.TemporaryDirectory() as tmp:
                clip = make_clip(Path(tmp) / "clip.mp4", *args.size, args.frames)
                for name, model in networks.items():
                    pipeline_rows(run, name, model, macs[name], clip)
                encoder_row(run, clip, next(iter(networks.values())).spec.scale)
        if "compiled" in args.mode:
            for name in sorted(networks, key=lambda n: NEEDS[("compiled", n)]):  # the quick compile first
                model_rows(run, name, networks[name], macs[name], ["compiled"])
        run.measure_peak()
    except KeyboardInterrupt:  # the shell's timeout: print what was measured
        run.skipped.append("interrupted (time limit): the rows after the last one are missing")
    run.save()
    text = report(run)
    (args.out / "bench_gpu.md").write_text(text + "\n")
    print(text)
    return 0 if run.rows else 1


if __name__ == "__main__":
    sys.exit(main())
