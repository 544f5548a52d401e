"""Running TensorRT engines: load a serialized plan (with its sidecar), check it was built for this
TensorRT and GPU, and run it on CUDA torch tensors through one execution context.

A loaded :class:`TrtEngine` exposes the input profile it was built for (:attr:`TrtEngine.profile`)
so the tiler can plan tiles inside it; a shape outside it is a ``ValueError`` before TensorRT sees
it. Building plans is :mod:`vsr.engines.trt_build`, which this module never imports: loading
needs only the TensorRT runtime. ``import tensorrt`` happens inside the functions that need it
(exit 69 without it or without a CUDA GPU).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, TransientError
from ..models.spec import ModelSpec
from .. import files
from .caps import EngineCaps
from .trt_common import PRECISION_NAMES, ShapeRange, cuda_device, device_info, import_trt, parse_version, read_input, recent_errors, torch_dtype, trt_logger

# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment"; a less
# aligned address is refused (the call returns False) and the run would use a stale address.
TENSOR_ALIGNMENT = 256


class TrtEngine:
    """A deserialized TensorRT engine with one execution context, following the Engine protocol.

    ``engine(x)`` takes a CUDA tensor ``(N, C, H, W)`` inside :attr:`profile` and returns the
    upscaled batch in the engine's output type. Work is queued on torch's current stream (on a
    private stream, joined both ways, when the current stream is the legacy default stream, which
    TensorRT would otherwise synchronise around).
    """

    def __init__(
        self,
        plan: bytes | memoryview,
        *,
        spec: ModelSpec,
        device: torch.device | str | int | None = None,
        meta: Mapping[str, Any] | None = None,
        path: Path | None = None,
    ):
        trt = import_trt()
        dev = cuda_device(device)
        self.spec = spec
        self.device = dev
        self.path = path
        self.meta = dict(meta or {})
        self._lock = threading.Lock()
        self._logger = logger = trt_logger(trt)
        mark = logger.seq
        with torch.cuda.device(dev):
            self._runtime = trt.Runtime(logger)
            if (self.meta.get("build") or {}).get("version_compatible"):
                self._runtime.engine_host_code_allowed = True
            self._engine = self._runtime.deserialize_cuda_engine(bytes(plan))
            if self._engine is None:
                raise InputError(
                    f"TensorRT {trt.__version__} cannot load engine {path or '(bytes)'}: {recent_errors(logger, mark)};"
                    " rebuild it with vsr build-engine on this machine"
                )
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            if len(inputs) != 1 or len(outputs) != 1:
                raise InputError(f"engine {path or '(bytes)'} has inputs {inputs} and outputs {outputs}; vsr needs one of each")
            self.input_name, self.output_name = inputs[0], outputs[0]
            self.dtype = torch_dtype(self._engine.get_tensor_dtype(self.input_name))
            self.out_dtype = torch_dtype(self._engine.get_tensor_dtype(self.output_name))
            lo, opt, hi = self._engine.get_tensor_profile_shape(self.input_name, 0)
            self.profile = ShapeRange(*(tuple(int(d) for d in s) for s in (lo, opt, hi)))  # type: ignore[arg-type]
            # Strongly typed: the network computes in its input's type.
            self.caps = EngineCaps(
                input_dtype=self.dtype, compute_dtype=self.dtype, device_label=str(dev), min_shape=self.profile.min, max_shape=self.profile.max,
            )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise TransientError(
                    f"TensorRT could not create an execution context for {path or 'the engine'}"
                    f" ({recent_errors(logger, mark)}); free GPU memory or build with a smaller --max-shape"
                )
            self._side_stream = torch.cuda.Stream(dev)
        self._shape: tuple[int, ...] | None = None
        memory = getattr(self._engine, "device_memory_size_v2", None)
        if memory is None:
            memory = getattr(self._engine, "device_memory_size", 0)
        self.device_memory_bytes = int(memory)

    # -------------------------------------------------------------- constructors

    @classmethod
    def from_file(cls, plan_path: str | Path, *, device: torch.device | str | int | None = None, spec: ModelSpec | None = None) -> TrtEngine:
        """Load a plan written by :func:`~vsr.engines.trt_build.build_engine` (its sidecar ``<plan>.json`` gives the spec)."""
        import_trt()
        dev = cuda_device(device)
        plan_path = Path(plan_path)
        plan = read_input(plan_path, "engine file", "build it with `vsr build-engine`")
        meta = files.read_sidecar(plan_path) or {}
        if meta.get("sha256") and meta["sha256"] != files.sha256_bytes(plan):
            raise InputError(f"engine {plan_path} does not match its sidecar {files.sidecar_path(plan_path)} (damaged or replaced); rebuild it")
        if spec is None:
            if "spec" not in meta:
                raise InputError(f"engine {plan_path} has no sidecar {files.sidecar_path(plan_path)} with the model spec; rebuild it with vsr build-engine")
            spec = sidecar_spec(meta["spec"])
        _check_compatible(meta, plan_path, dev)
        return cls(plan, spec=spec, device=dev, meta=meta, path=plan_path)

    # -------------------------------------------------------------- protocol

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether an input of ``shape`` is inside the engine's profile."""
        return self.profile.contains(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._context is None:
            raise RuntimeError("TrtEngine used after close()")
        shape = tuple(x.shape)
        if not self.profile.contains(shape):
            raise ValueError(
                f"input shape {shape} is outside the TensorRT engine's profile ({self.profile.describe()});"
                " plan tiles inside it or rebuild the engine"
            )
        x = aligned(x.to(device=self.device, dtype=self.dtype).contiguous())
        mark = self._logger.seq
        with self._lock, torch.cuda.device(self.device):
            ctx = self._context
            if shape != self._shape:
                if not ctx.set_input_shape(self.input_name, shape):
                    raise ValueError(f"TensorRT rejected input shape {shape} (profile {self.profile.describe()})")
                self._shape = shape
            y = torch.empty(tuple(ctx.get_tensor_shape(self.output_name)), dtype=self.out_dtype, device=self.device)
            for name, tensor in ((self.input_name, x), (self.output_name, y)):
                if not ctx.set_tensor_address(name, tensor.data_ptr()):
                    raise RuntimeError(
                        f"TensorRT refused the address of {name!r} ({tensor.data_ptr():#x}): {recent_errors(self._logger, mark)}"
                    )
            current = torch.cuda.current_stream(self.device)
            if current.cuda_stream == 0:
                # The legacy default stream makes TensorRT synchronise the device; use a side stream
                # ordered after the input's producers and before the output's consumers.
                self._side_stream.wait_stream(current)
                ok = ctx.execute_async_v3(self._side_stream.cuda_stream)
                current.wait_stream(self._side_stream)
            else:
                ok = ctx.execute_async_v3(current.cuda_stream)
            if not ok:
                raise RuntimeError(f"TensorRT execution failed for input {shape}: {recent_errors(self._logger, mark)}")
        return y

    def close(self) -> None:
        """Free the context, the engine and the runtime (in that order)."""
        with self._lock:
            self._context = None
            self._engine = None
            self._runtime = None
        torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"TrtEngine({self.spec.describe()}, {self.device}, {PRECISION_NAMES.get(self.dtype, self.dtype)}, {self.profile.describe()})"


def aligned(x: torch.Tensor, alignment: int = TENSOR_ALIGNMENT) -> torch.Tensor:
    """``x``, or a copy of it when its data does not start on an ``alignment``-byte boundary (a
    slice of a batch, e.g. ``frames[1:3]``, starts wherever the previous items end)."""
    return x if x.data_ptr() % alignment == 0 else x.clone()


def _check_compatible(meta: Mapping[str, Any], plan_path: Path, dev: torch.device) -> None:
    """Name the mismatch before TensorRT fails with a generic deserialization error."""
    import tensorrt as trt

    built = (meta.get("versions") or {}).get("tensorrt")
    vc = (meta.get("build") or {}).get("version_compatible")
    if built and built != trt.__version__ and not (vc and parse_version(built)[0] == parse_version(trt.__version__)[0]):
        raise InputError(f"engine {plan_path} was built with TensorRT {built}, this is {trt.__version__}; rebuild it with vsr build-engine")
    cc = (meta.get("device") or {}).get("compute_capability")
    here = device_info(dev)["compute_capability"]
    if cc and cc != here:
        raise InputError(f"engine {plan_path} was built for compute capability {cc}, {torch.cuda.get_device_name(dev)} is {here}; rebuild it on this GPU")


def sidecar_spec(record: Any) -> ModelSpec:
    """The model spec in an engine sidecar: the full :meth:`ModelSpec.to_dict` record that
    ``build_engine`` writes, or just ``{"arch", "params"}`` (a sidecar written by hand for a plan
    built elsewhere), which rebuilds the spec from the model registry."""
    if not isinstance(record, Mapping) or "arch" not in record:
        raise InputError(f"model spec {record!r} has no 'arch'")
    if {"scale", "in_channels", "out_channels"} <= set(record):
        try:
            return ModelSpec.from_dict(record)
        except ValueError as err:
            raise InputError(f"model spec {record!r} cannot be read ({err})") from err
    params = record.get("params") or {}
    params = dict(params.items() if isinstance(params, Mapping) else (tuple(p) for p in params))
    from ..models import registry

    try:
        with torch.device("meta"):  # only the spec is wanted: allocate no weights
            return registry.build(record["arch"], **params).spec
    except (TypeError, ValueError) as err:
        raise InputError(f"cannot rebuild the model spec of {record['arch']} from {params} ({err})") from err


__all__ = ["TENSOR_ALIGNMENT", "TrtEngine", "aligned", "sidecar_spec"]
