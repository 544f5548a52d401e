"""PSNR and SSIM on the Y channel, and ``evaluate`` for ``vsr eval`` (which adds the perceptual
metrics of :mod:`vsr.perceptual.scores`: LPIPS, DISTS, NIQE, and tOF and the warping error on
videos).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..perceptual.scores import PICTURE_METRICS, SEQUENCE_METRICS, to_uint8
from .degrade import bicubic_downsample, bicubic_upsample

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
    """Per-picture rows and their mean, for the model (or the pictures of ``--sr``) and for the
    bicubic baseline (keys ``bicubic_<metric>``); a video's temporal metrics are in ``mean`` (and
    ``sequence`` says which frames they were measured on)."""

    rows: list[dict[str, Any]]
    mean: dict[str, float | None]
    scale: int
    model: str
    crop: int
    notes: list[str] = field(default_factory=list)
    sequence: dict[str, Any] | None = None
    reference: bool = True  # False: the pictures were inputs with no ground truth (--no-reference)

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "scale": self.scale, "crop_border": self.crop, "reference": self.reference,
               "images": self.rows, "mean": self.mean}
        if self.reference:
            out["channel"] = "Y (BT.601)"
        if self.sequence is not None:
            out["sequence"] = self.sequence
        if self.notes:
            out["notes"] = self.notes
        return out

    def to_json(self) -> str:
        """The result as standard JSON: a non-finite number (the PSNR of identical pictures) is null."""
        return json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False)

    def format_table(self) -> str:
        """A plain-text table for the terminal: one row per picture, the mean, then the temporal
        metrics of a video; each metric for the model and for bicubic (lower is better for all
        but PSNR and SSIM)."""
        if not self.reference:
            return self._format_no_reference()
        extra = [k for k in PICTURE_METRICS if k in self.mean]
        width = max([len("image"), len("mean")] + [len(r["name"]) for r in self.rows])
        head = f"{'image':<{width}}  {'size':>11}  {'PSNR':>7}  {'SSIM':>6}" + "".join(f"  {k.upper():>7}" for k in extra)
        head += f"  {'bicubic':>7}  {'SSIM':>6}" + "".join(f"  {k.upper():>7}" for k in extra) + f"  {'gain':>6}"
        lines = [f"{self.model}, x{self.scale}, Y channel, border {self.crop} px; left: the model, right: bicubic", head, "-" * len(head)]

        def fmt(name: str, size: str, r: dict[str, Any]) -> str:
            ours = "".join(f"  {_num(r.get(k))}" for k in extra)
            theirs = "".join(f"  {_num(r.get('bicubic_' + k))}" for k in extra)
            return (f"{name:<{width}}  {size:>11}  {r['psnr']:7.2f}  {r['ssim']:6.4f}{ours}  {r['bicubic_psnr']:7.2f}"
                    f"  {r['bicubic_ssim']:6.4f}{theirs}  {r['psnr'] - r['bicubic_psnr']:+6.2f}")

        for r in self.rows:
            lines.append(fmt(r["name"], f"{r['width']}x{r['height']}", r))
        lines.append("-" * len(head))
        lines.append(fmt("mean", f"{len(self.rows)} images", self.mean))
        lines.extend(self._sequence_and_notes())
        return "\n".join(lines)

    def _format_no_reference(self) -> str:
        extra = [k for k in PICTURE_METRICS if k in self.mean]
        width = max([len("image"), len("mean")] + [len(r["name"]) for r in self.rows])
        head = f"{'image':<{width}}  {'output':>11}" + "".join(f"  {k.upper():>7}  {'bicubic':>7}" for k in extra)
        lines = [f"{self.model}, x{self.scale}, no reference: the pictures are the inputs; border {self.crop} px; lower is better", head, "-" * len(head)]

        def fmt(name: str, size: str, r: dict[str, Any]) -> str:
            return f"{name:<{width}}  {size:>11}" + "".join(f"  {_num(r.get(k))}  {_num(r.get('bicubic_' + k))}" for k in extra)

        lines.extend(fmt(r["name"], f"{r['width']}x{r['height']}", r) for r in self.rows)
        lines.append("-" * len(head))
        lines.append(fmt("mean", f"{len(self.rows)} images", self.mean))
        lines.extend(self._sequence_and_notes())
        return "\n".join(lines)

    def _sequence_and_notes(self) -> list[str]:
        lines = []
        if self.sequence is not None:
            seq = self.sequence
            lines.append(f"frames {seq['first']}-{seq['first'] + seq['frames'] - 1} in a row: "
                         + ", ".join(f"{k} {self.mean[k]:.4g} (bicubic {self.mean['bicubic_' + k]:.4g})" for k in SEQUENCE_METRICS if k in self.mean))
        lines.extend(f"note: {n}" for n in self.notes)
        return lines


def _num(v: float | None) -> str:
    return f"{'n/a':>7}" if v is None else f"{v:7.4f}"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


VIDEO_FRAMES = 24  # frames taken evenly across a video handed to evaluate (and in a row, for tOF/warp)

Loader = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class _Picture:
    """One measured picture: its label, the HR loader, an LR partner file, and the upscaled
    picture someone else made (``--sr``)."""

    name: str
    hr: Loader
    lr: Path | None = None
    sr: Loader | None = None


def _is_video(path: Path) -> bool:
    from .data import is_image

    return path.is_file() and not is_image(path)


def _image_loader(path: Path) -> Loader:
    from .data import read_rgb, to_tensor

    return lambda: to_tensor(read_rgb(path))[None]


def _frame_loaders(frames: list[np.ndarray]) -> list[Loader]:
    from .data import to_float_rgb, to_tensor

    return [lambda a=a: to_tensor(to_float_rgb(a))[None] for a in frames]


def _pictures(hr: Path, lr_dir: str | Path | None, sr: Path | None, scale: int, frames: int, total: int | None) -> list[_Picture]:
    """What ``evaluate`` measures: a folder, one image, or ``frames`` frames spread across a video
    of ``total`` frames; with ``sr``, each paired with the picture of the same name (or the video's
    same frame)."""
    from ..errors import InputError, InputMissing, UsageError
    from .data import is_image, list_images, pair_folders, spread_indices, video_frame_count, video_frames_at

    if hr.is_file():
        if lr_dir is not None:
            raise UsageError(f"--lr-dir pairs two folders, but {hr} is a file; leave --lr-dir out (LR is made by bicubic downscaling)")
        if is_image(hr):
            if sr is not None and (not sr.is_file() or not is_image(sr)):
                raise UsageError(f"--sr {sr}: for the image {hr}, give the upscaled image")
            return [_Picture(hr.name, _image_loader(hr), sr=_image_loader(sr) if sr is not None else None)]
        if not total:
            raise InputError(f"video {hr} has no video frames to evaluate")
        wanted = spread_indices(total, frames)
        decoded = _frame_loaders(video_frames_at(hr, wanted))  # real decoded frames, converted with the stream's matrix
        theirs: list[Loader | None] = [None] * len(decoded)
        if sr is not None:
            if not _is_video(sr):
                raise UsageError(f"--sr {sr}: for the video {hr}, give the upscaled video")
            theirs_total = video_frame_count(sr)
            if theirs_total != total:
                raise InputError(f"--sr {sr} has {theirs_total} frames and {hr} {total}; they must be the same clip, frame for frame")
            theirs = _frame_loaders(video_frames_at(sr, wanted))
        return [_Picture(f"{hr.name}#{k}", load, sr=mine) for k, (load, mine) in zip(wanted, zip(decoded, theirs, strict=True), strict=True)]
    if lr_dir is not None:
        found = [_Picture(h.relative_to(hr).as_posix(), _image_loader(h), lr) for h, lr in pair_folders(hr, lr_dir, scale, what="eval")]
    else:
        found = [_Picture(p.relative_to(hr).as_posix(), _image_loader(p)) for p in list_images(hr, what="HR folder")]
    if not found:
        raise InputError(f"HR folder {hr} holds no images to evaluate (png, jpg, webp, tif)")
    if sr is None:
        return found
    if not sr.is_dir():
        raise UsageError(f"--sr {sr}: for the HR folder {hr}, give the folder of upscaled pictures (same names)")
    theirs_by_name = {p.relative_to(sr).with_suffix("").as_posix(): p for p in list_images(sr, what="--sr folder")}
    paired = []
    for pic in found:
        match = theirs_by_name.get(Path(pic.name).with_suffix("").as_posix())
        if match is None:
            raise InputMissing(f"--sr folder {sr} has no picture named like {pic.name}; it needs one upscaled picture per HR picture")
        paired.append(_Picture(pic.name, pic.hr, pic.lr, _image_loader(match)))
    return paired


def _crop_like(picture: torch.Tensor, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """An upscaled picture of the uncropped HR size, cropped like the HR picture was (to a
    multiple of the scale); other sizes are left for :func:`_check_same_size` to refuse."""
    extra_h, extra_w = picture.shape[-2] - hr.shape[-2], picture.shape[-1] - hr.shape[-1]
    if 0 <= extra_h < scale and 0 <= extra_w < scale:
        return picture[..., : hr.shape[-2], : hr.shape[-1]]
    return picture


def _measured(hr: torch.Tensor, lr_path: Path | None, theirs: Loader | None, *, scale: int, upscale, where: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(the HR picture cropped to a multiple of the scale, the picture measured as uint8 HWC,
    bicubic's as uint8 HWC). LR is ``lr_path``'s picture or HR bicubic-downscaled; the measured
    picture is the model's (``upscale``) or, with ``theirs``, another tool's at the HR size."""
    from .data import read_rgb, to_tensor

    if lr_path is not None:
        lr = to_tensor(read_rgb(lr_path))[None]
    else:
        h, w = hr.shape[-2:]
        hr = hr[..., : h - h % scale, : w - w % scale]
        lr = bicubic_downsample(hr, scale)
    if theirs is not None:
        out = _check_same_size(_crop_like(theirs(), hr, scale), hr, where)
    else:
        with torch.inference_mode():
            out = upscale(lr).float().cpu()
    return hr, to_uint8(out), to_uint8(bicubic_upsample(lr, scale))


