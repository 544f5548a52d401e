"""onnxruntime backend: runs a file from :mod:`vsr.engines.onnx_export` on the CPU or a GPU.

Providers, in order of preference: TensorRT (when onnxruntime-gpu has it and TensorRT 10's
``libnvinfer.so.10``, which its TensorRT provider links, can be loaded), CUDA, CPU. Inputs and
outputs go through IO binding on both devices: the input tensor's memory is handed to onnxruntime and
the output is written straight into a preallocated torch tensor (of the graph output's type), so a
CUDA frame never visits the host and the CPU path makes no numpy copies.

Streams. On CUDA the session computes on a torch stream the engine owns, handed to the CUDA and
TensorRT providers as their ``user_compute_stream``; a call orders that stream after the caller's
current stream and the caller's stream after it (GPU-side waits), and the run is told not to
synchronise at its end (``disable_synchronize_execution_providers``). So a call never blocks the
host: the first host read of the output (the encoder's download) is where anyone waits.

Shapes. A dynamic export takes any ``(N, C, H, W)`` with H and W multiples of
``spec.multiple_of``. A fixed export (``--tile H W --batch B``) is exposed as
:attr:`OrtEngine.fixed_shape` (and ``caps.fixed_shape``) so the tiler can plan tiles of exactly that size; besides that the
engine copes with what a tiler produces anyway (:func:`vsr.engines.fixed.run_fixed`): any number
of tiles and tiles *smaller* than the fixed size. Larger tiles are a ``ValueError``.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from ..device import dtype_name
from ..errors import BackendUnavailable, InputError, InputMissing, UsageError
from ..paths import vsr_home
from .caps import EngineCaps
from .fixed import check_input, run_fixed
from .onnx_export import INSTALL_HINT, SPEC_KEY, spec_from_json

log = logging.getLogger(__name__)

# onnxruntime's type strings for the graph input, and the torch dtype each maps to.
ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16}
# ONNX TensorProto element-type codes: IOBinding takes them in place of a numpy dtype, and numpy
# has no bfloat16.
ONNX_ELEMENT = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}
# onnxruntime-gpu 1.31's TensorRT provider links TensorRT 10 (reference/apis.md section 4).
TENSORRT_EP_LIBRARY = "libnvinfer.so.10"
# Providers that run on a CUDA stream and accept a user compute stream.
STREAM_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# Run option: do not synchronise the providers' streams when a run ends.
NO_SYNC_AT_END = "disable_synchronize_execution_providers"


def import_onnxruntime():
    """The ``onnxruntime`` module, or exit 69 naming the package to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailable(f"the onnxruntime backend needs onnxruntime: {INSTALL_HINT} (onnxruntime-gpu for CUDA)") from err
    return onnxruntime


