"""PyTorch backend: the reference every other backend is compared against, plus its fast CUDA modes.

``TorchEngine(model, device=..., dtype=...)`` runs the network eagerly, exactly as before. On a CUDA
device three options speed it up (all documented torch APIs, none of them changes the maths beyond
the usual reassociation of floating-point sums):

``channels_last`` (default: on for CUDA and the CPU, off elsewhere)
    Model weights and inputs in ``torch.channels_last`` (NHWC) memory format, which is what cuDNN's
    tensor-core convolution kernels want; the output is handed back as a contiguous NCHW tensor.
    On the CPU oneDNN's NHWC kernels were faster than NCHW for both RRDBNet and SRVGGNetCompact at
    every frame size measured (docs/BENCHMARKS.md, "torch on the CPU"), so it is the CPU default too.

``compile`` (default off)
    ``torch.compile(model, mode=..., dynamic=False)``. ``True`` means mode
    ``"max-autotune-no-cudagraphs"``: Inductor autotunes the convolution and fused pointwise kernels
    but does *not* wrap them in its own CUDA graphs, so the result composes with ``cuda_graphs``
    below (one graph owner, our static buffers, no output-overwrite surprises). A mode name may be
    given instead (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``); the two modes that
    use Inductor's own CUDA graphs (``reduce-overhead``, ``max-autotune``) cannot be combined with
    ``cuda_graphs``, and their outputs are cloned because Inductor reuses them on the next call.
    ``dynamic=False``: every new input shape compiles its own specialised kernels (the first call
    of a shape takes seconds to minutes); after torch's recompile limit (8) further shapes run
    eagerly. Tiled video only ever sees a handful of shapes.

``cuda_graphs`` (default off)
    CUDA-graph capture and replay per input shape: the first call of a shape warms the network up
    on a side stream, captures one forward pass into a ``torch.cuda.CUDAGraph`` with static input
    and output buffers, and keeps it (at most ``max_graphs`` shapes, least recently used dropped).
    Every call copies its input into the static input buffer, replays the graph on the current
    stream and returns a clone of the static output, so results of earlier calls stay valid.
    Removes the per-kernel launch overhead (RRDBNet x4 launches over a thousand kernels a frame).
    All graphs of an engine share one memory pool (``torch.cuda.graph_pool_handle``), so the
    whole-frame graph and the one for a clip's shorter last batch do not each hold their own
    activations. Capture uses ``capture_error_mode="thread_local"`` because the video pipeline
    decodes and encodes on other threads while the compute thread captures.

On a non-CUDA device ``compile`` and ``cuda_graphs`` are **ignored with a warning** (logged once
per engine) and the engine runs eagerly; invalid option values and impossible combinations are
refused with :class:`~vsr.errors.UsageError` on any device. ``engine.mode`` and
``engine.describe()`` say what actually runs.

:func:`conv_macs_per_pixel` counts a network's convolution multiply-accumulates per input pixel
(the cost model of DESIGN.md section 9) from the layers it really runs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from ..device import dtype_name, precision_works
from ..errors import UsageError
from ..runtime import torch_threads
from .caps import EngineCaps

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_COMPILE_MODE = "max-autotune-no-cudagraphs"
# Inductor modes that wrap the compiled code in Inductor's own CUDA graphs (list_mode_options()).
INDUCTOR_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})
DEFAULT_MAX_GRAPHS = 4
# Device types where channels_last is the default (measured faster on the CPU: module notes).
CHANNELS_LAST_DEVICES = frozenset({"cuda", "cpu"})
# Forward passes on the side stream before a capture: cuDNN/cuBLAS handles and workspaces,
# autotuning and (when compiled) compilation all happen here, never inside the capture.
GRAPH_WARMUP = 3


def check_options(*, channels_last: bool | None, compile: bool | str, cuda_graphs: bool, max_graphs: int) -> str | None:
    """Validate the engine options; returns the compile mode (None: not compiled).

    Raises :class:`UsageError` for a value of the wrong kind, an unknown compile mode, a
    ``max_graphs`` below 1, or ``cuda_graphs`` with a compile mode that already uses CUDA graphs.
    """
    if channels_last is not None and not isinstance(channels_last, bool):
        raise UsageError(f"channels_last must be True, False or None (auto), got {channels_last!r}")
    if not isinstance(cuda_graphs, bool):
        raise UsageError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
    if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
        raise UsageError(f"max_graphs must be a positive integer, got {max_graphs!r}")
    if isinstance(compile, bool):
        mode = DEFAULT_COMPILE_MODE if compile else None
    elif isinstance(compile, str) and compile in COMPILE_MODES:
        mode = compile
    else:
        raise UsageError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
    if cuda_graphs and mode in INDUCTOR_GRAPH_MODES:
        raise UsageError(
            f"torch.compile mode {mode!r} already runs the model in CUDA graphs; use cuda_graphs with"
            f" compile mode {DEFAULT_COMPILE_MODE!r} or 'default', or drop cuda_graphs"
        )
    return mode


class _Graph(NamedTuple):
    graph: torch.cuda.CUDAGraph
    input: torch.Tensor
    output: torch.Tensor


class TorchEngine:
    """Runs a ``torch.nn.Module`` (carrying ``.spec``) on one device in one precision.

    The model is deep-copied onto the device, so the caller's CPU model stays untouched and several
    engines can share one loaded checkpoint. ``channels_last``, ``compile`` and ``cuda_graphs`` are
    described in the module notes; with the defaults on the CPU the engine is plain eager PyTorch.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        channels_last: bool | None = None,
        compile: bool | str = False,
        cuda_graphs: bool = False,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
    ):
        compile_mode = check_options(channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs, max_graphs=max_graphs)
        device = torch.device(device)
        if not precision_works(device, dtype):
            # DESIGN.md section 6: fall back with a warning rather than crash inside a conv.
            log.warning("%s convolutions are not supported on %s in this torch build; using fp32", dtype_name(dtype), device)
            dtype = torch.float32
        on_cuda = device.type == "cuda"
        if not on_cuda and (compile_mode or cuda_graphs):
            asked = " and ".join(n for n, on in (("torch.compile", compile_mode), ("CUDA graphs", cuda_graphs)) if on)
            log.warning("%s only run on CUDA devices; running eager PyTorch on %s", asked, device)
            compile_mode, cuda_graphs = None, False
        self.spec = model.spec
        self.device = device
        self.dtype = dtype
        self.channels_last: bool = device.type in CHANNELS_LAST_DEVICES if channels_last is None else channels_last
        self.compile_mode: str | None = compile_mode
        self.cuda_graphs: bool = cuda_graphs
        self.max_graphs = max_graphs
        self._model: nn.Module | None = _copy_to(model, device, dtype, channels_last=self.channels_last)
        self._fn = self._model
        if compile_mode is not None:
            self._fn = torch.compile(self._model, mode=compile_mode, dynamic=False)
        # Inductor's own CUDA graphs reuse their output memory on the next call: clone those outputs.
        self._inductor_graphs = compile_mode in INDUCTOR_GRAPH_MODES
        self._graphs: OrderedDict[tuple[int, ...], _Graph] = OrderedDict()
        # One private memory pool for all of this engine's graphs (see _replay for why sharing is safe).
        self._pool = None
        self._replayed: torch.cuda.Event | None = None  # end of the last replay and its output clone
        self._lock = threading.Lock()
        # Two calls at once only in eager mode on the CPU (see concurrent()).
        self.caps = EngineCaps(
            input_dtype=dtype, compute_dtype=dtype, device_label=str(device), concurrent=device.type == "cpu" and self.mode == "eager",
        )
        log.info("%s", self.describe())

    # ------------------------------------------------------------------ protocol

    @property
    def compiled(self) -> bool:
        return self.compile_mode is not None

    @property
    def mode(self) -> str:
        """What runs: ``eager``, ``compiled``, ``graphs`` or ``compiled+graphs``."""
        if self.cuda_graphs:
            return "compiled+graphs" if self.compiled else "graphs"
        return "compiled" if self.compiled else "eager"

    def describe(self) -> str:
        """One line for logs, e.g. ``torch graphs, cuda:0, fp16, channels_last``."""
        mode = f"{self.mode} ({self.compile_mode})" if self.compiled else self.mode
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"torch {mode}, {self.device}, {dtype_name(self.dtype)}, {layout}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("TorchEngine used after close()")
        with torch.inference_mode():
            x = x.to(device=self.device, dtype=self.dtype)
            if self.cuda_graphs:
                return self._replay(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self._inductor_graphs:
                torch.compiler.cudagraph_mark_step_begin()
                return self._fn(x).clone(memory_format=torch.contiguous_format)
            y = self._fn(x)
            return y.contiguous() if self.channels_last else y

    @contextlib.contextmanager
    def concurrent(self) -> Iterator[int]:
        """Two calls at once while held, eager on the CPU with at least 2 torch threads; yields how
        many (1 elsewhere: CUDA streams, compiled code and CUDA graphs are not shared this way).

        torch's thread count is halved while held (one each on 2 cores), so each of the run's two
        compute threads computes its own frames on its own share of the cores, and neither waits at
        the other's layer barriers while x264 takes a core: the reason OpenVINO's CPU streams exist
        (:meth:`vsr.engines.openvino_engine.OpenVinoEngine.concurrent`). Measured at 96x64 on 2
        cores: 85.9 against 75.7 frames/s end to end (docs/BENCHMARKS.md). The count is
        process-wide, as torch's is, and is put back afterwards.
        """
        before = torch.get_num_threads()
        if not self.caps.concurrent or before < 2:
            yield 1
            return
        with torch_threads(before // 2):
            yield 2

    def close(self) -> None:
        with self._lock:
            self._drop_graphs()
            self._fn = None
            self._model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def graph_shapes(self) -> list[tuple[int, ...]]:
        """Input shapes with a captured CUDA graph, least recently used first."""
        return list(self._graphs)

    def __repr__(self) -> str:
        return f"TorchEngine({self.spec.describe()}, device={self.device}, dtype={dtype_name(self.dtype)}, mode={self.mode}, channels_last={self.channels_last})"

    # ------------------------------------------------------------------ CUDA graphs

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        with self._lock, torch.cuda.device(self.device):
            entry = self._graphs.get(key)
            if entry is None:
                try:
                    entry = self._capture(x)
                except torch.OutOfMemoryError:
                    # Let the caller's retry with smaller tiles (vsr.upscale.Upscaler) have the
                    # memory the graphs of larger shapes are holding.
                    self._drop_graphs()
                    torch.cuda.empty_cache()
                    raise
                self._graphs[key] = entry
                while len(self._graphs) > self.max_graphs:
                    _, old = self._graphs.popitem(last=False)
                    old.graph.reset()
            else:
                self._graphs.move_to_end(key)
                entry.input.copy_(x)
            # All graphs share one memory pool, so one graph's replay may overwrite another's
            # intermediates and static output. That is safe because every replay is followed at once
            # by the clone of its own output, and replays never overlap on the device: one issued
            # from another stream first waits for the end of the previous replay and clone.
            current = torch.cuda.current_stream(self.device)
            if self._replayed is not None:
                current.wait_event(self._replayed)
            entry.graph.replay()
            out = entry.output.clone(memory_format=torch.contiguous_format)
            self._replayed = torch.cuda.Event()
            self._replayed.record(current)
            return out

    def _capture(self, x: torch.Tensor) -> _Graph:
        """Warm up on a side stream, then capture one forward pass on that stream."""
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        static_in = torch.empty_like(x, memory_format=layout)
        static_in.copy_(x)
        log.info("capturing a CUDA graph for input %s (%s)", "x".join(map(str, x.shape)), self.describe())
        stream = torch.cuda.Stream(self.device)
        current = torch.cuda.current_stream(self.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP):
                self._fn(static_in)
        current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
                static_out = self._fn(static_in)
        except Exception as err:
            with contextlib.suppress(Exception):
                graph.reset()
            # An out-of-memory error inside the capture can surface as the capture's own failure
            # when the context closes; report the out-of-memory error so callers can retry smaller.
            if not isinstance(err, torch.OutOfMemoryError) and isinstance(err.__context__, torch.OutOfMemoryError):
                raise err.__context__ from err
            raise
        return _Graph(graph, static_in, static_out)

    def _drop_graphs(self) -> None:
        for entry in self._graphs.values():
            with contextlib.suppress(Exception):
                entry.graph.reset()
        self._graphs.clear()
        self._pool = None  # the next capture starts a fresh pool; the old one goes with its graphs


def _copy_to(model: nn.Module, device: torch.device, dtype: torch.dtype, *, channels_last: bool = False) -> nn.Module:
    clone = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    if channels_last:
        clone = clone.to(memory_format=torch.channels_last)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


# --------------------------------------------------------------------------- cost model


def conv_macs_per_pixel(model: nn.Module, *, size: int = 16) -> float:
    """Multiply-accumulates of every ``nn.Conv2d`` the network runs, per input pixel.

    One forward pass of a ``size`` x ``size`` input (raised to ``spec.min_size`` and rounded up to
    ``spec.multiple_of``), with a forward hook on every convolution adding ``output elements x
    in_channels/groups x kernel area``. A CPU fp32 model runs that pass itself (a few GMAC at most);
    any other model runs it on the ``meta`` device (its parameters swapped for meta tensors only for
    the call, through ``torch.func.functional_call``), so nothing is copied or computed on a GPU.
    The caller's model is left as it was. Bias adds, activations, concatenations and resampling
    are not counted (DESIGN.md section 9). For RRDBNet x4 with 23 blocks this gives 17,926,848;
    for SRVGGNetCompact with 16 convs, 619,200.
    """
    spec = getattr(model, "spec", None)
    channels = spec.in_channels if spec is not None else 3
    multiple = max(1, spec.multiple_of) if spec is not None else 1
    side = max(size, spec.min_size if spec is not None else 1)
    side = -(-side // multiple) * multiple
    total = 0

    def count(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    tensors = dict((*model.named_parameters(), *model.named_buffers()))
    on_cpu = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors.values())
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            if on_cpu:
                model(torch.zeros(1, channels, side, side))
            else:
                dtype = next(iter(tensors.values())).dtype
                meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
                torch.func.functional_call(model, meta, (torch.empty(1, channels, side, side, device="meta", dtype=dtype),))
    finally:
        for handle in handles:
            handle.remove()
    return total / (side * side)
