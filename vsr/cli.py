"""The ``vsr`` command line: argparse tree, flags to objects, logging, errors to exit codes.

This is the only module that prints. ``main(argv) -> int`` so tests run it in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import Interrupted, UsageError, VsrError

log = logging.getLogger("vsr")

EXAMPLES_RUN = """examples:
  vsr run photo.png photo_x4.png
  vsr run frames/ frames_x4/ --model realesr-animevideov3 --tile 256
  vsr run scan.tif scan_x2.tif --outscale 2 --device cuda --fp16
  vsr run art.png art.png --model path/to/4x_custom.pth --overwrite
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line as a UsageError (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}, in `{self.prog}`; see `{self.prog} --help`")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _outscale(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 < value <= 16):
        raise argparse.ArgumentTypeError(f"must be in (0, 16], got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole argparse tree."""
    from .models.zoo import DEFAULT_MODEL
    from .upscale import DEFAULT_BATCH, DEFAULT_OVERLAP

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors")
    common.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line, for render farms")

    parser = _Parser(prog="vsr", description="Video and image super-resolution with ESRGAN-family networks.")
    parser.add_argument("--version", action="version", version=f"vsr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="upscale an image or a folder of images",
        description="Upscale an image, or every image in a folder (same names in the output folder).",
        epilog=EXAMPLES_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("input", type=Path, help="image file (png, jpg, webp, tif) or folder of images")
    run.add_argument("output", type=Path, help="output image file, or folder for a folder input")
    run.add_argument("--model", default=DEFAULT_MODEL, help=f"named model (see `vsr models`) or checkpoint path (default {DEFAULT_MODEL})")
    run.add_argument("--outscale", type=_outscale, help="final scale, resampled after the model when it differs from the model's own")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: the GPU if there is one)")
    run.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="compute precision (default fp32)")
    run.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None, help="shorthand for --precision fp16")
    run.add_argument("--tile", type=_non_negative_int, default=0, help="tile side in input pixels; 0 = whole image when it fits in memory (default)")
    run.add_argument("--tile-overlap", type=_non_negative_int, default=DEFAULT_OVERLAP, help=f"overlap between tiles, blended (default {DEFAULT_OVERLAP})")
    run.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH, help=f"tiles per model call (default {DEFAULT_BATCH})")
    run.add_argument("--alpha", choices=("model", "resize"), default="model", help="upscale alpha with the network (default) or bicubic")
    run.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    run.set_defaults(handler=cmd_run)

    models = sub.add_parser("models", parents=[common], help="list the named pretrained models")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=cmd_models)

    interp = sub.add_parser(
        "interp",
        parents=[common],
        help="blend two models of the same architecture (ESRGAN network interpolation)",
        description="Write (1 - alpha) * A + alpha * B, tensor by tensor.",
        epilog="example:\n  vsr interp psnr.pth esrgan.pth --alpha 0.8 --output interp_08.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    interp.add_argument("model_a", help="named model or checkpoint path (weight 1 - alpha)")
    interp.add_argument("model_b", help="named model or checkpoint path (weight alpha)")
    interp.add_argument("--alpha", type=_unit_interval, required=True, help="weight of B, in [0, 1]")
    interp.add_argument("--output", type=Path, required=True, help="result, a .safetensors file")
    interp.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    interp.set_defaults(handler=cmd_interp)

    env = sub.add_parser("env", parents=[common], help="versions of Python, torch, CUDA, PyAV/FFmpeg and the optional backends")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env.set_defaults(handler=cmd_env)
    return parser


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import models
    from .device import resolve_device, resolve_dtype
    from .engines import TorchEngine
    from .images import plan_tasks, run_tasks
    from .upscale import Upscaler

    precision = args.precision or "fp32"
    if args.fp16 is not None:
        wanted = "fp16" if args.fp16 else "fp32"
        if args.precision and args.precision != wanted:
            raise UsageError(f"--{'' if args.fp16 else 'no-'}fp16 contradicts --precision {args.precision}; give one of them")
        precision = wanted
    if args.tile and args.tile_overlap >= args.tile:
        raise UsageError(f"--tile-overlap {args.tile_overlap} must be smaller than --tile {args.tile}")
    device = resolve_device(args.device)
    tasks = plan_tasks(args.input, args.output, overwrite=args.overwrite)
    model = models.load(args.model)
    engine = TorchEngine(model, device=device, dtype=resolve_dtype(precision))
    log.info("model %s on %s", engine, device)
    upscaler = Upscaler(engine, tile=args.tile, overlap=args.tile_overlap, batch=args.batch)
    started = time.perf_counter()
    with tqdm(total=len(tasks), unit="img", disable=None if len(tasks) > 1 else True, file=sys.stderr) as bar:
        try:
            failures = run_tasks(
                tasks, upscaler, outscale=args.outscale, alpha=args.alpha, overwrite=args.overwrite,
                keep_going=len(tasks) > 1, on_done=lambda _: bar.update(),
            )
        finally:
            engine.close()
    done = len(tasks) - len(failures)
    log.info("%d image(s) written in %.1f s", done, time.perf_counter() - started)
    if failures:
        task, err = failures[0]
        raise type(err)(f"{len(failures)} of {len(tasks)} images failed (first: {err})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import zoo

    rows = [
        {"name": m.name, "arch": m.arch, "scale": m.scale, "status": zoo.status(m.name), "default": m.name == zoo.DEFAULT_MODEL, "description": m.description}
        for m in zoo.ZOO.values()
    ]
    if args.json:
        print(json.dumps({"cache": str(zoo.models_dir()), "models": rows}, indent=2))
        return 0
    widths = [max(len(str(r[k])) for r in rows) for k in ("name", "arch", "status")]
    for r in rows:
        flag = " (default)" if r["default"] else ""
        print(f"{r['name']:<{widths[0]}}  {r['arch']:<{widths[1]}}  x{r['scale']}  {r['status']:<{widths[2]}}  {r['description']}{flag}")
    print(f"cache: {zoo.models_dir()}")
    return 0


def cmd_interp(args: argparse.Namespace) -> int:
    from .models.interp import interpolate_files

    spec = interpolate_files(args.model_a, args.model_b, alpha=args.alpha, output=args.output, overwrite=args.overwrite)
    log.info("wrote %s (%s, alpha %.3g)", args.output, spec.describe(), args.alpha)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from .envinfo import collect

    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


# --------------------------------------------------------------------------- plumbing


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()})


class _TextFormatter(logging.Formatter):
    """``vsr: warning: ...`` -- the same shape as the error line."""

    def format(self, record: logging.LogRecord) -> str:
        return f"vsr: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if getattr(args, "quiet", False) else [logging.WARNING, logging.INFO, logging.DEBUG][min(getattr(args, "verbose", 0), 2)]
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter())
    root = logging.getLogger("vsr")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _report(err: BaseException) -> None:
    if os.environ.get("VSR_DEBUG") == "1":
        traceback.print_exception(err, file=sys.stderr)
    print(f"vsr: error: {err}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (DESIGN.md section 7)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help(sys.stderr)
            return 2
        _setup_logging(args)
        return args.handler(args)
    except VsrError as err:
        _report(err)
        return err.exit_code
    except KeyboardInterrupt:
        _report(Interrupted("interrupted by the user"))
        return Interrupted.exit_code
    except Exception as err:  # a bug: show everything
        traceback.print_exception(err, file=sys.stderr)
        print(f"vsr: error: internal error ({type(err).__name__}: {err}); please report it with the traceback above", file=sys.stderr)
        return 1


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
