"""Torch's CPU thread count: the one place vsr sets it.

Threads. ``--threads N`` is how many cores vsr may use; None leaves the count as it is (torch's
default, all physical cores, or a batch worker's share set before). The network gets all of them:
the decode and encode threads run beside it, but at the frame sizes measured they are idle most
of the time (x264 and H.264 decoding at these sizes take a few per cent of a core per frame
against tens of milliseconds of network), so taking a core away from the network costs more than
it frees (measured: docs/BENCHMARKS.md, "Threads"). OpenVINO and onnxruntime get the same count
for their own thread pools (:func:`vsr.compute.resolve`); while they run the network, torch's own
work drops to one thread for the length of a run and of each Upscaler call
(:meth:`vsr.upscale.Upscaler.glue_threads`), and an eager torch engine on the CPU halves it while
two compute threads share the cores (:meth:`vsr.engines.TorchEngine.concurrent`).

torch's count is process-wide: :func:`apply_threads` sets it for good (the CLI, a batch worker, a
training data-loader worker), :func:`torch_threads` for the length of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .errors import UsageError


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> int | None:
    """``threads`` when it is None or at least 1; else the ``--threads`` usage error."""
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    return threads


def apply_threads(threads: int | None) -> int:
    """Give torch ``threads`` CPU threads from now on (None: leave its count); returns the count."""
    if check_threads(threads) is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on ``threads`` CPU threads inside the block; its count before is put back afterwards."""
    before = torch.get_num_threads()
    if threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