def _upscaled(picture: torch.Tensor, theirs: Loader | None, *, scale: int, upscale, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(the upscaled ``picture`` as uint8 HWC: the model's or, with ``theirs``, another tool's,
    which must be ``scale`` times its size; bicubic's) for a measurement without ground truth."""
    from ..errors import InputError

    if theirs is not None:
        out = theirs()
        want = (picture.shape[-2] * scale, picture.shape[-1] * scale)
        if tuple(out.shape[-2:]) != want:
            raise InputError(f"{where} is {out.shape[-1]}x{out.shape[-2]} but its input upscaled x{scale} is {want[1]}x{want[0]}; give pictures of that size (or the right --scale)")
    else:
        with torch.inference_mode():
            out = upscale(picture).float().cpu()
    return to_uint8(out), to_uint8(bicubic_upsample(picture, scale))


def _check_same_size(sr: torch.Tensor, hr: torch.Tensor, where: str) -> torch.Tensor:
    """An upscaled picture from elsewhere must have the HR picture's size (or the size cropped to
    a multiple of the scale, which vsr's own LR gives)."""
    from ..errors import InputError

    if sr.shape[-2:] != hr.shape[-2:]:
        raise InputError(f"{where} is {sr.shape[-1]}x{sr.shape[-2]} but its HR picture is {hr.shape[-1]}x{hr.shape[-2]}; give pictures of the HR size")
    return sr


def evaluate(
    model: nn.Module | str | None,
    hr_dir: str | Path,
    lr_dir: str | Path | None = None,
    *,
    sr: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    scale: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    tile: int = 0,
    progress: Any = None,
    upscale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    frames: int = VIDEO_FRAMES,
    reference: bool = True,
) -> EvalResult:
    """PSNR/SSIM (Y, border = scale) and the perceptual metrics of ``model`` (or of the pictures
    in ``sr``) on the pictures in ``hr_dir``, beside the bicubic baseline.

    ``hr_dir`` is a folder of HR pictures, one image file, or a video file (``frames`` frames
    spread evenly across it, decoded and converted to RGB as ``vsr run`` does, are the HR
    pictures; tOF and the warping error are measured on its first ``frames`` frames in a row).
    LR inputs come from ``lr_dir`` (same names, HR = LR * scale) or, without it, from antialiased
    bicubic downscaling of the HR picture (cropped to a multiple of the scale) rounded to 8 bits.
    The model output is rounded to 8 bits before measuring, as a saved picture would be. ``model`` is
    a module with ``.spec`` or a name/path for :func:`vsr.models.load`; ``None`` with ``sr``, the
    upscaled pictures another tool made (a folder with the same names, an image, or a video with
    the same frames; ``scale`` then defaults to 4 and is only used for the bicubic baseline and the
    border). ``metrics`` names the metrics to take (``None``: every one that can run here; see
    :func:`vsr.perceptual.scores.choose`). ``progress`` is an optional
    :class:`vsr.progress.Progress` (start/update/close), counted in pictures.

    ``reference`` False (``--no-reference``): the pictures of ``hr_dir`` are not ground truth but
    the inputs themselves (a real video to upscale, with nothing to compare to). They are upscaled
    whole (or ``sr`` holds another tool's upscale of them, ``scale`` times their size) and scored by
    what needs no ground truth: NIQE, and on a video the warping error along the input's own
    motion (the flow is computed on the input frames, as Lai et al. do); bicubic beside them.
    """
    from ..errors import InputMissing, UsageError
    from ..perceptual import scores
    from .data import video_frame_count

    hr_dir = Path(hr_dir).expanduser()
    if not hr_dir.exists():
        raise InputMissing(f"{hr_dir} does not exist; give a folder of HR pictures, an image or a video")
    if sr is not None:
        if model is not None or upscale is not None:
            raise UsageError("--sr scores pictures another tool made; leave out --model")
        sr = Path(sr).expanduser()
        if not sr.exists():
            raise InputMissing(f"--sr {sr} does not exist; give the upscaled pictures (a folder, an image or a video)")
        scale = scale or 4
        name = f"pictures in {sr}"
    else:
        if model is None:
            raise UsageError("evaluate needs a model or the pictures to score (sr)")
        name = model if isinstance(model, str) else getattr(getattr(model, "spec", None), "describe", lambda: type(model).__name__)()
        if isinstance(model, str):
            from .. import models

            model = models.load(model)
        spec = model.spec
        if scale is not None and scale != spec.scale:
            raise UsageError(f"--scale {scale} does not match the model, which upscales x{spec.scale}; leave --scale out")
        scale = spec.scale
    if not reference and lr_dir is not None:
        raise UsageError("--lr-dir pairs LR pictures with HR ones; with --no-reference the pictures given are the inputs")
    video = _is_video(hr_dir)
    total = video_frame_count(hr_dir) if video else None  # counted once: pictures and the sequence use it
    if metrics is not None and reference:
        metrics = tuple(m for m in metrics if m not in ("psnr", "ssim"))  # always measured against a reference
    choice = scores.choose(metrics, video=video, reference=reference)
    pictures = _pictures(hr_dir, lr_dir, sr, scale, frames, total)

    if upscale is None and sr is None:
        from ..compute import resolve_precision
        from ..device import resolve_device
        from ..engines import TorchEngine
        from ..upscale import Upscaler

        dev = device if isinstance(device, torch.device) else resolve_device(device)
        engine = TorchEngine(model, device=dev, dtype=resolve_precision(precision, dev))
        upscale = Upscaler(engine, tile=tile)
    scorer = scores.PictureScorer(choice.picture, crop_border=scale)

    rows = []
    if progress is not None:
        progress.start(len(pictures))
    try:
        for done, pic in enumerate(pictures, 1):
            where = str(hr_dir / pic.name if hr_dir.is_dir() else hr_dir)
            score = _scored if reference else _scored_without_reference
            rows.append({"name": pic.name, **score(pic, scorer, scale=scale, upscale=upscale, where=where)})
            if progress is not None:
                progress.update(done)
    finally:
        if progress is not None:
            progress.close()
    keys = ["psnr", "ssim", *choice.picture] if reference else list(choice.picture)
    mean: dict[str, float | None] = {}
    for key in (*keys, *(f"bicubic_{k}" for k in keys)):
        values = [r[key] for r in rows if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    notes = [choice.note] if choice.note else []
    if "niqe" in choice.picture and any(r.get("niqe") is None for r in rows):
        notes.append(f"NIQE needs pictures of at least {scores.NIQE_MIN_SIDE + 2 * scale} pixels a side (one 96x96 block after the {scale}-pixel border); smaller ones are n/a")
    sequence = None
    if video and choice.sequence:
        window = min(total, max(frames, *scores.MIN_FRAMES.values()))
        short = [m for m in choice.sequence if window < scores.MIN_FRAMES[m]]
        if short and metrics is not None:
            raise UsageError(f"--metrics {short[0]} needs a video of at least {scores.MIN_FRAMES[short[0]]} frames; {hr_dir} has {total}")
        notes.extend(f"{m} not measured: {hr_dir} has {total} frames, {m} needs {scores.MIN_FRAMES[m]}" for m in short)
        measured = tuple(m for m in choice.sequence if m not in short)
        if measured:
            sequence = _sequence_metrics(hr_dir, sr, measured, scale, window, upscale, reference=reference)
            mean.update({k: v for k, v in sequence.items() if k != "frames"})
    return EvalResult(rows=rows, mean=mean, scale=scale, model=str(name), crop=scale, notes=notes,
                      sequence={"first": 0, "frames": sequence["frames"]} if sequence else None, reference=reference)


def _scored(pic: _Picture, scorer, *, scale: int, upscale, where: str) -> dict[str, Any]:
    """One picture's row against its ground truth: size, PSNR/SSIM and the perceptual metrics, the
    model's (or ``pic.sr``'s) and bicubic's."""
    from ..errors import InputError

    hr, sr8, bic8 = _measured(pic.hr(), pic.lr, pic.sr, scale=scale, upscale=upscale, where=where)
    if min(hr.shape[-2:]) - 2 * scale < SSIM_WINDOW:
        need = SSIM_WINDOW + 2 * scale
        raise InputError(f"{where} is too small to evaluate at x{scale}: it needs at least {need}x{need} pixels")
    row = {
        "width": int(hr.shape[-1]),
        "height": int(hr.shape[-2]),
        "psnr": psnr_y(sr8, hr, crop=scale),
        "ssim": ssim_y(sr8, hr, crop=scale),
        "bicubic_psnr": psnr_y(bic8, hr, crop=scale),
        "bicubic_ssim": ssim_y(bic8, hr, crop=scale),
    }
    row.update(scorer(sr8, hr))
    row.update({f"bicubic_{k}": v for k, v in scorer(bic8, hr).items()})
    return row


def _scored_without_reference(pic: _Picture, scorer, *, scale: int, upscale, where: str) -> dict[str, Any]:
    """One input picture's row without ground truth: the upscaled size and the metrics that need
    none, the model's (or ``pic.sr``'s) and bicubic's."""
    sr8, bic8 = _upscaled(pic.hr(), pic.sr, scale=scale, upscale=upscale, where=where)
    row = {"width": int(sr8.shape[1]), "height": int(sr8.shape[0])}
    row.update(scorer(sr8, None))
    row.update({f"bicubic_{k}": v for k, v in scorer(bic8, None).items()})
    return row


def _sequence_metrics(hr_path: Path, sr_path: Path | None, metrics: Sequence[str], scale: int, frames: int, upscale, *, reference: bool = True) -> dict[str, Any]:
    """tOF and the warping error on the first ``frames`` frames of the video, in a row: the model's
    (or ``sr_path``'s same frames) and bicubic's, against the HR frames; without a ``reference``,
    the video's frames are the inputs, and the warping error follows their motion."""
    from ..perceptual.scores import score_sequence
    from .data import video_frames_at

    wanted = list(range(frames))
    truth = _frame_loaders(video_frames_at(hr_path, wanted))
    theirs = _frame_loaders(video_frames_at(sr_path, wanted)) if sr_path is not None else None
    hr_frames, ours, bicubic = [], [], []
    for k, load in enumerate(truth):
        where = f"{sr_path} frame {k}"
        if reference:
            hr, out, bic = _measured(load(), None, theirs[k] if theirs else None, scale=scale, upscale=upscale, where=where)
        else:
            hr = load()  # the input frame: the flow is computed on it
            out, bic = _upscaled(hr, theirs[k] if theirs else None, scale=scale, upscale=upscale, where=where)
        hr_frames.append(to_uint8(hr))
        ours.append(out)
        bicubic.append(bic)
    result: dict[str, Any] = {"frames": len(hr_frames)}
    result.update(score_sequence(metrics, ours, hr_frames))
    result.update({f"bicubic_{k}": v for k, v in score_sequence(metrics, bicubic, hr_frames).items()})
    return result
