"""Inference backends (importable as ``vsr.engines``).

Every backend follows the :class:`Engine` protocol: ``engine(x) -> y`` on device tensors of shape
``(batch, channels, h, w)`` in the engine's ``dtype`` (its input dtype), a ``spec``
(:class:`vsr.models.ModelSpec`), its declared capabilities ``caps`` (:class:`EngineCaps`), and
``close()``. The tiler and the pipelines only talk to this protocol.

Backends: ``torch`` (eager PyTorch, CPU or CUDA). Heavy optional backends import their package
inside the backend and raise exit-69 errors naming the package when it is missing.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..models.spec import ModelSpec
from .caps import EngineCaps
from .torch_engine import TorchEngine

__all__ = ["Engine", "EngineCaps", "TorchEngine"]


@runtime_checkable
class Engine(Protocol):
    """A compiled or eager network bound to a device and a precision."""

    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype  # what __call__ takes; caps.compute_dtype is what the network runs in
    caps: EngineCaps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on ``x`` (on ``device``, in ``dtype``); returns the upscaled batch."""
        ...

    def close(self) -> None:
        """Release device memory and handles; the engine is unusable afterwards."""
        ...
