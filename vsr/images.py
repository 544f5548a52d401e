"""Upscaling still images: one file, or every image of a folder into another folder.

Gray images go through the network as three equal channels and come back as one. Alpha is
upscaled by the network too (as a gray picture, in the same batch as the colours), like
Real-ESRGAN's default, or by plain bicubic resampling with ``alpha="resize"``. 16-bit inputs stay
16-bit end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, InputMissing, OutputError, UsageError, VsrError
from .kernels import quantize, to_float
from .media.image import IMAGE_FORMATS, image_format, read_image, write_image
from .files import check_name, check_output
from .upscale import Upscaler, resample

log = logging.getLogger(__name__)

ALPHA_MODES = ("model", "resize")


@dataclass(frozen=True)
class ImageTask:
    """One input image and where its result goes."""

    source: Path
    target: Path


def output_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """Final size for ``--outscale``: rounded, at least one pixel."""
    return max(1, round(height * outscale)), max(1, round(width * outscale))


def upscale_pixels(pixels: np.ndarray, upscaler: Upscaler, *, outscale: float | None = None, alpha: str = "model") -> np.ndarray:
    """Upscale ``(H, W, C)`` uint8/uint16 pixels; returns the same channel layout and dtype."""
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    height, width, channels = pixels.shape
    bits = 16 if pixels.dtype == np.uint16 else 8
    device = upscaler.engine.device
    # uint16 has few torch ops; int32 holds it exactly.
    data = torch.from_numpy(pixels.astype(np.int32) if bits == 16 else pixels).to(device)
    data = to_float(data.permute(2, 0, 1), bits)
    has_alpha = channels in (2, 4)
    colour, alpha_plane = (data[:-1], data[-1:]) if has_alpha else (data, None)
    frames = [colour.expand(3, -1, -1) if colour.shape[0] == 1 else colour]
    if alpha_plane is not None and alpha == "model":
        frames.append(alpha_plane.expand(3, -1, -1))
    out = upscaler(torch.stack(frames))
    out_h, out_w = out.shape[-2:]
    if outscale is not None:
        out_h, out_w = output_size(height, width, outscale)
        out = resample(out, out_h, out_w)
    result = [out[0].mean(0, keepdim=True) if colour.shape[0] == 1 else out[0]]
    if alpha_plane is not None:
        if alpha == "model":
            result.append(out[1].mean(0, keepdim=True))
        else:
            result.append(resample(alpha_plane[None].float(), out_h, out_w)[0])
    codes = quantize(torch.cat(result).permute(1, 2, 0), bits).cpu().numpy()
    return codes.astype(np.uint16 if bits == 16 else np.uint8)


def plan_tasks(source: Path, target: Path, *, overwrite: bool) -> list[ImageTask]:
    """Pair inputs with outputs and refuse conflicts before any work starts.

    A file input goes to ``target`` (or into it, when ``target`` is an existing folder). A folder
    input sends every image in it (not recursive, sorted) to the same name in ``target``.
    """
    if not source.exists():
        raise InputMissing(f"input {source} does not exist")
    check_name(target)
    if source.is_dir():
        if target.exists() and not target.is_dir():
            raise UsageError(f"input {source} is a folder, so the output must be a folder too, not the file {target}")
        if image_format(target) is not None and not target.exists():
            raise UsageError(f"input {source} is a folder but output {target} looks like an image file; give a folder")
        if target.exists() and target.resolve() == source.resolve():
            raise OutputError(f"output folder {target} is the input folder; the results would replace the originals")
        images = sorted(p for p in source.iterdir() if p.is_file() and image_format(p))
        if not images:
            raise InputError(f"input folder {source} holds no images ({', '.join(sorted(IMAGE_FORMATS))})")
        tasks = [ImageTask(p, target / p.name) for p in images]
    else:
        if image_format(source) is None:
            raise InputError(f"input {source} is not an image vsr reads ({', '.join(sorted(IMAGE_FORMATS))})")
        if target.is_dir():
            target = target / source.name
        elif image_format(target) is None:
            raise UsageError(f"output {target} has no image extension ({', '.join(sorted(IMAGE_FORMATS))})")
        tasks = [ImageTask(source, target)]
    for task in tasks:  # the real cause first: an output that is its own input
        check_output(task.target, overwrite=True, inputs=(task.source,))
    existing = [t.target for t in tasks if t.target.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise OutputError(f"output {existing[0]}{more} already exists; pass --overwrite to replace")
    for task in tasks:
        check_output(task.target, overwrite=overwrite, inputs=(task.source,))
    return tasks


def run_tasks(
    tasks: Iterable[ImageTask],
    upscaler: Upscaler,
    *,
    outscale: float | None = None,
    alpha: str = "model",
    overwrite: bool = False,
    keep_going: bool = True,
    on_done: Callable[[ImageTask], None] | None = None,
) -> list[tuple[ImageTask, VsrError]]:
    """Upscale every task. With ``keep_going`` an unreadable image is logged and skipped (the
    failures are returned); without it the error propagates."""
    failures = []
    with upscaler.glue_threads():
        for task in tasks:
            try:
                pixels = read_image(task.source)
                write_image(task.target, upscale_pixels(pixels, upscaler, outscale=outscale, alpha=alpha), overwrite=overwrite)
            except (InputError, InputMissing) as err:
                if not keep_going:
                    raise
                log.error("%s", err)
                failures.append((task, err))
            if on_done is not None:
                on_done(task)
    return failures
