"""Choosing the device and the compute precision from user flags."""

from __future__ import annotations

import re

import torch

from .errors import BackendUnavailable, UsageError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
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


def resolve_dtype(precision: str) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` to a torch dtype."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise UsageError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """Inverse of :func:`resolve_dtype`."""
    return next(name for name, dt in PRECISIONS.items() if dt == dtype)
