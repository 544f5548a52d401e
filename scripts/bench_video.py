#!/usr/bin/env python3
"""Model-only vs whole-pipeline throughput of ``vsr run`` on a clip, side by side.

Model-only: the clip's frames are decoded and converted to RGB first (not timed), then only the
upscaler (padding, tiling, network, blending) is timed over all of them, with the same batch.
Pipeline: ``vsr run``'s own function on the same clip, timed from open to published file
(decode, colour conversion, network, encode and mux all included). Like the model-only side, it
gets an untimed warm-up run first (first-call costs: lazy imports, encoder and kernel set-up).

    python scripts/bench_video.py                       # samples/sample.mp4, default model, CPU
    python scripts/bench_video.py --clip in.mp4 --model realesr-animevideov3 --device cuda --fp16 --json

The ratio pipeline/model-only says how well decode and encode hide behind compute (1.0 = fully).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def decoded_rgb(clip: Path, device: torch.device) -> list[torch.Tensor]:
    """Every frame of ``clip`` as float RGB ``(1, 3, H, W)`` on ``device`` (untimed set-up)."""
    from vsr.media.decode import CopiedPacket, iter_media, open_input
    from vsr.pipeline import planes_to_rgb

    container, info = open_input(clip)
    try:
        return [planes_to_rgb([f], device) for f in iter_media(container, info, copy_streams={}) if not isinstance(f, CopiedPacket)]
    finally:
        container.close()


def model_only(frames: list[torch.Tensor], upscaler) -> float:
    """Seconds to upscale ``frames`` in batches of ``upscaler.batch`` (one warm-up batch first)."""
    upscaler(torch.cat(frames[: upscaler.batch]))
    _sync(upscaler.engine.device)
    started = time.perf_counter()
    for i in range(0, len(frames), upscaler.batch):
        upscaler(torch.cat(frames[i : i + upscaler.batch]))
    _sync(upscaler.engine.device)
    return time.perf_counter() - started


def pipeline(clip: Path, upscaler) -> tuple[int, float]:
    """Frames and seconds of a whole ``vsr run`` of ``clip`` into a temporary file."""
    from vsr.pipeline import VideoJob, run_video

    with tempfile.TemporaryDirectory() as tmp:
        result = run_video(VideoJob(clip, Path(tmp) / f"out{clip.suffix}"), upscaler)
    return result.frames, result.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=ROOT / "samples" / "sample.mp4")
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tile", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()

    from vsr import models
    from vsr.device import resolve_device, resolve_dtype
    from vsr.engines import TorchEngine
    from vsr.upscale import Upscaler

    device = resolve_device(args.device)
    engine = TorchEngine(models.load(args.model), device=device, dtype=resolve_dtype(args.precision))
    upscaler = Upscaler(engine, tile=args.tile, batch=args.batch)
    frames = decoded_rgb(args.clip, device)
    model_s = model_only(frames, upscaler)
    pipeline(args.clip, upscaler)  # warm-up, untimed
    piped_frames, pipe_s = pipeline(args.clip, upscaler)
    if piped_frames != len(frames):
        print(f"frame count differs: {len(frames)} decoded, {piped_frames} through the pipeline", file=sys.stderr)
        return 1
    height, width = frames[0].shape[-2:]
    row = {
        "clip": args.clip.name, "size": f"{width}x{height}", "frames": len(frames), "model": args.model,
        "device": str(device), "precision": args.precision, "batch": args.batch, "torch_threads": torch.get_num_threads(),
        "model_only_fps": round(len(frames) / model_s, 3), "pipeline_fps": round(piped_frames / pipe_s, 3),
        "ratio": round((piped_frames / pipe_s) / (len(frames) / model_s), 3),
    }
    if args.json:
        print(json.dumps(row))
        return 0
    keys = list(row)
    widths = [max(len(k), len(str(row[k]))) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("-|-".join("-" * w for w in widths))
    print(" | ".join(str(row[k]).ljust(w) for k, w in zip(keys, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
