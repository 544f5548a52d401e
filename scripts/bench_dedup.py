"""``--dedup off|exact|auto`` measured: speed, what it changes, temporal stability, detection cost.

Three clips made from scikit-image's photographs (scripts/media.py), encoded with x264 at ``--crf``
(so held pictures are NOT bit-identical after decoding):

* animation: drawings held on twos and threes, a slow pan and a fade on twos, a blinking eye;
* slideshow: five photographs held ``--per-slide`` frames each;
* live action: a camera moving in every frame, with sensor grain.

Each clip runs through ``vsr run`` (:func:`vsr.pipeline.run_video`, the whole pipeline: decode,
network, encode) once per mode, with a lossless output (x264 qp 0) so that the comparison with
``off`` sees what dedup changes and nothing of the encoder's own loss. For each it prints the wall
time, the speed-up against ``off``, the frames reused, the lowest per-frame PSNR against ``off``'s
frame, and, for the animation, the flow-warping error (Lai et al. 2018) over the frame pairs that
show one held drawing (benchlib.held_pairs_warp_error: how much the output "boils"). The
live clip also runs once with the default lossy output: the PSNR between that and the lossless
``off`` output is what the encoder itself changes (the bar ``auto`` must stay under to be a
default). Detection cost: the detector's time per frame against one network call on the same frame.

    python scripts/bench_dedup.py                       # 320x180 input, realesr-animevideov3
    python scripts/bench_dedup.py --json docs/dedup.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import held_pairs_warp_error
import media  # scripts/media.py: the test-media factory (scikit-image's photographs, real encodes)

MODES = ("off", "exact", "auto")


def decode_rgb(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as RGB uint8, decoded by FFmpeg (PyAV's own conversion)."""
    return [f.to_ndarray(format="rgb24") for f in media.decode_frames(path)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def make_clips(folder: Path, size: tuple[int, int], crf: int, per_slide: int) -> dict[str, tuple[Path, list[int]]]:
    """The three clips (x264 at ``crf``, 24 fps) and each frame's picture number."""
    anim, anim_ids = media.animation_frames(size)
    slides, slide_ids = media.slideshow_frames(size, per_slide=per_slide)
    live = media.live_frames(size, frames=48)
    clips = {}
    for name, rgb, ids in (("animation", anim, anim_ids), ("slideshow", slides, slide_ids), ("live action", live, list(range(len(live))))):
        path = media.make_clip(folder / f"{name.replace(' ', '_')}.mp4", rgb=rgb, frames=len(rgb), size=size, rate=24, options={"crf": str(crf)})
        clips[name] = (path, ids)
    return clips


def run(source: Path, target: Path, upscaler, mode: str, lossless: bool = True) -> tuple[float, int]:
    """(seconds, frames reused) of one ``vsr run``."""
    from vsr.media.encode import EncodeSettings
    from vsr.media.options import VideoOptions
    from vsr.pipeline import VideoJob, run_video

    settings = EncodeSettings(crf=0) if lossless else EncodeSettings()
    started = time.perf_counter()
    result = run_video(VideoJob(source, target, video=VideoOptions(settings=settings, dedup=mode), overwrite=True), upscaler)
    return time.perf_counter() - started, result.reused


def detection_cost(source: Path, upscaler) -> tuple[float, float]:
    """(ms per frame of ``auto`` detection, ms of one network call on one frame)."""
    from vsr.dedup import Detector
    from vsr.media.decode import CopiedPacket, iter_media, open_input
    from vsr.planes import planes_to_rgb

    container, info = open_input(source)
    try:
        frames = [f for f in iter_media(container, info, copy_streams=()) if not isinstance(f, CopiedPacket)]
    finally:
        container.close()
    detector = Detector("auto", torch.device("cpu"))
    started = time.perf_counter()
    for frame in frames:
        detector.is_repeat(frame)
    detect = (time.perf_counter() - started) / len(frames)
    rgb = planes_to_rgb(frames[:1], torch.device("cpu"))
    upscaler(rgb)  # warm-up
    started = time.perf_counter()
    for _ in range(3):
        upscaler(rgb)
    network = (time.perf_counter() - started) / 3
    return detect * 1000, network * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--size", default="320x180", help="input WxH (default 320x180)")
    parser.add_argument("--crf", type=int, default=20, help="x264 crf of the source clips (default 20)")
    parser.add_argument("--per-slide", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))

    from vsr.compute import ComputeSpec, build_upscaler

    upscaler = build_upscaler(ComputeSpec(model=args.model, device="cpu", precision="fp32", backend="torch", threads=args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = make_clips(folder, (w, h), args.crf, args.per_slide)
        for name, (source, ids) in clips.items():
            outputs, seconds = {}, {}
            for mode in MODES:
                target = folder / f"{source.stem}_{mode}.mkv"
                seconds[mode], reused = run(source, target, upscaler, mode)
                outputs[mode] = decode_rgb(target)
                row = {"clip": name, "mode": mode, "frames": len(outputs[mode]), "reused": reused, "seconds": round(seconds[mode], 2)}
                row["speedup"] = round(seconds["off"] / seconds[mode], 3)
                scores = [psnr(a, b) for a, b in zip(outputs[mode], outputs["off"], strict=True)]
                row["min_psnr_vs_off"] = min(scores)
                if name == "animation":
                    row["held_warp_error"] = held_pairs_warp_error(outputs[mode], ids)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            if name == "live action":
                lossy = folder / "live_lossy.mkv"
                run(source, lossy, upscaler, "off", lossless=False)
                encoder = [psnr(a, b) for a, b in zip(decode_rgb(lossy), outputs["off"], strict=True)]
                rows.append({"clip": name, "mode": "off, x264 crf 18 output", "encoder_psnr_mean": float(np.mean(encoder)), "encoder_psnr_min": min(encoder)})
        detect_ms, network_ms = detection_cost(clips["animation"][0], upscaler)
    print(f"\n--dedup on {w}x{h} clips (x264 crf {args.crf} sources), {args.model} on the CPU (torch fp32, {torch.get_num_threads()} threads), lossless output\n")
    print("| clip | mode | frames | reused | seconds | speed-up | lowest PSNR vs off (dB) | warp error of held drawings |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "seconds" not in r:
            continue
        warp = f"{r['held_warp_error']:.2e}" if "held_warp_error" in r else ""
        low = "identical" if math.isinf(r["min_psnr_vs_off"]) else f"{r['min_psnr_vs_off']:.1f}"
        print(f"| {r['clip']} | {r['mode']} | {r['frames']} | {r['reused']} | {r['seconds']:.1f} | {r['speedup']:.2f}x | {low} | {warp} |")
    enc = next(r for r in rows if "encoder_psnr_mean" in r)
    print(f"\nWhat the encoder itself changes on the live clip (x264 crf 18 output vs lossless, off): mean {enc['encoder_psnr_mean']:.1f} dB, lowest {enc['encoder_psnr_min']:.1f} dB")
    print(f"Detection (auto) {detect_ms:.2f} ms per frame against {network_ms:.0f} ms for one network call on one frame ({100 * detect_ms / network_ms:.2f} %)")
    if args.json:
        summary = {"size": [w, h], "crf": args.crf, "model": args.model, "threads": torch.get_num_threads(), "rows": rows,
                   "detect_ms": detect_ms, "network_ms": network_ms}
        args.json.write_text(json.dumps(summary, indent=1, default=lambda v: None if isinstance(v, float) and math.isinf(v) else v) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
