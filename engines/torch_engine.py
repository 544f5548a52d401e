"""Eager PyTorch backend: the reference every other backend is compared against."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..device import dtype_name

log = logging.getLogger(__name__)


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


class TorchEngine:
    """Runs a ``torch.nn.Module`` (carrying ``.spec``) on one device in one precision.

    The model is deep-copied onto the device, so the caller's CPU model stays untouched and several
    engines can share one loaded checkpoint.
    """

    def __init__(self, model: nn.Module, *, device: torch.device, dtype: torch.dtype = torch.float32):
        if not precision_works(device, dtype):
            # DESIGN.md section 6: fall back with a warning rather than crash inside a conv.
            log.warning("%s convolutions are not supported on %s in this torch build; using fp32", dtype_name(dtype), device)
            dtype = torch.float32
        self.spec = model.spec
        self.device = device
        self.dtype = dtype
        self._model: nn.Module | None = _copy_to(model, device, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("TorchEngine used after close()")
        with torch.inference_mode():
            return self._model(x.to(device=self.device, dtype=self.dtype))

    def close(self) -> None:
        self._model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"TorchEngine({self.spec.describe()}, device={self.device}, dtype={dtype_name(self.dtype)})"


def _copy_to(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    import copy

    clone = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone
