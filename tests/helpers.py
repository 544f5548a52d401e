"""Test helpers: real photographs, PSNR, small random models, and foreign checkpoint layouts."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vsr.models import RRDBNet, SRVGGNetCompact

def run(capsys, *argv) -> tuple[int, str]:
    """``vsr ARGV`` in-process; returns the exit code and what went to stderr."""
    from vsr.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    """The error output must be exactly one ``vsr: error: ...`` line; returns it."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vsr: error: ")
    return lines[0]


def leftovers(folder) -> list[str]:
    """Names of temporary or lock files vsr left in ``folder`` (and ``.partial`` files, which
    older versions wrote)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".vsr-tmp", ".vsr-lock", ".partial")))


def photo(name: str) -> np.ndarray:
    """A real photograph shipped with scikit-image (RGB uint8, or gray for ``camera``)."""
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)())


def crop(name: str, y: int, x: int, h: int, w: int) -> np.ndarray:
    img = photo(name)
    out = img[y : y + h, x : x + w]
    return np.ascontiguousarray(out if out.ndim == 3 else out[..., None])


#: (photograph, top, left) of two crops of different real photographs: what the engine tests feed
#: their networks.
TWO_PHOTOS = (("astronaut", 100, 180), ("chelsea", 60, 130))


def photos(h: int = 40, w: int = 48, crops: Sequence[tuple[str, int, int]] = TWO_PHOTOS) -> torch.Tensor:
    """Float ``(len(crops), 3, h, w)`` in [0, 1]: the ``h`` x ``w`` crop of a real photograph at each
    ``(name, top, left)`` of ``crops``."""
    return torch.stack([torch.from_numpy(crop(name, y, x, h, w)).permute(2, 0, 1).float() / 255 for name, y, x in crops])


#: file name in hr/ -> (photograph, top, left): the small training set the CLI and install tests use.
SMALL_TRAINING_SET = {"0.png": ("astronaut", 40, 160), "1.png": ("coffee", 60, 200), "2.png": ("chelsea", 20, 100)}


def write_training_photos(
    root: Path,
    train: Mapping[str, tuple[str, int, int]] = SMALL_TRAINING_SET,
    size: int = 64,
    val: tuple[str, int, int, int] = ("rocket", 100, 150, 64),
) -> Path:
    """A training data folder of real photographs; returns ``root``.

    ``root/hr/<file>``: the ``size`` x ``size`` crop at ``(photograph, top, left)`` for each file of
    ``train``; ``root/val/<photograph>.png``: the held-out square crop ``val`` =
    ``(photograph, top, left, size)``.
    """
    from vsr.media.image import write_image

    (root / "hr").mkdir(parents=True, exist_ok=True)
    (root / "val").mkdir(exist_ok=True)
    for file, (name, y, x) in train.items():
        write_image(root / "hr" / file, crop(name, y, x, size, size))
    name, y, x, side = val
    write_image(root / "val" / f"{name}.png", crop(name, y, x, side, side))
    return root


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 255.0) -> float:
    """PSNR in dB between two arrays of the same range."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    mse = torch.mean((a - b) ** 2).item()
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def tiny_rrdb(scale: int = 4, seed: int = 0, **kw) -> RRDBNet:
    """A small random RRDBNet (DESIGN.md section 10: nb=1, nf=8, gc=4 unless overridden)."""
    torch.manual_seed(seed)
    params = dict(num_feat=8, num_block=1, num_grow_ch=4, scale=scale) | kw
    model = RRDBNet(**params).eval()
    _randomise(model, seed)
    return model


def tiny_srvgg(upscale: int = 4, seed: int = 0, **kw) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    model = SRVGGNetCompact(**(dict(num_feat=8, num_conv=2, upscale=upscale) | kw)).eval()
    _randomise(model, seed)
    return model


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # Default init leaves biases tiny and PReLU slopes equal; make every tensor distinct so a
    # mis-mapped tensor changes the output.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)




