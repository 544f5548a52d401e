"""Choosing the device and the compute precision from user flags, and small device helpers."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from .errors import BackendUnavailable, UsageError

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


def choose_precision(precision: str, device_type: str, works: Callable[[torch.dtype], bool]) -> str:
    """The precision name a ``--precision`` value means on a ``device_type`` device.

    ``auto``: fp16 on CUDA (what users of every peer expect there), bf16 where fp16 does not run,
    fp32 when neither does, and fp32 on the CPU (fp16/bf16 convolutions are slow or missing there).
    ``works(dtype)`` says whether a dtype runs on the device; it is only asked for ``auto`` on CUDA.
    """
    if precision not in PRECISION_CHOICES:
        raise UsageError(f"--precision {precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "fp32"
    return next((name for name in ("fp16", "bf16") if works(PRECISIONS[name])), "fp32")


def resolve_dtype(precision: str, device: torch.device | None = None) -> torch.dtype:
    """``auto``/``fp32``/``fp16``/``bf16`` to a torch dtype; ``auto`` needs the ``device`` it runs on
    (without one it means the CPU's choice, fp32)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    return PRECISIONS[choose_precision(precision, device.type, lambda dtype: precision_works(device, dtype))]


def dtype_name(dtype: torch.dtype) -> str:
    """Inverse of :func:`resolve_dtype` for a concrete dtype."""
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
