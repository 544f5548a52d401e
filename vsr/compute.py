"""The compute decision of ``vsr run`` and ``vsr batch``: one typed spec, resolved once, then built.

:class:`ComputeSpec` is the compute flags as one frozen value: the CLI builds it from its
arguments, ``vsr batch`` pickles it into every worker (calling it builds the Upscaler there).
:func:`resolve` is the only place that turns ``auto`` into choices and refuses impossible
combinations: it decides the backend, the torch device (and OpenVINO's own device name), the
dtype and the thread count, reading what each backend supports from :data:`BACKENDS`, so every
refusal happens before anything is loaded or built. :func:`build_engine` then only builds, with
the backend's own builder.

Precision. ``auto`` is fp16 on CUDA (bf16 where fp16 does not run, fp32 when neither does); on the
CPU bf16 for a backend that runs it (:attr:`BackendInfo.cpu_bf16`) on a CPU that multiplies bf16 in
hardware, else fp32 (:func:`vsr.device.choose_precision`). Two fallbacks need the built runtime
and stay in the engines, which report them in ``engine.caps.compute_dtype``: a torch build without
a precision's CPU convolutions (TorchEngine runs fp32), an OpenVINO device that does not list the
precision among its capabilities (fp32). An ``--engine`` file runs in its own type, which is
logged when it differs from the precision asked for.

Threads: see :mod:`vsr.runtime`; ``--threads`` is applied once here, and the same count goes to
OpenVINO's and onnxruntime's own pools on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .device import PRECISIONS, choose_precision, cpu_has_fast_bf16, dtype_name, precision_works, resolve_device
from .engines import Engine
from .engines.backends import NPU_TILE, cached_onnx, choose_cpu_backend, gpu_backend
from .errors import UsageError
from .runtime import apply_threads, check_threads, usable_cores
from .upscale import DEFAULT_BATCH, Upscaler

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class ComputeSpec:
    """The compute flags of ``vsr run``/``vsr batch``, small enough to pickle into a worker.

    Calling it builds the Upscaler (:func:`build_upscaler`); :meth:`for_worker` spreads workers
    over the GPUs when the device is ``auto``/``cuda`` and there are several; :meth:`fingerprint`
    is what a batch manifest records of it (what changes the output).
    """

    model: str = "realesrgan-x4plus"
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    engine_path: str | None = None
    tile: int = 0
    tile_overlap: int = 16
    batch: int | None = None  # None: chosen by frame size on the CPU (vsr.upscale.cpu_batch)
    compile: bool | str = False
    cuda_graphs: bool = False
    threads: int | None = None  # cores vsr may use (None: torch's default, or a worker's share)

    def __call__(self) -> Upscaler:
        return build_upscaler(self)

    def for_worker(self, index: int) -> ComputeSpec:
        """This spec for batch worker ``index``: no thread count of its own (the pool has split
        ``--threads``, or the cores, between the workers) and, with several GPUs, GPU ``index``."""
        self = replace(self, threads=None)
        if self.device not in ("auto", "cuda"):
            return self
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return replace(self, device=f"cuda:{index % count}") if count > 1 else self

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change the output (not where it runs, nor on how many threads), with a
        model file's size and time; the same dict as before this class had its name, so batch
        manifests written then still resume."""
        out = asdict(self)
        out.pop("device")
        out.pop("threads")
        model = Path(self.model)
        if model.is_file():
            st = model.stat()
            out["model_file"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return out


# --------------------------------------------------------------------------- what each backend supports


@dataclass(frozen=True)
class Resolved:
    """The decisions :func:`resolve` made for a :class:`ComputeSpec`: the backend, the torch
    device (the host for OpenVINO, whose own device name is ``ov_device``), the dtype the engine is
    built in, and torch's CPU thread count."""

    spec: ComputeSpec
    backend: str
    device: torch.device
    ov_device: str
    dtype: torch.dtype
    threads: int

    @property
    def engine_threads(self) -> int | None:
        """Threads for an engine's own CPU pool (OpenVINO, onnxruntime); None off the CPU."""
        return self.threads if self.device.type == "cpu" else None

    @property
    def batch(self) -> int:
        """Inputs per call the engine is built for (TensorRT's profile, an NPU's static shape)."""
        return self.spec.batch or DEFAULT_BATCH


def _build_torch(r: Resolved) -> Engine:
    from . import models
    from .engines.torch_engine import TorchEngine

    return TorchEngine(models.load(r.spec.model), device=r.device, dtype=r.dtype, compile=r.spec.compile, cuda_graphs=r.spec.cuda_graphs)


def _build_onnxruntime(r: Resolved) -> Engine:
    from . import models
    from .engines.ort_engine import OrtEngine

    if r.spec.engine_path is not None:
        source = Path(r.spec.engine_path)
    else:
        source = cached_onnx(models.load(r.spec.model), fp16=r.dtype == torch.float16)
    return OrtEngine(source, device=r.device, threads=r.engine_threads)


def _build_tensorrt(r: Resolved) -> Engine:
    """``tile`` N builds for batches of N x N tiles; ``tile`` 0 builds per input size on first use
    (:mod:`vsr.engines.trt_frames`), so video frames go through whole wherever the memory allows."""
    from . import models
    from .engines.trt_build import BuildConfig, engine_from_onnx
    from .engines.trt_common import import_trt
    from .engines.trt_runtime import TrtEngine

    import_trt()  # exit 69 with the install hint before any export work
    if r.spec.engine_path is not None:
        return TrtEngine.from_file(Path(r.spec.engine_path), device=r.device)
    model = models.load(r.spec.model)
    fp16 = r.dtype == torch.float16
    onnx_path = cached_onnx(model, fp16=fp16)
    if r.spec.tile:
        config = BuildConfig(batch=r.batch, tile=(r.spec.tile, r.spec.tile), fp16=fp16)
        return engine_from_onnx(onnx_path, config, spec=model.spec, device=r.device)
    from .engines.trt_frames import trt_frame_engine

    return trt_frame_engine(onnx_path, spec=model.spec, device=r.device, fp16=fp16, batch=r.batch)


def _build_openvino(r: Resolved) -> Engine:
    """``tile`` also sets the static shape OpenVINO needs on an NPU."""
    from . import models
    from .engines.openvino_engine import OpenVinoEngine, import_openvino

    import_openvino()  # exit 69 with the install hint before the model loads
    model = models.load(r.spec.model)
    shape = None
    if r.ov_device == "NPU":  # NPUs compile static shapes only
        side = r.spec.tile or NPU_TILE
        shape = (r.batch, model.spec.in_channels, side, side)
    return OpenVinoEngine(model, device=r.ov_device, dtype=r.dtype, threads=r.engine_threads, shape=shape)


@dataclass(frozen=True)
class BackendInfo:
    """What one backend supports, and its builder.

    ``precisions``: what it builds from ``--model`` (a file given with ``--engine`` runs in its own
    type); ``precision_refusal``: the usage error for another one. ``engine_refusal``: the usage
    error for ``--engine`` (empty: it takes engine files). ``torch_options``: ``--compile`` and
    ``--cuda-graphs`` apply. ``cpu_bf16``: ``--precision auto`` may pick bf16 on a CPU that
    multiplies bf16 in hardware (onnxruntime and TensorRT take fp32/fp16 exports only).
    """

    name: str
    precisions: tuple[str, ...]
    build: Callable[[Resolved], Engine]
    precision_refusal: str = ""
    engine_refusal: str = ""
    torch_options: bool = False
    cpu_bf16: bool = False


_ENGINE_FILES = "--engine is for --backend onnxruntime or tensorrt"
BACKENDS: dict[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo("torch", tuple(PRECISIONS), _build_torch, engine_refusal=f"{_ENGINE_FILES}; torch runs --model directly",
                    torch_options=True, cpu_bf16=True),
        BackendInfo("onnxruntime", ("fp32", "fp16"), _build_onnxruntime,
                    precision_refusal="onnxruntime runs fp32 or fp16 exports; use --precision fp32/fp16, or --backend torch for bf16"),
        BackendInfo("tensorrt", ("fp32", "fp16"), _build_tensorrt,
                    precision_refusal="the TensorRT path builds fp16 or fp32 engines; use --fp16, or --backend torch for bf16"),
        BackendInfo("openvino", tuple(PRECISIONS), _build_openvino,
                    engine_refusal=f"{_ENGINE_FILES}; OpenVINO converts --model itself (cached)", cpu_bf16=True),
    )
}
#: ``--backend`` values.
BACKEND_CHOICES = ("auto", *BACKENDS)


