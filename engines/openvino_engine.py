"""OpenVINO backend: the torch network converted by OpenVINO, compiled for a CPU, GPU or NPU.

``pip install "vsr[openvino]"``. The model is converted from the torch module itself
(``openvino.convert_model`` with an example input, which traces it; dynamic batch, height and
width unless a fixed shape is asked for), compiled for the OpenVINO device, and the compiled model
(``CompiledModel.export_model``) is kept in the engine cache ``$VSR_HOME/engines/openvino`` under
a key of the weights (:func:`vsr.engines.cache.model_digest`), the precision, the input shape
(or "dynamic"), the performance hint, the OpenVINO and torch versions and the device's full name.
Converting x4plus takes seconds; importing the cached file a fraction of that.

Precision. ``INFERENCE_PRECISION_HINT`` is always set: OpenVINO's CPU plugin otherwise runs an
fp32 model in bf16 on any CPU with AVX512_BF16 or AMX. fp32 is vsr's default everywhere; bf16
(CPU) and fp16 (GPU, and CPUs with AVX512-FP16/AMX-FP16) are used when asked for. Inputs and
outputs stay float32 tensors in host memory (``dtype``); the precision the network computes in is
``caps.compute_dtype``. The import passes the whole compile configuration again, because the CPU
plugin takes precision and threads from the import call, not from the file.

Threads. ``PERFORMANCE_HINT=LATENCY``: one inference at a time, using ``INFERENCE_NUM_THREADS`` =
``threads`` (default: torch's thread count, which is what ``--threads`` sets), so OpenVINO's pool
and torch's colour conversion share the cores vsr may use. A video run on the CPU holds
:meth:`OpenVinoEngine.concurrent` instead: the same file imported with ``PERFORMANCE_HINT=THROUGHPUT``
and ``streams`` streams that split those threads, one infer request per stream, and the pipeline
calls the engine from that many compute threads at once (:func:`vsr.pipeline.run_video`). Why:
with one stream of two threads, every layer ends at a barrier, and a thread the encoder or the
colour conversion pre-empts holds the other one there; streams of one thread each never wait for
one another, so the cores stay busy (measured on 2 cores: docs/BENCHMARKS.md, "What reached the
96x64 target").

Devices. ``device`` takes OpenVINO's names: ``CPU`` (also ``cpu``/``auto``), ``GPU``, ``GPU.N``,
``NPU``. Only the CPU has been run in this project; GPU and NPU are passed to OpenVINO as they are.
NPUs need static shapes: pass ``shape=(N, C, H, W)``; the engine then declares ``caps.fixed_shape`` and
runs any tile count and smaller tiles like the other fixed-shape engines
(:func:`vsr.engines.fixed.run_fixed`). An allocation failure inside OpenVINO is raised as
``torch.OutOfMemoryError``, so the Upscaler's smaller-tile retry applies.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import os
import queue
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..device import dtype_name
from ..errors import BackendUnavailable, UsageError
from .caps import EngineCaps
from .fixed import check_input, run_fixed
from .onnx_export import example_side

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "vsr[openvino]"'
# OpenVINO element type names for INFERENCE_PRECISION_HINT.
PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
# OPTIMIZATION_CAPABILITIES entry a device lists when it runs that precision natively.
CAPABILITIES = {torch.float32: "FP32", torch.bfloat16: "BF16", torch.float16: "FP16"}
# One call at a time (images, tiles, a library user's loop). The cache key names this hint; the
# streams of :meth:`OpenVinoEngine.concurrent` come from the import configuration, not the file.
PERFORMANCE_HINT = "LATENCY"
# Streams of OpenVinoEngine.concurrent on a CPU with at least this many inference threads (2 streams
# measured on 2 cores; see streams_for).
CPU_STREAMS = 2
# Bump when what the cached file holds changes meaning.
BLOB_FORMAT = 1
_DEVICE = re.compile(r"(cpu|gpu(\.\d+)?|npu)", re.IGNORECASE)
# Words OpenVINO's exceptions carry when a device allocation failed.
_OOM_MARKERS = ("bad_alloc", "out of memory", "failed to allocate", "cannot allocate", "can't allocate")


def import_openvino():
    """The ``openvino`` module, or exit 69 naming the install command."""
    try:
        with no_telemetry():  # importing openvino reports itself
            import openvino
    except ImportError as err:
        raise BackendUnavailable(f"the openvino backend needs OpenVINO, which is not installed: {INSTALL_HINT}") from err
    return openvino


def openvino_device(text: str) -> str:
    """A ``--device`` value as OpenVINO's device name: ``auto``/``cpu`` -> ``CPU``; ``GPU``,
    ``GPU.N`` and ``NPU`` (any case) as OpenVINO spells them. CUDA names are a usage error."""
    if text.lower() in ("auto", "cpu"):
        return "CPU"
    if not _DEVICE.fullmatch(text):
        raise UsageError(f"--device {text!r} is not an OpenVINO device; use CPU, GPU, GPU.N or NPU with --backend openvino")
    return text.upper()


def is_openvino_only_device(text: str) -> bool:
    """Whether ``text`` names a device only OpenVINO runs on (an Intel GPU or an NPU)."""
    return bool(_DEVICE.fullmatch(text)) and text.lower() != "cpu"


def compile_config(ov_device: str, dtype: torch.dtype, threads: int | None, streams: int = 1) -> dict[str, Any]:
    """The properties vsr compiles (and imports) a model with on ``ov_device``: one stream
    (``PERFORMANCE_HINT=LATENCY``), or ``streams`` > 1 (``THROUGHPUT`` with that many streams,
    which share ``threads``)."""
    if dtype not in PRECISION_HINTS:
        raise UsageError(f"OpenVINO runs fp32, bf16 or fp16, not {dtype}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[dtype], "PERFORMANCE_HINT": PERFORMANCE_HINT}
    if streams > 1:
        config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=int(streams))
    if ov_device == "CPU" and threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def streams_for(ov_device: str, threads: int | None) -> int:
    """Streams (concurrent calls) a video run uses: ``CPU_STREAMS`` of one or more threads each on
    a CPU with that many inference threads, else 1. Measured on 2 cores only (docs/BENCHMARKS.md);
    on more cores each stream gets ``threads // CPU_STREAMS`` threads. GPUs and NPUs: 1 (not run here)."""
    if ov_device != "CPU" or not threads:
        return 1
    return CPU_STREAMS if threads >= CPU_STREAMS else 1


