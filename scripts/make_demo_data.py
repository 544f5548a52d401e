#!/usr/bin/env python3
"""Write a small super-resolution data set from the colour photographs scikit-image ships.

    python scripts/make_demo_data.py data/demo

* ``DIR/hr/``: training pictures, 192x192 tiles cut from the training photographs (``TRAIN``);
  tiles with almost no detail (flat sky behind the rocket) are left out, so every training sample
  has something to learn from.
* ``DIR/val/``: the held-out photographs (``VAL``), whole. None of them, nor any crop of them, is in
  ``hr/``. ``samples/sample.mp4`` is made from these two photographs, so its frames are real video
  frames of content the training never saw.

The files are PNGs, the same bytes on every run. An existing file with other bytes is never
replaced (the script stops and says so) unless ``--overwrite`` is given; files it did not write are
left alone. Needs scikit-image (``pip install scikit-image``, or the ``test`` extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Colour photographs in scikit-image 0.26 that load without a download (skimage.data). Not used:
# the grayscale ones (camera, moon, ...), the drawings (colorwheel, logo), and retina, whose
# 192 px tiles are all below MIN_DETAIL.
TRAIN = ("chelsea", "rocket", "stereo_motorcycle", "immunohistochemistry", "hubble_deep_field")
VAL = ("astronaut", "coffee")
TILE = 192  # HR tile side: room for random 96..128 px crops at any of the 8 orientations
MIN_DETAIL = 4.0  # mean absolute luma gradient (0..255 scale) a tile needs to be kept


def photographs(names: tuple[str, ...]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB uint8) for each scikit-image photograph; stereo_motorcycle gives both views."""
    from skimage import data

    for name in names:
        img = getattr(data, name)()
        if name == "stereo_motorcycle":  # (left, right, disparity): two photographs of one scene
            yield "motorcycle_left", img[0]
            yield "motorcycle_right", img[1]
        else:
            yield name, img


def detail(rgb: np.ndarray) -> float:
    """Mean absolute horizontal + vertical difference of BT.601 luma, on the 0..255 scale."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return float(np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean())


def tiles(img: np.ndarray, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Non-overlapping ``size`` x ``size`` tiles (row, column, pixels), centred on the picture."""
    h, w = img.shape[:2]
    top, left = (h % size) // 2, (w % size) // 2
    for r in range(h // size):
        for c in range(w // size):
            y, x = top + r * size, left + c * size
            yield r, c, img[y : y + size, x : x + size]


def plan(root: Path) -> list[tuple[Path, np.ndarray, str]]:
    """Every file to write: (path, pixels, where it comes from)."""
    out = []
    for name, img in photographs(TRAIN):
        for r, c, tile in tiles(img, TILE):
            if detail(tile) >= MIN_DETAIL:
                out.append((root / "hr" / f"{name}_{r}_{c}.png", tile, name))
    for name, img in photographs(VAL):
        out.append((root / "val" / f"{name}.png", img, name))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python scripts/make_demo_data.py data/demo")
    parser.add_argument("dir", type=Path, help="folder to write hr/ and val/ into")
    parser.add_argument("--overwrite", action="store_true", help="replace files that hold other bytes")
    args = parser.parse_args(argv)
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("make_demo_data: error: scikit-image is not installed, so there are no photographs to use;"
              " pip install scikit-image (or pip install -e '.[test]')", file=sys.stderr)
        return 69
    from vsr import files
    from vsr.media.image import encode_image

    planned = [(path, encode_image(np.ascontiguousarray(pixels), "png"), pixels.shape, src) for path, pixels, src in plan(args.dir)]
    conflicts = [p for p, data, _, _ in planned if p.exists() and p.read_bytes() != data]
    if conflicts and not args.overwrite:
        print(f"make_demo_data: error: {len(conflicts)} files in {args.dir} hold other pictures (first {conflicts[0]});"
              " pass --overwrite to replace them, or give another folder", file=sys.stderr)
        return 73
    written = 0
    for path, data, _, _ in planned:
        if not (path.exists() and path.read_bytes() == data):
            files.write_bytes(path, data, overwrite=True)
            written += 1
    train = [f for f in planned if f[0].parent.name == "hr"]
    val = [f for f in planned if f[0].parent.name == "val"]
    sources = sorted({src for *_, src in train})
    print(f"{args.dir / 'hr'}: {len(train)} training tiles of {TILE}x{TILE} from {len(sources)} photographs"
          f" ({', '.join(f'{s} {sum(1 for *_, t in train if t == s)}' for s in sources)})")
    print(f"{args.dir / 'val'}: {len(val)} held-out photographs ("
          + ", ".join(f"{p.name} {shape[1]}x{shape[0]}" for p, _, shape, _ in val) + ")")
    print(f"{written} files written, {len(planned) - written} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
