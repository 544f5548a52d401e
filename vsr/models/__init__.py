"""Networks, their specs, checkpoint loading and the named pretrained models.

``load("realesrgan-x4plus")`` or ``load("path/to/file.pth")`` gives an eval-mode fp32 CPU model
with a ``.spec`` (:class:`ModelSpec`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import InputMissing
from . import checkpoint, zoo
from .registry import ARCHITECTURES, build
from .rrdbnet import RRDBNet
from .spec import ModelSpec
from .srvgg import SRVGGNetCompact

__all__ = ["ARCHITECTURES", "ModelSpec", "RRDBNet", "SRVGGNetCompact", "build", "load", "resolve"]


def resolve(ref: str) -> str | Path:
    """A named model's name, or the path of an existing checkpoint file."""
    if ref in zoo.ZOO:
        return ref
    path = Path(ref).expanduser()
    if path.exists():
        return path
    raise InputMissing(
        f"model {ref!r} is neither a named model ({', '.join(zoo.ZOO)}) nor an existing file; "
        "run `vsr models` to list the names"
    )


def load(ref: str) -> nn.Module:
    """Load a named model or a checkpoint file (any supported layout)."""
    target = resolve(ref)
    if isinstance(target, Path):
        return checkpoint.load_model(target)
    return zoo.load_named(target)