def default_providers(device: torch.device, available: list[str], *, tensorrt: bool | None = None) -> list:
    """The provider list for ``device`` given onnxruntime's ``available`` providers.

    CPU: the CPU provider alone. CUDA: TensorRT first when ``tensorrt`` (default: it is available
    and its library loads), then CUDA on ``device``'s index, then CPU for any op neither supports.
    A CUDA device without the CUDA provider (the CPU-only ``onnxruntime`` wheel) is exit 69.
    """
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise UsageError(f"the onnxruntime backend runs on cpu or cuda, not {device}")
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailable(
            "this onnxruntime has no CUDA provider (only " + ", ".join(available) + "); "
            'pip uninstall onnxruntime && pip install "onnxruntime-gpu[cuda,cudnn]", or use --device cpu'
        )
    index = device.index if device.index is not None else 0
    providers: list = []
    if tensorrt is None:
        tensorrt = "TensorrtExecutionProvider" in available and _loadable(TENSORRT_EP_LIBRARY)
    if tensorrt:
        providers.append(("TensorrtExecutionProvider", tensorrt_provider_options(index)))
    providers += [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return providers


def with_compute_stream(providers: list, stream: int) -> list:
    """``providers`` with the CUDA stream handle ``stream`` set as the compute stream of every CUDA
    and TensorRT provider (copies; the list given is left as it is). The handle must not be 0: the
    providers read 0 as "no user stream" and run on a private stream, unordered with torch."""
    if not stream:
        raise ValueError("the legacy default stream (handle 0) cannot be onnxruntime's compute stream")
    out: list = []
    for entry in providers:
        name, options = entry if isinstance(entry, tuple) else (entry, {})
        if name not in STREAM_PROVIDERS:
            out.append(entry)
            continue
        options = dict(options, user_compute_stream=str(stream))
        if name == "TensorrtExecutionProvider":
            options["has_user_compute_stream"] = "1"  # the TensorRT provider also reads this flag
        out.append((name, options))
    return out


def tensorrt_provider_options(device_index: int) -> dict:
    """TensorRT provider options: engines and timing cache kept under ``$VSR_HOME/engines``.

    No ``trt_fp16_enable``: the precision comes from the graph (an fp16 export is FLOAT16), and
    the provider builds strongly typed networks when fp16/int8 flags are off. No optimisation
    profile: fixed-shape exports need none; dynamic ones get an engine per new shape (cached).
    """
    cache = vsr_home() / "engines" / "ort-tensorrt"
    return {
        "device_id": device_index,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }


class OrtEngine:
    """An exported ONNX model (path or bytes) in an onnxruntime session, following :class:`Engine`.

    ``dtype`` is the graph's input type (an fp16 export runs in fp16; there is no cast inside).
    ``providers`` overrides :func:`default_providers` (names or ``(name, options)`` pairs);
    ``threads`` sets onnxruntime's intra-op thread count (default: all cores).
    """

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        device: torch.device | str = torch.device("cpu"),
        providers: list | None = None,
        threads: int | None = None,
    ):
        ort = import_onnxruntime()
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable(f"{device} asked for a GPU but torch sees no CUDA device; use --device cpu")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        if providers is None:
            providers = default_providers(device, ort.get_available_providers())
        # onnxruntime computes on this torch stream (see the module notes); None on the CPU.
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._run_options = None
        if self._stream is not None:
            providers = with_compute_stream(providers, self._stream.cuda_stream)
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry(NO_SYNC_AT_END, "1")
        for name, options in (p if isinstance(p, tuple) else (p, {}) for p in providers):
            if name == "TensorrtExecutionProvider" and "trt_engine_cache_path" in options:
                Path(options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)

        source = model if isinstance(model, bytes) else str(model)
        self.name = "<ONNX bytes>" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise InputMissing(f"ONNX file {model} does not exist; create it with `vsr export-onnx`")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the CLI owns the terminal
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own pybind exception types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{self.name}: onnxruntime cannot load it ({first})") from err
        self.providers: list[str] = self._session.get_providers()
        if device.type == "cuda" and not set(STREAM_PROVIDERS) & set(self.providers):
            raise BackendUnavailable(
                f"onnxruntime could not start its CUDA provider (running on {', '.join(self.providers)}); "
                'check the CUDA 13 and cuDNN 9 libraries: pip install "onnxruntime-gpu[cuda,cudnn]"'
            )

        meta = self._session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise InputError(f"{self.name} has no {SPEC_KEY} metadata; export it with `vsr export-onnx`")
        self.spec, self.info = spec_from_json(meta[SPEC_KEY], source=self.name)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise InputError(f"{self.name}: expected one (N, C, H, W) input and one output")
        for kind, value in (("input", inputs[0]), ("output", outputs[0])):
            if value.type not in ORT_TYPES:
                raise InputError(f"{self.name}: {kind} type {value.type} is not float, float16 or bfloat16")
        self.dtype: torch.dtype = ORT_TYPES[inputs[0].type]
        self.out_dtype: torch.dtype = ORT_TYPES[outputs[0].type]  # an fp16 graph may still output fp32
        self._input, self._output = inputs[0].name, outputs[0].name
        # Symbolic dims come back as strings (or None); only positive ints are fixed.
        self.input_shape: tuple[int | None, ...] = tuple(d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape)
        # The graph computes in its input's type; on the CPU onnxruntime computes in its own thread
        # pool (see Upscaler.glue_threads).
        self.caps = EngineCaps(
            input_dtype=self.dtype, compute_dtype=self.dtype, device_label=str(device), fixed_shape=self.fixed_shape,
            cpu_thread_pool=device.type == "cpu",
        )

    @property
    def fixed_shape(self) -> tuple[int, int, int, int] | None:
        """``(batch, C, H, W)`` of a fixed-shape export, None for a dynamic one.

        The tiler should use tiles of exactly ``H`` x ``W`` and batches of ``batch``; other counts
        and smaller tiles work (see the module notes) but waste compute.
        """
        return self.input_shape if None not in self.input_shape else None  # type: ignore[return-value]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale ``x`` ``(N, C, H, W)``; returns ``(N, C_out, H*scale, W*scale)`` on ``device`` in
        the graph output's type (``out_dtype``)."""
        self._live()
        x = x.to(device=self.device, dtype=self.dtype)
        check_input(x, self.spec, self.input_shape, self.name)
        return run_fixed(x, self.input_shape, self.spec.scale, self._run)

    def close(self) -> None:
        """Drop the session (and its device memory); the engine is unusable afterwards."""
        self._session = None

    def __repr__(self) -> str:
        shape = "x".join("?" if d is None else str(d) for d in self.input_shape)
        return f"OrtEngine({self.spec.describe()}, {shape}, device={self.device}, dtype={dtype_name(self.dtype)}, providers={self.providers})"

    # ----------------------------------------------------------------------- internals

    def _live(self):
        if self._session is None:
            raise RuntimeError("OrtEngine used after close()")
        return self._session

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """One session run on a contiguous input of an accepted shape, via IO binding."""
        session = self._live()
        n, _, height, width = x.shape
        s = self.spec.scale
        y = torch.empty((n, self.spec.out_channels, height * s, width * s), device=self.device, dtype=self.out_dtype)
        kind, index = self.device.type, self.device.index or 0
        io = session.io_binding()
        io.bind_input(self._input, kind, index, ONNX_ELEMENT[self.dtype], tuple(x.shape), x.data_ptr())
        io.bind_output(self._output, kind, index, ONNX_ELEMENT[self.out_dtype], tuple(y.shape), y.data_ptr())
        if self._stream is None:
            session.run_with_iobinding(io)
            return y
        # x and y belong to the caller's stream; onnxruntime's stream starts after everything queued
        # there so far (x is written, y's memory is free) and the caller's stream continues after
        # the run, so later reads of y and reuse of x's memory are ordered too. No host wait.
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        session.run_with_iobinding(io, self._run_options)
        current.wait_stream(self._stream)
        return y


def _loadable(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        log.debug("%s cannot be loaded; onnxruntime's TensorRT provider is skipped", library)
        return False
    return True