def blob_key(digest: str, *, ov_device: str, device_name: str, dtype: torch.dtype, shape: tuple[int, ...] | None, version: str) -> str:
    """Engine-cache key of a compiled model: weights, precision, shape, hint, versions, device."""
    from .cache import engine_key

    config = {
        "artifact": "openvino", "format": BLOB_FORMAT, "precision": PRECISION_HINTS[dtype],
        "shape": list(shape) if shape else "dynamic", "hint": PERFORMANCE_HINT,
    }
    versions = {"openvino": version, "torch": torch.__version__}
    return engine_key(digest, config, versions, {"name": ov_device, "full_name": device_name})


def is_out_of_memory(message: str) -> bool:
    """Whether an OpenVINO error message reports a failed allocation."""
    low = message.lower()
    return any(marker in low for marker in _OOM_MARKERS)


def convert(model: nn.Module, shape: tuple[int, ...] | None = None):
    """``model`` as an ``openvino.Model``: dynamic ``(N, C, H, W)``, or ``shape`` when given."""
    ov = import_openvino()
    spec = model.spec
    side = example_side(spec)
    example = torch.rand(1, spec.in_channels, side, side)
    net = copy.deepcopy(model).float().eval()
    with no_telemetry(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow are expected
        converted = ov.convert_model(net, example_input=example)
    if shape is not None:
        converted.reshape(list(shape))
    return converted


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Keep OpenVINO from reporting to Google Analytics inside the block: around ``import
    openvino`` and ``convert_model``, the two places it reports.

    Unless the user ran OpenVINO's ``opt_in_out --opt_out``, ``import openvino`` sends a
    "general_import" event (``openvino.tools.ovc``'s ``__init__``) and ``convert_model`` one per
    conversion, each from a process forked with ``multiprocessing``. vsr promises no network use;
    and forked from a process with live threads, that child deadlocked (in ``getaddrinfo``, or in
    the fork itself), and the parent then hung at exit waiting for it. Both places (re)initialise
    OpenVINO's one telemetry singleton with ``disable_in_ci=True`` before they send, and a
    singleton initialised while ``CI=true`` declines, without reading or writing the user's consent
    file. So the block runs with ``CI=true``, restored after. Only this process is affected.
    """
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved


def _exported_bytes(compiled) -> bytes:
    blob = compiled.export_model()
    return blob.getvalue() if isinstance(blob, io.BytesIO) else bytes(blob)


def check_shape(shape: tuple[int, ...] | None, model: nn.Module) -> tuple[int, int, int, int] | None:
    """Validate a fixed ``(N, C, H, W)`` for ``model``; None stays None (dynamic)."""
    if shape is None:
        return None
    spec = model.spec
    if len(shape) != 4 or any(int(d) < 1 for d in shape):
        raise UsageError(f"an OpenVINO input shape is (N, C, H, W) with positive sides, got {shape}")
    n, c, h, w = (int(d) for d in shape)
    if c != spec.in_channels or h % spec.multiple_of or w % spec.multiple_of or min(h, w) < spec.min_size:
        raise UsageError(
            f"shape {n}x{c}x{h}x{w} does not fit {spec.describe()}: {spec.in_channels} channels, sides multiples"
            f" of {spec.multiple_of} and at least {spec.min_size}"
        )
    return n, c, h, w


class OpenVinoEngine:
    """A torch network (carrying ``.spec``) converted and compiled by OpenVINO; follows :class:`Engine`.

    ``device``: OpenVINO device name (see :func:`openvino_device`). ``dtype``: the precision the
    network computes in (fp32 default). ``threads``: CPU inference threads (default torch's count).
    ``shape``: a fixed ``(N, C, H, W)`` input (default: dynamic). ``cache_root``: where compiled
    models are kept (default ``$VSR_HOME/engines/openvino``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str = "CPU",
        dtype: torch.dtype = torch.float32,
        threads: int | None = None,
        shape: tuple[int, ...] | None = None,
        cache_root: Path | None = None,
    ):
        # OpenVINO installs an alternate signal stack of its own on the calling thread when a Core
        # first reaches the CPU plugin (a property query, compile_model, import_model: 11568 bytes,
        # measured) and leaves it registered; inference on another thread does not. Left there, the test suite's process
        # segfaulted a few tests later (in malloc, and at syscall returns: a signal frame that
        # could not be written; exit 139); with the thread's own stack restored it did not.
        with kept_sigaltstack():
            ov = import_openvino()
            self._ov = ov
            self.ov_device = openvino_device(device)
            core = ov.Core()
            _check_available(self.ov_device, _plugin_devices(core, self.ov_device))
            dtype = _supported(core, self.ov_device, dtype)
            self.fixed_shape = check_shape(shape, model)
            self.input_shape: tuple[int | None, ...] = self.fixed_shape or (None, model.spec.in_channels, None, None)
            self.spec = model.spec
            self.device = torch.device("cpu")  # inputs and outputs live in host memory
            self.dtype = torch.float32
            self.threads = threads or (torch.get_num_threads() if self.ov_device == "CPU" else None)
            self.name = f"OpenVINO model of {self.spec.describe()}"
            self.path = cached_model(model, core=core, ov_device=self.ov_device, dtype=dtype, shape=self.fixed_shape, root=cache_root)
            self._compiled = core.import_model(self.path.read_bytes(), self.ov_device, compile_config(self.ov_device, dtype, self.threads))
            self._request = self._compiled.create_infer_request()
            self._lock = threading.Lock()
            self._core = core
        # How many calls concurrent() lets run at once; its streams are imported on first use.
        self.parallel_calls = streams_for(self.ov_device, self.threads)
        # OpenVINO's CPU plugin computes in its own thread pool (see Upscaler.glue_threads).
        self.caps = EngineCaps(
            input_dtype=torch.float32, compute_dtype=dtype, device_label=self.ov_device, fixed_shape=self.fixed_shape,
            cpu_thread_pool=self.ov_device == "CPU", concurrent=self.parallel_calls > 1,
        )
        self._streams: tuple[Any, queue.Queue] | None = None  # (compiled model, free infer requests)
        self._pool: queue.Queue | None = None  # the free requests while concurrent() is held
        log.info("%s", self.describe())

    @property
    def calls_at_once(self) -> int:
        """``parallel_calls`` while :meth:`concurrent` is held, else 1."""
        return self.parallel_calls if self._pool is not None else 1

    def describe(self) -> str:
        """One line for logs, e.g. ``openvino CPU, fp32, 2 threads, dynamic shapes``."""
        threads = f", {self.threads} threads" if self.threads else ""
        shape = "x".join(map(str, self.fixed_shape)) if self.fixed_shape else "dynamic shapes"
        return f"openvino {self.ov_device}, {dtype_name(self.caps.compute_dtype)}{threads}, {shape}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale ``x`` ``(N, C, H, W)`` (float32 on the CPU); returns float32 on the CPU."""
        if self._request is None:
            raise RuntimeError("OpenVinoEngine used after close()")
        x = x.to(device="cpu", dtype=torch.float32)
        check_input(x, self.spec, self.input_shape, self.name)
        return run_fixed(x, self.input_shape, self.spec.scale, self._infer)

    @contextlib.contextmanager
    def concurrent(self) -> Iterator[int]:
        """Up to ``parallel_calls`` calls at once while held; yields that number.

        With more than one, calls run on the ``THROUGHPUT`` import of the same file (see the module
        docstring), each on an infer request of its own; the import is made on first use and kept.
        With one, nothing changes. Calls made outside it run one at a time on the single stream.
        """
        if self.parallel_calls < 2:
            yield 1
            return
        with self._lock:
            if self._request is None:
                raise RuntimeError("OpenVinoEngine used after close()")
            if self._streams is None:
                with kept_sigaltstack():
                    config = compile_config(self.ov_device, self.caps.compute_dtype, self.threads, self.parallel_calls)
                    compiled = self._core.import_model(self.path.read_bytes(), self.ov_device, config)
                    free: queue.Queue = queue.Queue()
                    for _ in range(self.parallel_calls):
                        free.put(compiled.create_infer_request())
                self._streams = (compiled, free)
                log.info("openvino %s: %d streams for concurrent calls", self.ov_device, self.parallel_calls)
            self._pool = self._streams[1]
        try:
            yield self.parallel_calls
        finally:
            with self._lock:
                self._pool = None

    def close(self) -> None:
        """Drop the compiled models and their requests; the engine is unusable afterwards."""
        with self._lock:
            self._request = None
            self._compiled = None
            self._streams = None
            self._pool = None

    def __repr__(self) -> str:
        return f"OpenVinoEngine({self.spec.describe()}, {self.describe()})"

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        s = self.spec.scale
        y = torch.empty((n, self.spec.out_channels, height * s, width * s), dtype=torch.float32)
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._request is None:
                    raise RuntimeError("OpenVinoEngine used after close()")
                self._run_request(self._request, x, y)
            return y
        request = pool.get()  # a stream of its own; blocks while every stream is busy
        try:
            self._run_request(request, x, y)
        finally:
            pool.put(request)
        return y

    def _run_request(self, request, x: torch.Tensor, y: torch.Tensor) -> None:
        ov = self._ov
        # Shared memory both ways: OpenVINO reads x and writes y in place, no copies.
        request.set_input_tensor(ov.Tensor(x.numpy(), shared_memory=True))
        request.set_output_tensor(ov.Tensor(y.numpy(), shared_memory=True))
        try:
            # start_async + wait rather than infer(): the waiting thread then sleeps instead of
            # spending about 0.1 ms of CPU per call (measured with THROUGHPUT streams).
            request.start_async()
            request.wait()
        except RuntimeError as err:
            if is_out_of_memory(str(err)):
                first = str(err).strip().splitlines()[-1] if str(err).strip() else "allocation failed"
                raise torch.OutOfMemoryError(f"OpenVINO on {self.ov_device} is out of memory ({first})") from err
            raise


@contextlib.contextmanager
def kept_sigaltstack():
    """Restore the calling thread's alternate signal stack (``sigaltstack``) on the way out, so what
    OpenVINO registers there (when a Core reaches its CPU plugin) does not outlive the call. Linux/glibc only; elsewhere
    a no-op."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = _Stack()
    if libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        now = _Stack()
        libc.sigaltstack(None, ctypes.byref(now))
        if (now.ss_sp, now.ss_flags, now.ss_size) != (before.ss_sp, before.ss_flags, before.ss_size):
            log.debug("OpenVINO changed the thread's alternate signal stack; restoring it")
            if before.ss_flags & _SS_DISABLE:
                before.ss_sp, before.ss_size = None, 0
            libc.sigaltstack(ctypes.byref(before), None)


class _Stack(ctypes.Structure):
    """glibc's ``stack_t``."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_SS_DISABLE = 2


def cached_model(model: nn.Module, *, core, ov_device: str, dtype: torch.dtype, shape: tuple[int, ...] | None, root: Path | None = None) -> Path:
    """The compiled model file for ``model`` on ``ov_device``, converted and compiled once per key."""
    import openvino

    from .cache import cache_dir, get_or_build, model_digest

    device_name = str(core.get_property(ov_device, "FULL_DEVICE_NAME"))
    key = blob_key(model_digest(model), ov_device=ov_device, device_name=device_name, dtype=dtype, shape=shape, version=openvino.__version__)

    def build(tmp: Path) -> dict:
        log.info("converting %s for OpenVINO %s (%s, %s; once per model)", model.spec.describe(), ov_device, dtype_name(dtype),
                 "x".join(map(str, shape)) if shape else "dynamic shapes")
        compiled = core.compile_model(convert(model, shape), ov_device, compile_config(ov_device, dtype, None))
        tmp.write_bytes(_exported_bytes(compiled))
        return {"spec": model.spec.describe(), "device": ov_device, "device_name": device_name, "precision": dtype_name(dtype),
                "shape": list(shape) if shape else "dynamic", "openvino": openvino.__version__}

    return get_or_build(key, build, root=root if root is not None else cache_dir() / "openvino")


def _plugin_devices(core, ov_device: str) -> list[str]:
    """The devices of ``ov_device``'s own plugin (``GPU`` -> ``["GPU.0", ...]``), asking that plugin
    alone: ``Core.available_devices`` loads every plugin in the wheel (GPU's OpenCL, NPU's Level
    Zero) even for a CPU run, and probing plugins for hardware that is not there destabilised the
    process here (a later heap corruption in the test suite). The CPU plugin is always present."""
    base = ov_device.split(".")[0]
    if base == "CPU":
        return ["CPU"]
    try:
        ids = [str(i) for i in core.get_property(base, "AVAILABLE_DEVICES")]
    except RuntimeError:  # no such plugin, or its runtime finds no hardware
        return []
    return [base if i == "" else f"{base}.{i}" for i in ids]


def _check_available(ov_device: str, available: list[str]) -> None:
    base = ov_device.split(".")[0]
    if ov_device in available or (ov_device == base and any(d.split(".")[0] == base for d in available)):
        return
    raise BackendUnavailable(f"OpenVINO sees no {ov_device} device here (it has {', '.join(available) or 'none'}); use --device CPU")


def _supported(core, ov_device: str, dtype: torch.dtype) -> torch.dtype:
    """``dtype`` when ``ov_device`` lists it among its capabilities, else fp32 with a warning."""
    if dtype not in PRECISION_HINTS:
        raise UsageError(f"OpenVINO runs fp32, bf16 or fp16, not {dtype}")
    if dtype == torch.float32:
        return dtype
    caps: list[str] = []
    with contextlib.suppress(Exception):
        caps = list(core.get_property(ov_device, "OPTIMIZATION_CAPABILITIES"))
    if CAPABILITIES[dtype] in caps:
        return dtype
    log.warning("OpenVINO's %s device does not run %s (capabilities: %s); using fp32", ov_device, dtype_name(dtype), ", ".join(caps) or "unknown")
    return torch.float32
