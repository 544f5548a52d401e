"""The explicit registry of network architectures vsr can build. No import-time scanning."""

from __future__ import annotations

from typing import Any

from torch import nn

from .rrdbnet import RRDBNet
from .srvgg import SRVGGNetCompact

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "RRDBNet": RRDBNet,
    "SRVGGNetCompact": SRVGGNetCompact,
}


def build(arch: str, **params: Any) -> nn.Module:
    """Instantiate ``arch`` with keyword hyper-parameters; the result carries ``.spec``."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}") from None
    return cls(**params)