# --------------------------------------------------------------------------- foreign layouts
# Written from the layouts' descriptions (DESIGN.md section 9), independently of vsr's loader.


def to_old_arch(sd: dict, num_upsample: int) -> dict:
    """BasicSR names -> original ESRGAN ``model.N`` sequential names."""
    num_block = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    out = {}
    for key, value in sd.items():
        name, kind = key.rsplit(".", 1)
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)", name):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{kind}"] = value
        elif name == "conv_first":
            out[f"model.0.{kind}"] = value
        elif name == "conv_body":
            out[f"model.1.sub.{num_block}.{kind}"] = value
        elif m := re.fullmatch(r"conv_up(\d)", name):
            out[f"model.{3 * int(m[1])}.{kind}"] = value
        elif name == "conv_hr":
            out[f"model.{2 + 3 * num_upsample}.{kind}"] = value
        elif name == "conv_last":
            out[f"model.{4 + 3 * num_upsample}.{kind}"] = value
        else:
            raise KeyError(key)
    return out


def to_new_arch(sd: dict) -> dict:
    """BasicSR names -> ESRGAN repo "new arch" names (RRDB_trunk, trunk_conv, upconvN, HRconv)."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", key)
        key = re.sub(r"^conv_body\.", "trunk_conv.", key)
        key = re.sub(r"^conv_up(\d)\.", r"upconv\1.", key)
        key = re.sub(r"^conv_hr\.", "HRconv.", key)
        out[key] = value
    return out


WRAPPERS = ("plain", "params_ema", "params", "state_dict", "model", "net", "module")


def wrap(sd: dict, how: str) -> dict:
    """Wrap a state dict the way training code in the wild saves it."""
    if how == "plain":
        return sd
    if how == "module":
        return {f"module.{k}": v for k, v in sd.items()}
    if how == "params_ema":
        # Real-ESRGAN files hold both; the EMA weights are the ones to use.
        return {"params_ema": sd, "params": {k: torch.zeros_like(v) for k, v in sd.items()}}
    if how == "state_dict":
        return {"state_dict": sd, "epoch": 12, "optimizer": {"lr": torch.tensor(1e-4)}}
    return {how: sd}


class LimitedMemoryEngine:
    """Wraps a real engine and raises torch's OutOfMemoryError above a pixel budget per call.

    A CPU cannot be made to run out of memory safely in a test; this stands in for the device limit
    so the fallback logic (not torch) is what is tested.
    """

    def __init__(self, engine, max_pixels: int):
        self.inner, self.max_pixels, self.calls = engine, max_pixels, []
        self.spec, self.device, self.dtype = engine.spec, engine.device, engine.dtype
        # One call at a time: the wrapper has no concurrent() of its own.
        self.caps = dataclasses.replace(engine.caps, concurrent=False)

    def __call__(self, x):
        self.calls.append(tuple(x.shape))
        if x.shape[0] * x.shape[-1] * x.shape[-2] > self.max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory (test budget)")
        return self.inner(x)

    def close(self):
        self.inner.close()


def package_folders() -> dict:
    """Installed package name -> its source folder, from pyproject's ``package-dir`` mapping
    (``vsr`` = vsr/, ``vsr.engines`` = engines/, ``vsr.kernels`` = kernels/)."""
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    mapping = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {package: repo / folder for package, folder in mapping.items()}


def run_bench_script(script: str, folder, vsr_home, *args: str, seed: int = 1) -> dict:
    """``python scripts/<script> --model <tiny SRVGG checkpoint> ARGS --json`` as a user runs it
    (a fresh process, ``VSR_HOME`` set, the checkout on ``PYTHONPATH``); its JSON line, parsed.
    Fails the test on a non-zero exit, with the script's stderr."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    model = Path(folder) / f"tiny-{seed}.pth"
    torch.save({"params_ema": tiny_srvgg(seed=seed).state_dict()}, model)
    env = dict(os.environ, VSR_HOME=str(vsr_home), PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / script), "--model", str(model), *args, "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
