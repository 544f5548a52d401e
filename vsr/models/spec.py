"""``ModelSpec``: what the rest of vsr needs to know about a network, carried with every model.

The tiler, the pipeline and the engines read the spec instead of special-casing architectures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about one network instance.

    ``params`` are the keyword arguments that rebuild the network from its registry entry;
    two models with the same ``arch`` and ``params`` have state dicts of identical shapes.
    """

    arch: str
    params: tuple[tuple[str, Any], ...]
    scale: int
    in_channels: int
    out_channels: int
    # Input height and width must be multiples of this (pixel-unshuffle models need 2 or 4);
    # the tiler pads to it.
    multiple_of: int = 1
    # Smallest input side the network accepts after padding.
    min_size: int = 1
    dtypes: tuple[str, ...] = DTYPES
    # Fully convolutional, so overlapping tiles blended together reproduce the whole image.
    tileable: bool = True
    # Rough peak number of activation values per input pixel during inference (batch 1),
    # used to pick a tile size that fits in memory. Calibrated against measured peaks.
    activation_per_pixel: float = field(default=0.0, compare=False)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The hyper-parameters as a dict, for ``registry.build(spec.arch, **spec.kwargs)``."""
        return dict(self.params)

    def describe(self) -> str:
        """Short human description, e.g. ``RRDBNet x4 (num_feat=64, num_block=23, ...)``."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.arch} x{self.scale} ({inner})"
