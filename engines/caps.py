"""What an engine can do, declared once when it is built: :class:`EngineCaps`.

Callers (the Upscaler, the pipeline, the CLI's summary line) read ``engine.caps`` instead of
probing engines for optional attributes, so a new backend cannot silently miss a capability: the
conformance tests check every engine's caps. Its own module (re-exported by :mod:`vsr.engines`)
because every backend module imports it while ``vsr.engines`` itself is still being imported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Shape4 = tuple[int, int, int, int]


@dataclass(frozen=True)
class EngineCaps:
    """The fixed facts of one engine.

    ``input_dtype``: the dtype ``engine(x)`` takes (also ``engine.dtype``); ``compute_dtype``: the
    precision the network runs in (they differ for OpenVINO, which takes float32 and may compute
    in bf16). ``device_label``: where it computes, for logs (``cuda:0``, or OpenVINO's ``CPU``/``NPU``).
    ``fixed_shape``: the one ``(N, C, H, W)`` the engine was built for (smaller tiles and any count
    still run, padded); ``min_shape``/``max_shape``: the range an optimisation profile accepts
    (TensorRT). ``cpu_thread_pool``: the network computes on the CPU in a thread pool of its own
    (OpenVINO, onnxruntime), so torch's threads only do the glue. ``concurrent``: the engine has a
    ``concurrent()`` context manager that may let several calls run at once (it yields how many).
    """

    input_dtype: torch.dtype
    compute_dtype: torch.dtype
    device_label: str
    fixed_shape: Shape4 | None = None
    min_shape: Shape4 | None = None
    max_shape: Shape4 | None = None
    cpu_thread_pool: bool = False
    concurrent: bool = False

    def __post_init__(self) -> None:
        if self.fixed_shape is not None and (self.min_shape is not None or self.max_shape is not None):
            raise ValueError("an engine has a fixed shape or a shape range, not both")
        if (self.min_shape is None) != (self.max_shape is None):
            raise ValueError("a shape range needs both min_shape and max_shape")

    @property
    def limits(self) -> tuple[int, int, int] | None:
        """(batch, height, width) the engine takes at most per call, or None when any shape goes."""
        largest = self.fixed_shape or self.max_shape
        return (largest[0], largest[2], largest[3]) if largest is not None else None

    @property
    def min_side(self) -> int:
        """The smallest input side the engine's shape range accepts (0: no lower bound of its own)."""
        return max(self.min_shape[2:]) if self.min_shape is not None else 0
