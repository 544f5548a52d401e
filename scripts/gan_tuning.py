#!/usr/bin/env python3
"""How examples/train_gan_cpu.toml's length and schedule were chosen: on tuning pictures only.

The GAN recipe must be judged on the held-out photographs (data/demo/val) and on
samples/sample.mp4, so nothing may be tuned on them. This script trains the recipe's variants
from the PSNR model with validation every ``--every`` steps on a third set: scikit-image's camera,
retina, grass, gravel, brick, moon and clock (neither trained on nor held out; the grayscale ones
as three equal channels), and prints each variant's PSNR, LPIPS and NIQE against step 0 (the PSNR
model). A run folder that already holds a finished run is read, not trained again.

    python scripts/gan_tuning.py --work runs/gan_tuning --json docs/gan_tuning.json

Needs the PSNR model of examples/train_cpu.toml (runs/train_cpu), ``vsr models fetch perceptual``
and scikit-image. Each variant is a full GAN-stage run (about 15-20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "train_gan_cpu.toml"
TUNING = ("camera", "retina", "grass", "gravel", "brick", "moon", "clock")
# name -> (steps, extra --set overrides)
VARIANTS = {
    "constant-1200": (1200, ["train.schedule=\"constant\""]),
    "cosine-1000": (1000, ["train.schedule=\"cosine\""]),
}


def tuning_set(folder: Path) -> Path:
    """Write the tuning pictures as PNGs (RGB, cropped to a multiple of 4) into ``folder``."""
    from skimage import data

    from vsr.media.image import write_image

    folder.mkdir(parents=True, exist_ok=True)
    for name in TUNING:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        h, w = img.shape[:2]
        target = folder / f"{name}.png"
        if not target.exists():
            write_image(target, np.ascontiguousarray(img[: h - h % 4, : w - w % 4, :3]))
    return folder


def validation_rows(run: Path) -> list[dict]:
    return [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if row.get("kind") == "val"]


def train(run: Path, val: Path, steps: int, extra: list[str], every: int) -> None:
    sets = [f"data.val={json.dumps(str(val))}", f"val.every={every}", f"train.steps={steps}", f"checkpoint.every={steps}",
            f"checkpoint.dir={json.dumps(str(run))}", *extra]
    cmd = [sys.executable, "-m", "vsr", "train", "--config", str(RECIPE), "--progress", "none"]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/gan_tuning"), help="tuning pictures and run folders")
    parser.add_argument("--every", type=int, default=200, help="validate every N steps (default 200)")
    parser.add_argument("--json", type=Path, help="write every validation row here too")
    args = parser.parse_args(argv)
    val = tuning_set(args.work / "pictures")
    record = {}
    for name, (steps, extra) in VARIANTS.items():
        run = args.work / name
        rows = validation_rows(run) if (run / "metrics.jsonl").exists() else []
        if not rows or rows[-1]["step"] != steps:
            train(run, val, steps, extra, args.every)
            rows = validation_rows(run)
        record[name] = rows
        base = rows[0]
        print(f"\n{name} (step 0 = the PSNR model)\n| step | PSNR | LPIPS | NIQE |\n|---|---|---|---|")
        for row in rows:
            print(f"| {row['step']} | {row['psnr']:.2f} ({row['psnr'] - base['psnr']:+.2f} dB) | {row['lpips']:.4f} "
                  f"({100 * (row['lpips'] / base['lpips'] - 1):+.1f} %) | {row['niqe']:.2f} ({row['niqe'] - base['niqe']:+.2f}) |")
    if args.json:
        from vsr import files

        files.write_text(args.json, json.dumps({"tuning_pictures": list(TUNING), "recipe": str(RECIPE.name), "variants": record}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