# --------------------------------------------------------------------------- resolving


def choose_backend(backend: str, device_text: str) -> tuple[str, torch.device, str]:
    """(backend, torch device, OpenVINO device name) for ``--backend``/``--device``.

    An OpenVINO-only device name (``GPU``, ``GPU.N``, ``NPU``) with ``--backend auto`` means
    OpenVINO; with another backend it is a usage error. ``auto`` is TensorRT on a GPU where it is
    installed, else torch; on the CPU it follows :func:`~vsr.engines.backends.choose_cpu_backend`
    and is logged.
    """
    from .engines.openvino_engine import is_openvino_only_device, openvino_device

    if backend not in BACKEND_CHOICES:
        raise UsageError(f"--backend {backend}: choose one of {', '.join(BACKEND_CHOICES)}")
    if is_openvino_only_device(device_text):
        if backend not in ("auto", "openvino"):
            raise UsageError(f"--device {device_text} is an OpenVINO device; use --backend openvino (or auto), or --device cpu/cuda")
        return "openvino", torch.device("cpu"), openvino_device(device_text)
    if backend == "openvino":
        if device_text.lower().startswith("cuda"):
            raise UsageError(f"--backend openvino runs on OpenVINO devices (CPU, GPU, NPU), not {device_text}; use --backend torch or tensorrt for CUDA")
        return "openvino", torch.device("cpu"), openvino_device(device_text)
    device = resolve_device(device_text)
    if backend != "auto":
        return backend, device, "CPU"
    if device.type != "cpu":
        return gpu_backend(), device, "CPU"
    chosen = choose_cpu_backend()
    log.info("--backend auto on the CPU: %s (docs/BENCHMARKS.md, CPU backend choice)", chosen)
    if chosen == "torch":
        # Said at the default verbosity: the user did not choose torch, and the faster engine is one install away.
        log.warning('the network runs on torch on the CPU; pip install "vsr[openvino]" gives the faster OpenVINO backend '
                    "(1.05-1.15x on the CPU measured: docs/BENCHMARKS.md)")
    return chosen, device, "CPU"


