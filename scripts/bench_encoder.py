#!/usr/bin/env python3
"""x264 presets on vsr's own output: encoder CPU per frame, bitrate, PSNR, SSIM, BD-rate.

The clip is upscaled once by ``vsr run``'s own function into a lossless file (x264 ``qp=0``,
4:4:4); its frames, in the yuv420p the default encoder is given, are the reference. Each preset is
then encoded at several CRFs on one thread (``threads=1``, so the CPU time is the encoder's alone,
read from the process's CPU clock), decoded again, and compared with the reference (luma PSNR and
SSIM; SSIM from scikit-image, a test dependency). BD-rate (Bjontegaard: a cubic fit of log bitrate
over quality, averaged over the quality range both curves cover) says how many per cent more bits a
preset needs than the first one for the same PSNR or SSIM; negative is fewer.

    python scripts/bench_encoder.py --model realesr-animevideov3 --make-clip 96x64 --frames 240
    python scripts/bench_encoder.py --clip in.mp4 --model realesrgan-x4plus --presets medium,faster
    python scripts/bench_encoder.py --clip in.mp4 --crfs 16,18,20 --json

What PSNR and SSIM cannot see: x264's psychovisual rate-distortion (``psy-rd``), which keeps
texture energy at some cost in PSNR, needs ``subme`` >= 6 and so is off in ``faster`` and quicker
presets.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchlib import add_clip_arguments, clip_of

RATE = Fraction(24)  # nominal frame rate of the test encodes (x264's rate control reads it)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def upscaled_reference(clip: Path, folder: Path, *, model: str, backend: str):
    """The clip through ``vsr run`` (lossless, 4:4:4), decoded to yuv420p ``av.VideoFrame`` s."""
    import av

    from vsr.media.encode import EncodeSettings
    from vsr.media.options import VideoOptions
    from vsr.pipeline import VideoJob, run_video
    from vsr.compute import ComputeSpec

    upscaler = ComputeSpec(model=model, device="cpu", precision="auto", backend=backend, tile=0, batch=None, threads=None)()
    lossless = folder / "upscaled.mkv"
    settings = EncodeSettings(pix_fmt="yuv444p", preset="ultrafast", options=(("qp", "0"),))
    run_video(VideoJob(clip, lossless, video=VideoOptions(settings=settings)), upscaler)
    upscaler.engine.close()
    with av.open(str(lossless)) as container:
        return [frame.reformat(format="yuv420p") for frame in container.decode(video=0)]


def encode(frames, options: dict[str, str]) -> tuple[bytes, float]:
    """``frames`` through libx264 with ``options`` into Matroska in memory; (file, CPU seconds)."""
    import av

    buf = io.BytesIO()
    out = av.open(buf, "w", format="matroska")
    stream = out.add_stream("libx264", rate=RATE, options=options)
    stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
    started = cpu_seconds()
    for i, frame in enumerate(frames):
        frame.pts, frame.time_base = i, 1 / RATE  # decoded timestamps would be in the file's time base
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    seconds = cpu_seconds() - started
    out.close()
    return buf.getvalue(), seconds


def quality(data: bytes, reference: list[np.ndarray], ssim_every: int) -> tuple[float, float]:
    """Luma PSNR (over all frames' pixels) and mean SSIM (every ``ssim_every``-th frame) of ``data``."""
    import av
    from skimage.metrics import structural_similarity

    with av.open(io.BytesIO(data)) as container:
        decoded = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
    if len(decoded) != len(reference):
        raise RuntimeError(f"{len(decoded)} frames decoded, {len(reference)} encoded")
    mse = float(np.mean([np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(decoded, reference)]))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    ssim = float(np.mean([structural_similarity(a, b, data_range=255) for a, b in zip(decoded[::ssim_every], reference[::ssim_every])]))
    return psnr, ssim


def bd_rate(rates_a, quality_a, rates_b, quality_b) -> float:
    """Per cent more bitrate curve b needs than curve a for equal quality (Bjontegaard delta rate)."""
    fit_a = np.polyint(np.polyfit(quality_a, np.log(rates_a), 3))
    fit_b = np.polyint(np.polyfit(quality_b, np.log(rates_b), 3))
    low, high = max(min(quality_a), min(quality_b)), min(max(quality_a), max(quality_b))
    if high <= low:
        return float("nan")  # the curves share no quality range
    mean_a = (np.polyval(fit_a, high) - np.polyval(fit_a, low)) / (high - low)
    mean_b = (np.polyval(fit_b, high) - np.polyval(fit_b, low)) / (high - low)
    return float((np.exp(mean_b - mean_a) - 1) * 100)


def measure(frames, presets: list[str], crfs: list[int], ssim_every: int) -> list[dict]:
    """One row per (preset, CRF): CPU ms per frame, kbit/s at ``RATE``, PSNR, SSIM."""
    reference = [frame.to_ndarray(format="gray") for frame in frames]
    rows = []
    for preset in presets:
        for crf in crfs:
            data, seconds = encode(frames, {"preset": preset, "crf": str(crf), "threads": "1"})
            psnr, ssim = quality(data, reference, ssim_every)
            rows.append({
                "preset": preset, "crf": crf, "cpu_ms": seconds * 1000 / len(frames),
                "kbps": len(data) * 8 * float(RATE) / len(frames) / 1000, "psnr": psnr, "ssim": ssim,
            })
    return rows


def summary(rows: list[dict], presets: list[str], at_crf: int) -> list[dict]:
    """Per preset: BD-rate against the first preset (PSNR and SSIM) and the CPU at ``at_crf``."""
    def curve(preset: str, key: str):
        mine = [r for r in rows if r["preset"] == preset]
        return [r["kbps"] for r in mine], [r[key] for r in mine]

    out = []
    for preset in presets:
        at = next((r for r in rows if r["preset"] == preset and r["crf"] == at_crf), None)
        out.append({
            "preset": preset,
            "bd_rate_psnr": bd_rate(*curve(presets[0], "psnr"), *curve(preset, "psnr")),
            "bd_rate_ssim": bd_rate(*curve(presets[0], "ssim"), *curve(preset, "ssim")),
            "cpu_ms": None if at is None else at["cpu_ms"],
        })
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_arguments(parser)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--presets", default="medium,fast,faster,veryfast", help="x264 presets; the first is the BD-rate base")
    parser.add_argument("--crfs", type=_ints, default=[14, 16, 18, 20, 22], help="CRFs of each curve (at least 4 for the cubic fit)")
    parser.add_argument("--ssim-every", type=int, default=4, help="SSIM on every N-th frame (default 4)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    args = parser.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    if len(args.crfs) < 4:
        parser.error("--crfs needs at least 4 values (BD-rate fits a cubic)")

    with tempfile.TemporaryDirectory() as tmp:
        clip = clip_of(args, Path(tmp))
        frames = upscaled_reference(clip, Path(tmp), model=args.model, backend=args.backend)
    rows = measure(frames, presets, args.crfs, args.ssim_every)
    at_crf = 18 if 18 in args.crfs else args.crfs[len(args.crfs) // 2]
    table = summary(rows, presets, at_crf)
    head = {"clip": clip.name, "model": args.model, "size": f"{frames[0].width}x{frames[0].height}", "frames": len(frames)}
    if args.json:
        print(json.dumps({**head, "rows": rows, "summary": table}))
        return 0
    print(f"# x264 on {head['model']}'s output of {head['clip']}: {head['size']}, {head['frames']} frames, yuv420p, one encoder thread")
    print("| preset | CRF | CPU ms/frame | kbit/s | PSNR-Y dB | SSIM-Y |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['crf']} | {r['cpu_ms']:.2f} | {r['kbps']:.0f} | {r['psnr']:.2f} | {r['ssim']:.4f} |")
    print(f"\n| preset | BD-rate vs {presets[0]} (PSNR) | BD-rate (SSIM) | CPU ms/frame at CRF {at_crf} |")
    print("|---|---|---|---|")
    for s in table:
        cpu = "-" if s["cpu_ms"] is None else f"{s['cpu_ms']:.2f}"
        print(f"| {s['preset']} | {s['bd_rate_psnr']:+.1f} % | {s['bd_rate_ssim']:+.1f} % | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
