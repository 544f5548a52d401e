#!/usr/bin/env python3
"""The perception-distortion trade-off of a PSNR model and the GAN model trained from it.

ESRGAN's network interpolation ``(1 - alpha) * PSNR + alpha * GAN`` (``vsr interp``) at alpha 0,
0.2, ..., 1, each scored with ``vsr eval`` (PSNR, SSIM, LPIPS, DISTS, NIQE against bicubic) on the
held-out pictures, with bicubic and any named models (Real-ESRGAN x4plus by default) as points.
Writes, from the two model files only:

* ``<out>/perception_tradeoff.json``: every score of every point (and, with ``--video``, the
  video's scores at alpha 0 and 1: against its frames, and of its own frames upscaled without a
  reference, ``vsr eval --no-reference``);
* ``<out>/perception_tradeoff.png``: PSNR against LPIPS and against NIQE (needs matplotlib);
* ``<out>/perception_crops.png``: a crop of each held-out picture as bicubic, the PSNR model, the
  GAN model and the ground truth, side by side (nearest-neighbour enlarged, so pixels stay pixels).

    python scripts/perception_tradeoff.py --psnr cpu_x4.safetensors --gan gan_x4.safetensors \\
        --val data/demo/val --video samples/sample.mp4 --out docs/

Needs ``vsr models fetch perceptual`` (LPIPS, DISTS, NIQE) and matplotlib (``vsr[plot]``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
KEYS = ("psnr", "ssim", "lpips", "dists", "niqe")


def score(model, folder: Path, metrics: tuple[str, ...], *, reference: bool = True) -> dict:
    from vsr.train.metrics import evaluate

    result = evaluate(model, folder, metrics=metrics, device="cpu", reference=reference)
    return {"mean": result.mean, "images": result.rows, "notes": result.notes}


def interpolated(psnr_path: Path, gan_path: Path, alpha: float):
    from vsr import models
    from vsr.models.interp import check_compatible, interpolate

    a, b = models.load(str(psnr_path)), models.load(str(gan_path))
    check_compatible(a.spec, b.spec)
    a.load_state_dict(interpolate(a.state_dict(), b.state_dict(), alpha))
    return a.eval()


def crops(models_by_name: dict[str, torch.nn.Module], folder: Path, out: Path, size: int = 96, zoom: int = 3) -> Path:
    """One row per held-out picture: bicubic | each model | ground truth, on a ``size`` px HR crop
    at the picture's most detailed place (highest gradient energy), enlarged ``zoom`` times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vsr.train.data import list_images, read_rgb, to_tensor
    from vsr.train.degrade import bicubic_downsample, bicubic_upsample

    paths = list_images(folder)
    names = ["bicubic", *models_by_name, "ground truth"]
    fig, axes = plt.subplots(len(paths), len(names), figsize=(2.4 * len(names), 2.5 * len(paths)), squeeze=False)
    for row, path in enumerate(paths):
        hr = to_tensor(read_rgb(path))[None]
        h, w = hr.shape[-2:]
        hr = hr[..., : h - h % 4, : w - w % 4]
        lr = bicubic_downsample(hr, 4)
        y, x = _detailed_spot(hr[0], size)
        pictures = [bicubic_upsample(lr, 4)]
        with torch.inference_mode():
            pictures += [model(lr).clamp(0, 1) for model in models_by_name.values()]
        pictures.append(hr)
        for col, (name, pic) in enumerate(zip(names, pictures, strict=True)):
            patch = pic[0, :, y : y + size, x : x + size].permute(1, 2, 0).numpy()
            patch = np.kron(patch, np.ones((zoom, zoom, 1)))
            ax = axes[row][col]
            ax.imshow(np.clip(patch, 0, 1), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(path.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _detailed_spot(hr: torch.Tensor, size: int) -> tuple[int, int]:
    grey = hr.mean(0)
    energy = (grey[1:, :-1] - grey[:-1, :-1]).abs() + (grey[:-1, 1:] - grey[:-1, :-1]).abs()
    pooled = torch.nn.functional.avg_pool2d(energy[None, None], size, stride=size // 4)[0, 0]
    iy, ix = divmod(int(pooled.argmax()), pooled.shape[1])
    return iy * (size // 4), ix * (size // 4)


def plot(points: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key in zip(axes, ("lpips", "niqe"), strict=True):
        line = [p for p in points if p["kind"] == "interp"]
        ax.plot([p["mean"][key] for p in line], [p["mean"]["psnr"] for p in line], marker="o", label="PSNR model -> GAN model")
        for p in line:
            ax.annotate(f"{p['alpha']:.1f}", (p["mean"][key], p["mean"]["psnr"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for p in points:
            if p["kind"] != "interp":
                ax.plot(p["mean"][key], p["mean"]["psnr"], marker="s" if p["kind"] == "bicubic" else "^", linestyle="", label=p["name"])
        ax.set_xlabel(f"{key.upper()} (lower looks more real)")
        ax.set_ylabel("PSNR (Y), dB (higher is closer)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("perception-distortion trade-off on the held-out photos (alpha: weight of the GAN model)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psnr", type=Path, required=True, help="the PSNR-stage model file")
    parser.add_argument("--gan", type=Path, required=True, help="the GAN-stage model file trained from it")
    parser.add_argument("--val", type=Path, required=True, help="held-out HR pictures (a folder)")
    parser.add_argument("--video", type=Path, help="a held-out video whose frames are scored too (alpha 0 and 1 only)")
    parser.add_argument("--reference", action="append", default=None, help="named models to place as points (default realesrgan-x4plus)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where the JSON and the pictures go")
    args = parser.parse_args(argv)
    references = args.reference if args.reference is not None else ["realesrgan-x4plus"]
    metrics = ("psnr", "ssim", "lpips", "dists", "niqe")
    points = []
    started = time.perf_counter()
    for alpha in ALPHAS:
        model = interpolated(args.psnr, args.gan, alpha)
        points.append({"kind": "interp", "name": f"alpha {alpha:.1f}", "alpha": alpha, **score(model, args.val, metrics)})
        print(f"alpha {alpha:.1f}: " + ", ".join(f"{k} {points[-1]['mean'][k]:.4f}" for k in KEYS), file=sys.stderr)
    first = points[0]["mean"]
    points.append({"kind": "bicubic", "name": "bicubic", "mean": {k: first[f"bicubic_{k}"] for k in KEYS}})
    for name in references:
        from vsr import models

        points.append({"kind": "reference", "name": name, **score(models.load(name), args.val, metrics)})
    video = video_inputs = None
    if args.video is not None:
        video = {f"alpha {a:.1f}": score(interpolated(args.psnr, args.gan, a), args.video, ("psnr", "ssim", "lpips", "dists", "tof", "warp_error"))["mean"]
                 for a in (0.0, 1.0)}
        # The video's own frames upscaled (vsr eval --no-reference): NIQE can score these, where the
        # frames made from downscaled ones may be too small for it.
        video_inputs = {f"alpha {a:.1f}": score(interpolated(args.psnr, args.gan, a), args.video, ("niqe", "warp_error"), reference=False)["mean"]
                        for a in (0.0, 1.0)}
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"psnr_model": str(args.psnr), "gan_model": str(args.gan), "val": str(args.val), "video": str(args.video) if args.video else None,
              "points": points, "video_scores": video, "video_no_reference": video_inputs, "seconds": round(time.perf_counter() - started, 1)}
    from vsr import files

    files.write_text(args.out / "perception_tradeoff.json", json.dumps(record, indent=1, default=float) + "\n")
    plot(points, args.out / "perception_tradeoff.png")
    crops({"PSNR model": interpolated(args.psnr, args.gan, 0.0), "GAN model": interpolated(args.psnr, args.gan, 1.0)}, args.val, args.out / "perception_crops.png")
    print(f"wrote {args.out / 'perception_tradeoff.json'}, perception_tradeoff.png, perception_crops.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