def resolve_precision(precision: str, device: torch.device | None = None, *, backend: str = "torch", ov_device: str = "CPU") -> torch.dtype:
    """``auto``/``fp32``/``fp16``/``bf16`` to a torch dtype for ``backend`` on ``device`` (without
    one, the CPU); ``auto`` on the CPU is bf16 only for a backend whose :attr:`BackendInfo.cpu_bf16`
    is set, on a CPU with :func:`~vsr.device.cpu_has_fast_bf16`, and not for OpenVINO's GPU/NPU
    devices (``ov_device``; not run here, so fp32). An ``auto`` choice of bf16 is logged."""
    device = torch.device("cpu") if device is None else torch.device(device)
    cpu_bf16 = (precision == "auto" and device.type == "cpu" and BACKENDS[backend].cpu_bf16 and ov_device == "CPU"
                and cpu_has_fast_bf16())
    name = choose_precision(precision, device.type, lambda dtype: precision_works(device, dtype), cpu_bf16=cpu_bf16)
    if cpu_bf16:
        log.info("--precision auto on the CPU: bf16 (the CPU multiplies bf16 in hardware; --precision fp32 for exact fp32)")
    return PRECISIONS[name]


def refusal(spec: ComputeSpec, info: BackendInfo, dtype: torch.dtype) -> str | None:
    """Why ``spec`` cannot run on the backend ``info`` in ``dtype`` (a usage error), or None."""
    if spec.engine_path is not None and info.engine_refusal:
        return info.engine_refusal
    if (spec.compile or spec.cuda_graphs) and not info.torch_options:
        return f"--compile and --cuda-graphs are torch options; --backend {info.name} optimises on its own"
    if spec.engine_path is None and dtype_name(dtype) not in info.precisions:
        return info.precision_refusal
    return None


def resolve(spec: ComputeSpec) -> Resolved:
    """Every compute decision for ``spec``, made once: backend, device, dtype, threads. Impossible
    combinations are refused here (:class:`~vsr.errors.UsageError`), before anything is built."""
    threads = check_threads(spec.threads) or torch.get_num_threads()
    backend, device, ov_device = choose_backend(spec.backend, spec.device)
    dtype = resolve_precision(spec.precision, device, backend=backend, ov_device=ov_device)
    why = refusal(spec, BACKENDS[backend], dtype)
    if why:
        raise UsageError(why)
    return Resolved(spec, backend, device, ov_device, dtype, threads)


# --------------------------------------------------------------------------- building


def build_engine(resolved: Resolved) -> Engine:
    """The engine ``resolved`` describes, made by its backend's builder."""
    engine = BACKENDS[resolved.backend].build(resolved)
    runs = engine.caps.compute_dtype
    if resolved.spec.engine_path is not None and runs != resolved.dtype:
        log.warning("the engine runs in %s (its graph's type), not the %s asked for", dtype_name(runs), dtype_name(resolved.dtype))
    return engine


def build_upscaler(spec: ComputeSpec) -> Upscaler:
    """The Upscaler ``spec`` describes: threads applied, choices resolved, engine built and wrapped."""
    apply_threads(spec.threads)
    resolved = resolve(spec)
    if resolved.device.type == "cpu":
        log.info("%d CPU thread(s) for the network (--threads; %d usable cores)", resolved.threads, usable_cores())
    return Upscaler(build_engine(resolved), tile=spec.tile, overlap=spec.tile_overlap, batch=spec.batch)
