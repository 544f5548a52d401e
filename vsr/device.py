"""Devices and precisions: the one table of precision names, the ``--device`` parser, and the
pure rules :func:`vsr.compute.resolve` uses to choose a precision."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from .errors import BackendUnavailable, UsageError


# The precision names every flag, config key and engine uses, and their torch dtypes.
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# --precision values: a dtype, or "auto" (the default): see choose_precision.
PRECISION_CHOICES = ("auto", *PRECISIONS)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_device(text: str) -> str:
    """Validate a ``--device`` value (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    if not _DEVICE.fullmatch(text):
        raise UsageError(f"--device {text!r} is not auto, cpu, cuda or cuda:N")
    return text


def resolve_device(text: str) -> torch.device:
    """Turn a ``--device`` value into a usable ``torch.device``; a missing GPU is exit 69."""
    text = parse_device(text)
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"--device {text} asked for a GPU but torch sees no CUDA device; use --device cpu")
    index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise BackendUnavailable(f"--device {text}: only {count} CUDA device(s) (0..{count - 1}) are visible")
    return torch.device("cuda", index)


def precision_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a 3x3 convolution runs in ``dtype`` on ``device`` (CPU fp16 is missing in some builds)."""
    if dtype == torch.float32:
        return True
    try:
        conv = nn.Conv2d(3, 4, 3, padding=1).to(device=device, dtype=dtype)
        with torch.inference_mode():
            conv(torch.zeros(1, 3, 8, 8, device=device, dtype=dtype))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512_BF16 or AMX), by torch's own probe.

    Private torch functions (``torch.cpu._is_avx512_bf16_supported``, ``_is_amx_tile_supported``)
    that have been there since torch 2.2; a build without them answers False, so fp32 stays.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(probe()) for probe in probes if probe is not None)
    except RuntimeError:
        return False


def choose_precision(
    precision: str, device_type: str, works: Callable[[torch.dtype], bool], *, cpu_bf16: bool = False,
) -> str:
    """The precision name a ``--precision`` value means on a ``device_type`` device.

    ``auto``: fp16 on CUDA (what users of every peer expect there), bf16 where fp16 does not run,
    fp32 when neither does. On the CPU: bf16 when ``cpu_bf16`` (the CPU multiplies bf16 in
    hardware and the backend runs it: measured 1.9-2.2x the fp32 speed at 55-57 dB against fp32,
    docs/BENCHMARKS.md; OpenVINO's CPU plugin makes the same choice by default), else fp32.
    ``works(dtype)`` says whether a dtype runs on the device; it is only asked for ``auto`` on CUDA.
    """
    if precision not in PRECISION_CHOICES:
        raise UsageError(f"--precision {precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "bf16" if cpu_bf16 else "fp32"
    return next((name for name in ("fp16", "bf16") if works(PRECISIONS[name])), "fp32")


def dtype_name(dtype: torch.dtype) -> str:
    """The :data:`PRECISIONS` name of a concrete dtype (``torch.float16`` -> ``fp16``)."""
    return next(name for name, dt in PRECISIONS.items() if dt == dtype)


def to_device_once(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of the small host tensor ``host`` resident on ``device``, for callers that cache it
    (the CPU gets ``host`` itself). The copy goes through pinned memory and is waited for here, so
    the cached tensor is complete for every stream that reads it later; cached, that wait happens
    once, not on every use."""
    device = torch.device(device)
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device)
