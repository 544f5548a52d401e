"""Which backend runs a model: ``--backend auto|torch|onnxruntime|tensorrt|openvino [--engine PATH]``.

``auto`` picks TensorRT when it imports and the device is a GPU, else torch; on the CPU it follows
:func:`choose_cpu_backend` (measured rule, docs/BENCHMARKS.md). onnxruntime and
TensorRT run a dynamic-shape ONNX export of the model (made once and cached; for TensorRT the
build goes through the engine cache too, so it happens once per model, shape profile, library
versions and GPU), or the file given with ``--engine``: an ``.onnx`` for onnxruntime, a plan built
by ``vsr build-engine`` for TensorRT. OpenVINO converts the torch network itself and keeps the compiled model
in the engine cache (:mod:`vsr.engines.openvino_engine`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import torch

from ..device import dtype_name
from ..errors import UsageError
from . import Engine
from .cache import model_digest

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "openvino")
# Tile side of the static shape an NPU is compiled for when --tile is not given.
NPU_TILE = 256


def choose_backend(backend: str, device: torch.device) -> str:
    """Resolve ``auto``: TensorRT when ``tensorrt`` is importable and ``device`` is a GPU."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type == "cuda" and importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt"
    return "torch"


def create_engine(
    backend: str,
    *,
    model_ref: str,
    device: torch.device,
    dtype: torch.dtype,
    engine_path: Path | None = None,
    batch: int = 4,
    tile: int = 0,
    compile: bool | str = False,
    cuda_graphs: bool = False,
    openvino_device: str = "CPU",
    threads: int | None = None,
) -> Engine:
    """Build the engine ``backend`` (already resolved, not ``auto``) for ``model_ref``.

    ``batch`` and ``tile`` shape TensorRT's optimisation profile: ``tile`` N builds for batches of
    N x N tiles; ``tile`` 0 builds per input size on first use (:mod:`vsr.engines.trt_frames`), so
    video frames go through whole wherever the memory allows.
    ``tile`` also sets the static shape OpenVINO needs on an NPU. ``openvino_device`` is OpenVINO's
    device name; ``threads`` the CPU inference threads of OpenVINO and onnxruntime (default:
    torch's thread count for OpenVINO, onnxruntime's own default, all cores, for onnxruntime).
    """
    from .. import models

    if engine_path is not None and backend == "torch":
        raise UsageError("--engine is for --backend onnxruntime or tensorrt; torch runs --model directly")
    if (compile or cuda_graphs) and backend != "torch":
        raise UsageError(f"--compile and --cuda-graphs are torch options; --backend {backend} optimises on its own")
    if backend == "torch":
        from .torch_engine import TorchEngine

        return TorchEngine(models.load(model_ref), device=device, dtype=dtype, compile=compile, cuda_graphs=cuda_graphs)
    if backend == "onnxruntime":
        from .ort_engine import OrtEngine

        ort_threads = threads if device.type == "cpu" else None

        if engine_path is not None:
            engine = OrtEngine(engine_path, device=device, threads=ort_threads)
        else:
            if dtype == torch.bfloat16:
                raise UsageError("onnxruntime runs fp32 or fp16 exports; use --precision fp32/fp16, or --backend torch for bf16")
            engine = OrtEngine(cached_onnx(models.load(model_ref), fp16=dtype == torch.float16), device=device, threads=ort_threads)
        _warn_precision(engine, dtype)
        return engine
    if backend == "tensorrt":
        from .trt_build import BuildConfig, engine_from_onnx
        from .trt_common import import_trt
        from .trt_runtime import TrtEngine

        import_trt()  # exit 69 with the install hint before any export work
        if engine_path is not None:
            engine = TrtEngine.from_file(engine_path, device=device)
        else:
            if dtype == torch.bfloat16:
                raise UsageError("the TensorRT path builds fp16 or fp32 engines; use --fp16, or --backend torch for bf16")
            model = models.load(model_ref)
            fp16 = dtype == torch.float16
            onnx_path = cached_onnx(model, fp16=fp16)
            if tile:
                config = BuildConfig(batch=batch, tile=(tile, tile), fp16=fp16)
                engine = engine_from_onnx(onnx_path, config, spec=model.spec, device=device)
            else:  # whole frames where memory allows: built for the size the Upscaler sends
                from .trt_frames import trt_frame_engine

                engine = trt_frame_engine(onnx_path, spec=model.spec, device=device, fp16=fp16, batch=batch)
        _warn_precision(engine, dtype)
        return engine
    if backend == "openvino":
        from .openvino_engine import OpenVinoEngine, import_openvino

        import_openvino()  # exit 69 with the install hint before the model loads
        if engine_path is not None:
            raise UsageError("--engine is for --backend onnxruntime or tensorrt; OpenVINO converts --model itself (cached)")
        model = models.load(model_ref)
        shape = None
        if openvino_device == "NPU":  # NPUs compile static shapes only
            side = tile or NPU_TILE
            shape = (batch, model.spec.in_channels, side, side)
        return OpenVinoEngine(model, device=openvino_device, dtype=dtype, threads=threads, shape=shape)
    raise UsageError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")


def choose_cpu_backend(*, openvino_available: bool | None = None) -> str:
    """``--backend auto`` on the CPU: OpenVINO where it is installed, else torch.

    Measured on a 2-core AVX-512 CPU, fp32 (docs/BENCHMARKS.md, "CPU backend choice"): OpenVINO
    was as fast as torch channels_last or faster for SRVGGNetCompact at every frame size from
    32x48 to 256x256 (within the noise at 64x96 and 256x256), and 7-30 % faster for RRDBNet
    from 32x32 to 160x160, so the rule needs neither the model nor the frame size.
    """
    if openvino_available is None:
        openvino_available = importlib.util.find_spec("openvino") is not None
    return "openvino" if openvino_available else "torch"


def cached_onnx(model: torch.nn.Module, *, fp16: bool) -> Path:
    """A dynamic-shape ONNX export of ``model``, made once and kept in ``$VSR_HOME/engines/onnx``.

    Exporting x4plus with dynamic shapes takes over a minute on a small CPU, so a run with
    ``--backend onnxruntime``/``tensorrt`` reuses the file; the key covers the weights, the
    precision and the exporter's versions, and the cache publishes atomically under a lock.
    """
    import onnx

    from .cache import cache_dir, engine_key, get_or_build
    from .onnx_export import FORMAT, build_onnx

    config = {"artifact": "onnx", "format": FORMAT, "fp16": fp16, "dynamic": True, "model": model_digest(model)}
    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    key = engine_key(hashlib.sha256(b"vsr-onnx-export").hexdigest(), config, versions, {})

    def build(tmp: Path) -> dict:
        log.info("exporting %s to ONNX (%s, dynamic shapes; once per model)", model.spec.describe(), "fp16" if fp16 else "fp32")
        tmp.write_bytes(build_onnx(model, fp16=fp16, dynamic=True))
        return {"spec": model.spec.describe(), **config}

    return get_or_build(key, build, root=cache_dir() / "onnx")


def _warn_precision(engine: Engine, wanted: torch.dtype) -> None:
    if engine.dtype != wanted:
        log.warning("the engine runs in %s (its graph's type), not the %s asked for", dtype_name(engine.dtype), dtype_name(wanted))
