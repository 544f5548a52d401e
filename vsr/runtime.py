"""From the compute flags of ``vsr run``/``vsr batch`` to an :class:`~vsr.upscale.Upscaler`.

One function, :func:`build_upscaler`, used by :class:`vsr.batch.run.UpscalerSpec` (and so by both
commands): it settles the thread count, the device (a torch device, plus OpenVINO's own device
name for ``--backend openvino``), the backend (``auto`` on the CPU by the measured rule of
:func:`vsr.engines.backends.choose_cpu_backend`), builds the engine and wraps it.

Threads. ``threads`` (``--threads N``) is how many cores vsr may use; None leaves the count as
it is (torch's default, all physical cores, or a batch worker's share set before). The network
gets all of them: the decode and encode threads run beside it, but at the frame sizes measured they
are idle most of the time (x264 and H.264 decoding at these sizes take a few per cent of a core
per frame against tens of milliseconds of network), so taking a core away from the network costs
more than it frees (measured: docs/BENCHMARKS.md, "Threads"). OpenVINO and onnxruntime get the
same count for their own thread pools; while they run the network, torch's own work drops to one
thread for the length of a run and of each Upscaler call (:meth:`vsr.upscale.Upscaler.glue_threads`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def apply_threads(threads: int | None) -> int:
    """Give the network ``threads`` CPU threads (None: leave torch's count); returns the count."""
    if threads is not None:
        if threads < 1:
            from .errors import UsageError

            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve_backend(backend: str, device_text: str) -> tuple[str, torch.device, str]:
    """(backend, torch device, OpenVINO device name) for ``--backend``/``--device``.

    An OpenVINO-only device name (``GPU``, ``GPU.N``, ``NPU``) with ``--backend auto`` means
    OpenVINO; with another backend it is a usage error. ``auto`` on the CPU follows
    :func:`~vsr.engines.backends.choose_cpu_backend` and is logged.
    """
    from .device import resolve_device
    from .engines.backends import BACKENDS, choose_backend, choose_cpu_backend
    from .engines.openvino_engine import is_openvino_only_device, openvino_device
    from .errors import UsageError

    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if is_openvino_only_device(device_text):
        if backend not in ("auto", "openvino"):
            raise UsageError(f"--device {device_text} is an OpenVINO device; use --backend openvino (or auto), or --device cpu/cuda")
        return "openvino", torch.device("cpu"), openvino_device(device_text)
    if backend == "openvino":
        if device_text.lower().startswith("cuda"):
            raise UsageError(f"--backend openvino runs on OpenVINO devices (CPU, GPU, NPU), not {device_text}; use --backend torch or tensorrt for CUDA")
        return "openvino", torch.device("cpu"), openvino_device(device_text)
    device = resolve_device(device_text)
    if backend == "auto" and device.type == "cpu":
        chosen = choose_cpu_backend()
        log.info("--backend auto on the CPU: %s (docs/BENCHMARKS.md, CPU backend choice)", chosen)
        if chosen == "torch":
            # Said at the default verbosity: the user did not choose torch, and the faster engine is one install away.
            log.warning('the network runs on torch on the CPU; pip install "vsr[openvino]" gives the faster OpenVINO backend '
                        "(1.05-1.15x on the CPU measured: docs/BENCHMARKS.md)")
        return chosen, device, "CPU"
    return choose_backend(backend, device), device, "CPU"


def build_upscaler(
    *,
    model: str,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    engine_path: str | None = None,
    tile: int = 0,
    tile_overlap: int = 16,
    batch: int | None = None,
    compile: bool | str = False,
    cuda_graphs: bool = False,
    threads: int | None = None,
):
    """The Upscaler the flags describe (see the module notes for threads and the backend)."""
    from .device import resolve_dtype
    from .engines.backends import create_engine
    from .upscale import DEFAULT_BATCH, Upscaler

    count = apply_threads(threads)
    chosen, torch_device, ov_device = resolve_backend(backend, device)
    if torch_device.type == "cpu":
        log.info("%d CPU thread(s) for the network (--threads; %d usable cores)", count, usable_cores())
    engine = create_engine(
        chosen, model_ref=model, device=torch_device, dtype=resolve_dtype(precision, torch_device, backend=chosen, ov_device=ov_device),
        engine_path=Path(engine_path) if engine_path else None, batch=batch or DEFAULT_BATCH, tile=tile,
        compile=compile, cuda_graphs=cuda_graphs, openvino_device=ov_device, threads=count if torch_device.type == "cpu" else None,
    )
    return Upscaler(engine, tile=tile, overlap=tile_overlap, batch=batch)
