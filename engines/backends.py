"""Helpers of the backend choice: what ``--backend auto`` measures, and the cached ONNX export.

:mod:`vsr.compute` owns the decision (its table of what each backend supports, ``auto``, the
refusals) and the per-backend builders; this module holds the parts that belong to the engines.

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

from .cache import model_digest

log = logging.getLogger(__name__)

# Tile side of the static shape an NPU is compiled for when --tile is not given.
NPU_TILE = 256


def gpu_backend() -> str:
    """``--backend auto`` on a CUDA device: TensorRT when ``tensorrt`` is importable, else torch."""
    return "tensorrt" if importlib.util.find_spec("tensorrt") is not None else "torch"


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
