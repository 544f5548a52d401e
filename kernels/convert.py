"""Integer pixels <-> float in [0, 1]."""

from __future__ import annotations

import torch


def max_value(bits: int) -> int:
    """Largest code value of an unsigned ``bits``-bit sample (255 for 8, 65535 for 16)."""
    return (1 << bits) - 1


def to_float(x: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer samples of ``bits`` bits to ``dtype`` in [0, 1].

    The division happens in float32 so 16-bit codes keep their precision before a cast to
    fp16/bf16.
    """
    return (x.to(torch.float32) / max_value(bits)).to(dtype)


def quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Float in [0, 1] to integer codes: ``clamp(floor(v * max + 0.5), 0, max)``.

    Computed in float32 (fp16 cannot hold 65535 exactly). Returns uint8 for 8 bits and int32 for
    more (torch's uint16 lacks most ops); callers cast when they hand the data to a codec.
    """
    top = max_value(bits)
    codes = torch.floor(x.to(torch.float32) * top + 0.5).clamp_(0, top)
    return codes.to(torch.uint8 if bits <= 8 else torch.int32)
