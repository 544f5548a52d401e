"""PSNR and SSIM on the Y channel, and ``evaluate`` for ``vsr eval``.

The conventions are those of the super-resolution literature (ESRGAN's tables are "PSNR/SSIM on
the Y channel"): luma as MATLAB's ``rgb2ycbcr`` computes it for BT.601,
``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1] (so Y is on the 0..255 scale,
kept in float, as BasicSR does); ``scale`` pixels are cropped from every border; SSIM uses the
standard 11x11 Gaussian window with sigma 1.5 and K1 = 0.01, K2 = 0.03 on the 255 range, averaged
over the positions where the window fits (Wang et al. 2004).

Pictures handed to the metrics are ``(H, W, 3)`` numpy arrays (uint8, uint16, or float in [0, 1])
or ``(3, H, W)`` / ``(1, 3, H, W)`` float tensors in [0, 1].
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def _rgb01(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any supported picture -> ``(H, W, 3)`` float64 in [0, 1]."""
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"one picture at a time, got a batch of {t.shape[0]}")
            t = t[0]
        return t.double().permute(1, 2, 0).numpy()
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    return arr.astype(np.float64)


def rgb_to_y(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """BT.601 luma on the 0..255 scale, as MATLAB ``rgb2ycbcr`` (float, not rounded)."""
    rgb = _rgb01(img)
    return 16.0 + rgb[..., 0] * 65.481 + rgb[..., 1] * 128.553 + rgb[..., 2] * 24.966


def _crop(y: np.ndarray, border: int) -> np.ndarray:
    return y[border:-border, border:-border] if border > 0 else y


def _pair(a, b, crop: int) -> tuple[np.ndarray, np.ndarray]:
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    if ya.shape != yb.shape:
        raise ValueError(f"pictures differ in size: {ya.shape[::-1]} vs {yb.shape[::-1]}")
    return _crop(ya, crop), _crop(yb, crop)


def psnr_y(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, *, crop: int = 0) -> float:
    """PSNR in dB of the Y channels (peak 255) after cropping ``crop`` pixels from each border."""
    ya, yb = _pair(a, b, crop)
    mse = float(np.mean((ya - yb) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def ssim_y(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, *, crop: int = 0) -> float:
    """Mean SSIM of the Y channels (0..255 range), 11x11 Gaussian window (sigma 1.5), valid positions only."""
    ya, yb = _pair(a, b, crop)
    if min(ya.shape) < SSIM_WINDOW:
        raise ValueError(f"picture {ya.shape[::-1]} after the border crop is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window")
    window = torch.from_numpy(gaussian_window()).view(1, 1, SSIM_WINDOW, SSIM_WINDOW)
    x = torch.from_numpy(np.stack([ya, yb, ya * ya, yb * yb, ya * yb])[:, None])
    mu_a, mu_b, aa, bb, ab = F.conv2d(x, window)[:, 0]
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    """Per-picture rows and their mean: the model's PSNR/SSIM and the bicubic baseline's."""

    rows: list[dict[str, Any]]
    mean: dict[str, float]
    scale: int
    model: str
    crop: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "scale": self.scale, "crop_border": self.crop, "channel": "Y (BT.601)",
                "images": self.rows, "mean": self.mean}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        """A plain-text table for the terminal, one row per picture and the mean at the end."""
        width = max([len("image"), len("mean")] + [len(r["name"]) for r in self.rows])
        head = f"{'image':<{width}}  {'size':>11}  {'PSNR':>7}  {'SSIM':>6}  {'bicubic':>7}  {'SSIM':>6}  {'gain':>6}"
        lines = [f"model {self.model}, x{self.scale}, Y channel, border {self.crop} px", head, "-" * len(head)]

        def fmt(name: str, size: str, r: dict[str, float]) -> str:
            return (f"{name:<{width}}  {size:>11}  {r['psnr']:7.2f}  {r['ssim']:6.4f}  {r['bicubic_psnr']:7.2f}"
                    f"  {r['bicubic_ssim']:6.4f}  {r['psnr'] - r['bicubic_psnr']:+6.2f}")

        for r in self.rows:
            lines.append(fmt(r["name"], f"{r['width']}x{r['height']}", r))
        lines.append("-" * len(head))
        lines.append(fmt("mean", f"{len(self.rows)} images", self.mean))
        return "\n".join(lines)


def _quantize_hwc(t: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` float -> ``(H, W, 3)`` uint8, as the picture would be saved."""
    return t[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


VIDEO_FRAMES = 24  # frames taken evenly across a video handed to evaluate


def _pictures(hr: Path, lr_dir: str | Path | None, scale: int, frames: int) -> list[tuple[str, Callable[[], torch.Tensor], Path | None]]:
    """What ``evaluate`` measures: (name, HR loader, LR partner) for a folder, one image, or a video."""
    from ..errors import InputError, UsageError
    from .data import is_image, list_images, pair_folders, read_rgb, sample_video_frames, to_float_rgb, to_tensor

    def image(path: Path) -> Callable[[], torch.Tensor]:
        return lambda: to_tensor(read_rgb(path))[None]

    if hr.is_file():
        if lr_dir is not None:
            raise UsageError(f"--lr-dir pairs two folders, but {hr} is a file; leave --lr-dir out (LR is made by bicubic downscaling)")
        if is_image(hr):
            return [(hr.name, image(hr), None)]
        decoded = sample_video_frames(hr, frames)  # a video: real decoded frames, converted with the stream's matrix
        return [(f"{hr.name}#{k}", lambda a=a: to_tensor(to_float_rgb(a))[None], None) for k, a in enumerate(decoded)]
    if lr_dir is not None:
        return [(h.relative_to(hr).as_posix(), image(h), lr) for h, lr in pair_folders(hr, lr_dir, scale, what="eval")]
    found = [(p.relative_to(hr).as_posix(), image(p), None) for p in list_images(hr, what="HR folder")]
    if not found:
        raise InputError(f"HR folder {hr} holds no images to evaluate (png, jpg, webp, tif)")
    return found


def evaluate(
    model: nn.Module | str,
    hr_dir: str | Path,
    lr_dir: str | Path | None = None,
    *,
    scale: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    tile: int = 0,
    progress: Any = None,
    upscale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    frames: int = VIDEO_FRAMES,
) -> EvalResult:
    """PSNR/SSIM (Y, border = scale) of ``model`` on the pictures in ``hr_dir``, with the bicubic baseline.

    ``hr_dir`` is a folder of HR pictures, one image file, or a video file (``frames`` frames
    spread evenly across it, decoded and converted to RGB as ``vsr run`` does, are the HR pictures).
    LR inputs come from ``lr_dir`` (same names, HR = LR * scale) or, without it, from antialiased
    bicubic downscaling of the HR picture (cropped to a multiple of the scale) rounded to 8 bits.
    The model output is rounded to 8 bits before measuring, as a saved picture would be. ``model`` is
    a module with ``.spec`` or a name/path for :func:`vsr.models.load`. ``progress`` is an optional
    :class:`vsr.progress.Progress` (start/update/close), counted in pictures.
    """
    from ..errors import InputError, UsageError
    from .degrade import bicubic_downsample, bicubic_upsample
    from .data import read_rgb, to_tensor

    name = model if isinstance(model, str) else getattr(getattr(model, "spec", None), "describe", lambda: type(model).__name__)()
    if isinstance(model, str):
        from .. import models

        model = models.load(model)
    spec = model.spec
    if scale is not None and scale != spec.scale:
        raise UsageError(f"--scale {scale} does not match the model, which upscales x{spec.scale}; leave --scale out")
    scale = spec.scale
    hr_dir = Path(hr_dir).expanduser()
    if not hr_dir.exists():
        from ..errors import InputMissing

        raise InputMissing(f"{hr_dir} does not exist; give a folder of HR pictures, an image or a video")
    pictures = _pictures(hr_dir, lr_dir, scale, frames)

    if upscale is None:
        from ..device import resolve_device, resolve_dtype
        from ..engines import TorchEngine
        from ..upscale import Upscaler

        dev = device if isinstance(device, torch.device) else resolve_device(device)
        engine = TorchEngine(model, device=dev, dtype=resolve_dtype(precision))
        runner = Upscaler(engine, tile=tile)
        upscale = runner
    rows = []
    if progress is not None:
        progress.start(len(pictures))
    try:
        for done, (label, load_hr, lr_path) in enumerate(pictures, 1):
            hr = load_hr()
            if lr_path is not None:
                lr = to_tensor(read_rgb(lr_path))[None]
            else:
                h, w = hr.shape[-2:]
                hr = hr[..., : h - h % scale, : w - w % scale]
                lr = bicubic_downsample(hr, scale)
            if min(lr.shape[-2:]) * scale - 2 * scale < SSIM_WINDOW:
                need = SSIM_WINDOW + 2 * scale
                where = hr_dir / label if hr_dir.is_dir() else hr_dir
                raise InputError(f"{where} is too small to evaluate at x{scale}: it needs at least {need}x{need} pixels")
            with torch.inference_mode():
                sr = upscale(lr).float().cpu()
            sr8, bic8 = _quantize_hwc(sr), _quantize_hwc(bicubic_upsample(lr, scale))
            rows.append({
                "name": label,
                "width": int(hr.shape[-1]),
                "height": int(hr.shape[-2]),
                "psnr": psnr_y(sr8, hr, crop=scale),
                "ssim": ssim_y(sr8, hr, crop=scale),
                "bicubic_psnr": psnr_y(bic8, hr, crop=scale),
                "bicubic_ssim": ssim_y(bic8, hr, crop=scale),
            })
            if progress is not None:
                progress.update(done)
    finally:
        if progress is not None:
            progress.close()
    keys = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return EvalResult(rows=rows, mean=mean, scale=scale, model=str(name), crop=scale)
