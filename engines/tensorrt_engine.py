"""TensorRT backend: build an engine from an ONNX file, cache it, and run it on CUDA torch tensors.

Written against the TensorRT Python API of 10.12+ and 11.x (``tensorrt`` from NVIDIA's index).
``import tensorrt`` and ``import onnx`` (which reads the ONNX file's metadata, input shape and
weight types before a build) happen inside the functions that need them, so this module imports
anywhere (the CLI takes :func:`parse_shape` from it); every entry point raises
:class:`~vsr.errors.BackendUnavailable` (exit 69) when TensorRT, onnx or a CUDA GPU is missing.

Precision comes from the ONNX graph. TensorRT 11 networks are always strongly typed and
``BuilderFlag.FP16`` no longer exists; on 10.x this module opts in to strong typing
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) so both behave the same. An fp16 engine therefore
needs an fp16 ONNX graph: the caller exports one (``model.half()``) and passes its bytes as
``onnx_bytes``; ``BuildConfig.fp16`` only checks that the graph is what was asked for.

Engines are built for one optimisation profile on the single input: ``min <= (N, C, H, W) <= max``
elementwise, tuned for ``opt``. :attr:`TrtEngine.profile` exposes it so the tiler can plan tiles
inside it; a shape outside it is a ``ValueError`` before TensorRT sees it.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..device import PRECISIONS
from ..errors import BackendUnavailable, InputError, InputMissing, OutputError, TransientError, UsageError
from ..models.spec import ModelSpec
from ..files import check_output
from .. import files
from . import cache
from .caps import EngineCaps
from .onnx_export import SPEC_KEY, spec_from_json
from .profiles import Shape

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it from NVIDIA's index: pip install tensorrt-cu13 --extra-index-url https://pypi.nvidia.com,"
    " or use --backend torch"
)
MIN_VERSION = (10, 0)
# Sidecar/plan layout written by this module; part of the cache key.
ENGINE_FORMAT = "vsr-tensorrt-engine/1"
SPEC_METADATA_KEY = SPEC_KEY
DEFAULT_TILE = (256, 256)
DEFAULT_BATCH = 4
# Smallest tile side a tile-mode profile accepts: frames smaller than the tile arrive whole.
MIN_PROFILE_SIDE = 16
OPT_LEVELS = range(0, 6)
# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment"; a less
# aligned address is refused (the call returns False) and the run would use a stale address.
TENSOR_ALIGNMENT = 256

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}
_PRECISION_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}
# ONNX TensorProto.DataType values of the floating types.
_ONNX_FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}


# --------------------------------------------------------------------------- import and device


def _import_trt():
    """The ``tensorrt`` module, or exit 69 with the install command."""
    try:
        import tensorrt as trt
    except ImportError as err:
        detail = " ".join(str(err).split())
        raise BackendUnavailable(f"TensorRT is not installed (import tensorrt failed: {detail}); {INSTALL_HINT}") from err
    version = getattr(trt, "__version__", "0")
    network_flag_names(version)  # refuses versions older than MIN_VERSION
    return trt


def _cuda_device(device: torch.device | str | int | None) -> torch.device:
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU and torch sees no CUDA device; use --backend torch")
    if device is None:
        return torch.device("cuda", torch.cuda.current_device())
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if dev.type != "cuda":
        raise BackendUnavailable(f"TensorRT runs on CUDA devices only, not {dev}; use --backend torch for {dev}")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise BackendUnavailable(f"CUDA device {index} does not exist (torch sees {torch.cuda.device_count()})")
    return torch.device("cuda", index)


def parse_version(version: str) -> tuple[int, int, int]:
    """``"10.12.0.36"`` -> ``(10, 12, 0)``; a version that does not parse is ``(0, 0, 0)``."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not m:
        return (0, 0, 0)
    return int(m[1]), int(m[2]), int(m[3] or 0)


def network_flag_names(version: str) -> tuple[str, ...]:
    """``NetworkDefinitionCreationFlag`` members to set for TensorRT ``version``.

    10.x: ``STRONGLY_TYPED`` (precision from the graph, as on 11). 11.x and later: none, since
    networks are always strongly typed and the flag is deprecated there (ignored, may go away).
    ``EXPLICIT_BATCH`` is never set: ignored since 10.0, removed in 11.
    """
    parsed = parse_version(version)
    if parsed[:2] < MIN_VERSION:
        raise BackendUnavailable(
            f"TensorRT {version} is too old; vsr needs {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer"
            f" (10.12+ recommended); {INSTALL_HINT}"
        )
    return ("STRONGLY_TYPED",) if parsed[0] == 10 else ()


def _network_flags(trt) -> int:
    flags = 0
    for name in network_flag_names(trt.__version__):
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is not None:
            flags |= 1 << int(member)
    return flags


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """torch dtype of a ``tensorrt.DataType`` (or its name, ``"HALF"``)."""
    name = trt_dtype if isinstance(trt_dtype, str) else getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise InputError(f"TensorRT engine tensor type {name} has no torch equivalent vsr supports") from None


def runtime_versions(trt) -> dict[str, str | None]:
    """Library versions that decide whether an engine can be reused (part of the cache key).

    vsr's own version is left out on purpose: a vsr upgrade that changes how engines are built
    bumps ``ENGINE_FORMAT`` (in the key through :meth:`BuildConfig.key_fields`) instead of
    invalidating every cached engine on every release.
    """
    return {"tensorrt": getattr(trt, "__version__", None), "cuda": torch.version.cuda, "torch": torch.__version__}


def device_info(device: torch.device) -> dict[str, str]:
    """GPU name and compute capability (part of the cache key: engines are per architecture)."""
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


# --------------------------------------------------------------------------- shapes and config


class ShapeRange(NamedTuple):
    """The optimisation profile of the engine's input: ``min <= shape <= max``, tuned for ``opt``."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        shape = tuple(int(s) for s in shape)
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def describe(self) -> str:
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        return f"min {fmt(self.min)}, opt {fmt(self.opt)}, max {fmt(self.max)}"

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> ShapeRange:
        return cls(*(tuple(int(v) for v in d[k]) for k in ("min", "opt", "max")))  # type: ignore[arg-type]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _shape4(name: str, value: Sequence[int]) -> Shape:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be four integers N C H W, got {value!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise UsageError(f"{name} must be four positive integers N C H W, got {value!r}")
    return shape  # type: ignore[return-value]


def parse_shape(text: str) -> Shape:
    """A ``--min-shape``/``--opt-shape``/``--max-shape`` value: ``NxCxHxW`` (as trtexec writes it) or ``N,C,H,W``."""
    parts = re.split(r"[x,]", text.strip().lower())
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"shape {text!r} is not N x C x H x W, e.g. 4x3x256x256")
    return _shape4("shape", [int(p) for p in parts])


def plan_profile(
    *,
    batch: int | None = None,
    tile: Sequence[int] | None = None,
    min_shape: Sequence[int] | None = None,
    opt_shape: Sequence[int] | None = None,
    max_shape: Sequence[int] | None = None,
    channels: int = 3,
    multiple_of: int = 1,
) -> ShapeRange:
    """The input profile from either explicit min/opt/max shapes or a batch and a tile.

    Tile mode (the default, tile 256x256 and batch 4) builds for batches of up to ``batch`` tiles
    of ``tile`` (H, W), tuned for exactly that, and also accepts smaller tiles down to
    ``MIN_PROFILE_SIDE`` (frames smaller than the tile are sent whole) and smaller batches (the
    last batch of a frame).
    """
    explicit = [s is not None for s in (min_shape, opt_shape, max_shape)]
    if any(explicit):
        if not all(explicit):
            raise UsageError("--min-shape, --opt-shape and --max-shape go together; give all three")
        if tile is not None or batch is not None:
            raise UsageError("give either --min-shape/--opt-shape/--max-shape or --batch/--tile, not both")
        shapes = [
            _shape4(n, s) for n, s in (("--min-shape", min_shape), ("--opt-shape", opt_shape), ("--max-shape", max_shape))
        ]
        for name, shape in zip(("--min-shape", "--opt-shape", "--max-shape"), shapes):
            if shape[1] != channels:
                raise UsageError(f"{name} {shape} has {shape[1]} channels; the model takes {channels}")
            if shape[2] % multiple_of or shape[3] % multiple_of:
                raise UsageError(f"{name} {shape}: height and width must be multiples of {multiple_of} for this model")
        lo, opt, hi = shapes
        if not (all(a <= b for a, b in zip(lo, opt)) and all(a <= b for a, b in zip(opt, hi))):
            raise UsageError(f"shapes must satisfy min <= opt <= max in every dimension, got {lo}, {opt}, {hi}")
        return ShapeRange(lo, opt, hi)
    batch = DEFAULT_BATCH if batch is None else int(batch)
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    th, tw = DEFAULT_TILE if tile is None else tuple(int(v) for v in tile)
    if th < 1 or tw < 1:
        raise UsageError(f"--tile must be two positive integers H W, got {tile!r}")
    if th % multiple_of or tw % multiple_of:
        raise UsageError(f"--tile {th} {tw}: height and width must be multiples of {multiple_of} for this model")
    side = _round_up(MIN_PROFILE_SIDE, multiple_of)
    top: Shape = (batch, channels, th, tw)
    return ShapeRange((1, channels, min(th, side), min(tw, side)), top, top)


@dataclass(frozen=True)
class BuildConfig:
    """How to build an engine. Everything but ``timing_cache`` is part of the cache key.

    - ``batch``/``tile``: build for batches of up to ``batch`` tiles of ``tile`` = (H, W) input
      pixels (defaults 4 and 256x256); or give all of ``min_shape``/``opt_shape``/``max_shape``
      as (N, C, H, W) instead.
    - ``workspace_gib``: TensorRT's workspace pool limit; None leaves TensorRT's default (the
      whole device memory).
    - ``opt_level``: ``builder_optimization_level`` 0-5 (TensorRT's default 3; higher builds
      longer and may run faster).
    - ``timing_cache``: file to load tactic timings from and save them to; only makes builds
      faster, never changes what they may produce, so it is left out of the key.
    - ``fp16``: True requires an fp16 ONNX graph, False an fp32 one, None takes the graph as it
      is. TensorRT takes precision from the graph (strong typing; ``BuilderFlag.FP16`` is gone in
      11), so for fp16 export the model in fp16 and pass that ONNX.
    - ``version_compatible``: ``BuilderFlag.VERSION_COMPATIBLE``, so later TensorRT versions of the
      same major (and the lean runtime) can load the engine; it may run slower.
    """

    batch: int | None = None
    tile: tuple[int, int] | None = None
    min_shape: Shape | None = None
    opt_shape: Shape | None = None
    max_shape: Shape | None = None
    workspace_gib: float | None = None
    opt_level: int = 3
    timing_cache: Path | None = field(default=None, compare=False)
    fp16: bool | None = None
    version_compatible: bool = False

    def __post_init__(self) -> None:
        if self.tile is not None:
            if len(tuple(self.tile)) != 2:
                raise UsageError(f"--tile takes two integers H W, got {self.tile!r}")
            object.__setattr__(self, "tile", tuple(int(v) for v in self.tile))
        for name in ("min_shape", "opt_shape", "max_shape"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _shape4("--" + name.replace("_", "-"), value))
        if self.workspace_gib is not None:
            gib = float(self.workspace_gib)
            if not gib > 0:
                raise UsageError(f"--workspace must be a positive number of GiB, got {self.workspace_gib!r}")
            object.__setattr__(self, "workspace_gib", gib)
        if int(self.opt_level) not in OPT_LEVELS or int(self.opt_level) != self.opt_level:
            raise UsageError(f"--opt-level must be an integer from 0 to 5, got {self.opt_level!r}")
        object.__setattr__(self, "opt_level", int(self.opt_level))
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache).expanduser())
        # Catch contradictions now (before any GPU work); channels are checked against the spec later.
        plan_profile(
            batch=self.batch, tile=self.tile, min_shape=self.min_shape, opt_shape=self.opt_shape, max_shape=self.max_shape,
            channels=self.min_shape[1] if self.min_shape else 3,
        )

    def profile(self, spec: ModelSpec) -> ShapeRange:
        """The resolved input profile for a model with ``spec``."""
        return plan_profile(
            batch=self.batch, tile=self.tile, min_shape=self.min_shape, opt_shape=self.opt_shape, max_shape=self.max_shape,
            channels=spec.in_channels, multiple_of=spec.multiple_of,
        )

    def key_fields(self, spec: ModelSpec, profile: ShapeRange | None = None) -> dict[str, Any]:
        """Everything that decides the built engine, for :func:`vsr.engines.cache.engine_key`
        (``profile``: the one actually built, when the graph fixed some dims)."""
        return {
            "profile": (profile or self.profile(spec)).as_dict(),
            "workspace_gib": self.workspace_gib,
            "opt_level": self.opt_level,
            "fp16": self.fp16,
            "version_compatible": self.version_compatible,
            "format": ENGINE_FORMAT,
        }


# --------------------------------------------------------------------------- ModelSpec <-> JSON


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """JSON form of a spec. ``params`` is a list of [name, value] pairs: the sidecar is written with
    sorted keys, and a dict would come back in another order (``ModelSpec`` equality sees order)."""
    d = asdict(spec)
    d["params"] = [[k, v] for k, v in spec.params]
    d["dtypes"] = list(spec.dtypes)
    return d


def spec_from_dict(d: Mapping[str, Any]) -> ModelSpec:
    """A ``ModelSpec`` from its JSON form; ``{"arch", "params"}`` alone rebuilds it from the registry."""
    if not isinstance(d, Mapping) or "arch" not in d:
        raise InputError(f"model spec {d!r} has no 'arch'")
    params = d.get("params") or {}
    params = dict(params.items() if isinstance(params, Mapping) else (tuple(p) for p in params))
    full = {"scale", "in_channels", "out_channels"} <= set(d)
    if not full:
        from ..models import registry

        try:
            with torch.device("meta"):  # only the spec is wanted: allocate no weights
                return registry.build(d["arch"], **params).spec
        except (TypeError, ValueError) as err:
            raise InputError(f"cannot rebuild the model spec of {d['arch']} from {params} ({err})") from err
    kwargs = {k: d[k] for k in ("multiple_of", "min_size", "tileable", "activation_per_pixel") if k in d}
    if "dtypes" in d:
        kwargs["dtypes"] = tuple(d["dtypes"])
    return ModelSpec(
        arch=d["arch"],
        params=tuple(params.items()),
        scale=int(d["scale"]),
        in_channels=int(d["in_channels"]),
        out_channels=int(d["out_channels"]),
        **kwargs,
    )


# --------------------------------------------------------------------------- reading the ONNX file


def _import_onnx():
    """The ``onnx`` package (a dependency of the ``tensorrt`` extra), or exit 69 naming it."""
    try:
        import onnx
    except ImportError as err:
        raise BackendUnavailable(
            'building a TensorRT engine reads the ONNX file with the onnx package, which is not installed;'
            ' pip install "vsr[tensorrt]" (or pip install onnx)'
        ) from err
    return onnx


@dataclass
class OnnxInfo:
    """What vsr needs to know about an ONNX model before building it."""

    metadata: dict[str, str] = field(default_factory=dict)
    inputs: list[tuple[str, int]] = field(default_factory=list)  # (name, ONNX elem type), initializers excluded
    outputs: list[tuple[str, int]] = field(default_factory=list)
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)  # I/O dims, None where symbolic
    weight_elements: dict[int, int] = field(default_factory=dict)  # ONNX elem type -> number of values
    external_files: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        return self.shapes.get(self.inputs[0][0]) if self.inputs else None

    @property
    def input_precision(self) -> str | None:
        return _ONNX_FLOAT_TYPES.get(self.inputs[0][1]) if self.inputs else None

    @property
    def weight_precision(self) -> str | None:
        """Floating type holding most weight values (an fp16 graph keeps a few fp32 constants)."""
        floats = {t: n for t, n in self.weight_elements.items() if t in _ONNX_FLOAT_TYPES}
        return _ONNX_FLOAT_TYPES[max(floats, key=floats.__getitem__)] if floats else None

    @property
    def precision(self) -> str:
        """``fp16``, ``fp32``, ``bf16``, or e.g. ``fp16 (fp32 I/O)`` for a mixed graph."""
        weights, io = self.weight_precision, self.input_precision
        if weights is None or io is None or weights == io:
            return weights or io or "unknown"
        return f"{weights} ({io} I/O)"


def inspect_onnx(data: bytes | memoryview) -> OnnxInfo:
    """Metadata, I/O types and shapes, weight types and external data files of a serialized ONNX
    ModelProto. Parsing bytes never reads external data files: their names are only listed."""
    onnx = _import_onnx()
    from google.protobuf.message import DecodeError  # protobuf comes with onnx

    try:
        model = onnx.load_model_from_string(bytes(data))
    except DecodeError as err:
        raise InputError(f"not a readable ONNX model ({err})") from err
    if not model.HasField("graph"):
        raise InputError("not a readable ONNX model (no graph)")
    graph = model.graph
    info = OnnxInfo(metadata={p.key: p.value for p in model.metadata_props})
    # Weights are the initializers and the tensors of Constant nodes.
    tensors = [*graph.initializer, *(a.t for node in graph.node for a in node.attribute if a.HasField("t"))]
    external: set[str] = set()
    for tensor in tensors:
        info.weight_elements[tensor.data_type] = info.weight_elements.get(tensor.data_type, 0) + math.prod(tensor.dims)
        if onnx.external_data_helper.uses_external_data(tensor):
            external.add(onnx.external_data_helper.ExternalDataInfo(tensor).location)
    initializers = {t.name for t in graph.initializer}  # IR < 4 lists them among the inputs too
    for value in (*graph.input, *graph.output):
        tensor_type = value.type.tensor_type
        info.shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value else None for d in tensor_type.shape.dim)
    info.inputs = [(v.name, v.type.tensor_type.elem_type) for v in graph.input if v.name not in initializers]
    info.outputs = [(v.name, v.type.tensor_type.elem_type) for v in graph.output]
    info.external_files = sorted(name for name in external if name)
    return info


def onnx_digest(data: bytes, info: OnnxInfo, base: Path) -> str:
    """SHA-256 naming an ONNX model: its bytes, plus each external data file it points to."""
    if not info.external_files:
        return files.sha256_bytes(data)
    parts = {"onnx": files.sha256_bytes(data)}
    for name in info.external_files:
        path = base / name
        try:
            parts[name] = files.sha256_file(path)
        except OSError as err:
            raise InputMissing(f"the ONNX model's external data file {path} is missing ({err.strerror or err}); keep it next to the .onnx") from err
    return files.sha256_bytes(cache.canonical_json(parts).encode("ascii"))


def read_spec(onnx_path: Path, info: OnnxInfo) -> ModelSpec:
    """The ``ModelSpec`` the exporter stored in the ONNX metadata (key ``vsr.spec``), decoded by
    the exporter's own :func:`~vsr.engines.onnx_export.spec_from_json`."""
    text = info.metadata.get(SPEC_METADATA_KEY)
    if not text:
        raise InputError(
            f"{onnx_path} has no '{SPEC_METADATA_KEY}' metadata (model scale and channels);"
            " export it with `vsr export-onnx`, or pass the model spec"
        )
    spec, _extra = spec_from_json(text, source=str(onnx_path))
    return spec


def fit_profile(profile: ShapeRange, input_shape: Sequence[int | None] | None, config: BuildConfig) -> ShapeRange:
    """Make the profile agree with the dims the ONNX graph fixes (an export with a fixed tile).

    A fixed dim is built exactly (min = opt = max) when the user did not choose it (the default
    batch or tile) or chose that size as ``opt``; a chosen size that differs is a usage error,
    since TensorRT would refuse the profile.
    """
    if not input_shape or len(input_shape) != 4:
        return profile
    explicit = config.min_shape is not None
    chosen = (explicit or config.batch is not None, True, explicit or config.tile is not None, explicit or config.tile is not None)
    lo, opt, hi = (list(s) for s in profile)
    names = ("batch", "channels", "height", "width")
    for i, fixed in enumerate(input_shape):
        if fixed is None or lo[i] == opt[i] == hi[i] == fixed:
            continue
        if chosen[i] and opt[i] != fixed:
            raise UsageError(
                f"the ONNX graph has a fixed {names[i]} of {fixed} but the engine profile asks for"
                f" {lo[i]}..{hi[i]}; export a dynamic ONNX or build for the graph's shape {tuple(input_shape)}"
            )
        lo[i] = opt[i] = hi[i] = fixed
    return ShapeRange(tuple(lo), tuple(opt), tuple(hi))  # type: ignore[arg-type]


def check_precision(info: OnnxInfo, fp16: bool | None, onnx_path: Path) -> None:
    """Refuse a graph whose precision is not the one asked for (TensorRT would build it as it is)."""
    weights = info.weight_precision
    if fp16 is True and weights != "fp16":
        raise UsageError(
            f"{onnx_path} is a {info.precision} graph but fp16 was asked; TensorRT takes precision from the"
            " ONNX graph, so export the model in fp16 (model.half()) and build from that file, or use --no-fp16"
        )
    if fp16 is False and weights not in ("fp32", None):
        raise UsageError(f"{onnx_path} is a {info.precision} graph but --no-fp16 was asked; export an fp32 ONNX or drop --no-fp16")


def engine_metadata(
    *,
    spec: ModelSpec,
    profile: ShapeRange,
    precision: str,
    input_name: str,
    output_name: str,
    config: BuildConfig,
    versions: Mapping[str, Any],
    device: Mapping[str, Any],
    onnx_sha256: str,
    onnx_path: Path | None = None,
) -> dict[str, Any]:
    """The JSON sidecar written next to an engine (the cache adds complete/sha256/size/key)."""
    return {
        "format": ENGINE_FORMAT,
        "spec": spec_to_dict(spec),
        "input": input_name,
        "output": output_name,
        "profile": profile.as_dict(),
        "precision": precision,
        "build": {
            "workspace_gib": config.workspace_gib,
            "opt_level": config.opt_level,
            "fp16": config.fp16,
            "version_compatible": config.version_compatible,
            "timing_cache": str(config.timing_cache) if config.timing_cache else None,
        },
        "versions": dict(versions),
        "device": dict(device),
        "onnx_sha256": onnx_sha256,
        "onnx": str(onnx_path) if onnx_path else None,
    }


# --------------------------------------------------------------------------- TensorRT logger

_LOGGER = None
_LOGGER_GUARD = threading.Lock()


def _trt_logger(trt):
    """One logger for the process (TensorRT keeps the first one it is given) feeding ``logging``
    and remembering recent errors so failures can name them."""
    global _LOGGER
    with _LOGGER_GUARD:
        if _LOGGER is None:

            class _Logger(trt.ILogger):
                def __init__(self):
                    trt.ILogger.__init__(self)
                    self.seq = 0  # errors seen so far; a caller notes it before a call and reads what came after
                    self.errors: deque[tuple[int, str]] = deque(maxlen=20)

                def log(self, severity, msg):
                    if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                        self.errors.append((self.seq, " ".join(str(msg).split())))
                        self.seq += 1
                        log.error("TensorRT: %s", msg)
                    elif severity == trt.ILogger.Severity.WARNING:
                        log.warning("TensorRT: %s", msg)
                    elif severity == trt.ILogger.Severity.INFO:
                        log.debug("TensorRT: %s", msg)

            _LOGGER = _Logger()
        return _LOGGER


def _recent_errors(logger, since: int) -> str:
    """The last few TensorRT error messages logged since ``logger.seq`` was ``since``, on one line."""
    errors = [msg for seq, msg in logger.errors if seq >= since] if logger is not None else []
    return "; ".join(errors[-3:]) or "no error message from TensorRT"


# --------------------------------------------------------------------------- building


def _build_plan(trt, data: bytes, onnx_path: Path, info: OnnxInfo, profile: ShapeRange, config: BuildConfig) -> tuple[Any, str, str, str]:
    """Build a serialized engine; returns (plan host memory, precision, input name, output name)."""
    logger = _trt_logger(trt)
    mark = logger.seq
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    # parse(bytes, path): the path lets the parser find external weight files next to the model.
    if not parser.parse(data, str(onnx_path)):
        errors = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {onnx_path}: {errors or _recent_errors(logger, mark)}; export it again with vsr")
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise InputError(f"{onnx_path} has {network.num_inputs} inputs and {network.num_outputs} outputs; vsr engines take one image batch in and one out")
    tensor_in, tensor_out = network.get_input(0), network.get_output(0)
    precision = _PRECISION_NAMES.get(torch_dtype(tensor_in.dtype), "unknown")
    if info.weight_precision and info.weight_precision != precision:
        precision = info.precision

    build_config = builder.create_builder_config()
    if config.workspace_gib is not None:
        build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * (1 << 30)))
    build_config.builder_optimization_level = config.opt_level
    if config.version_compatible:
        build_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(tensor_in.name, profile.min, profile.opt, profile.max)
    build_config.add_optimization_profile(opt_profile)
    timing = _attach_timing_cache(build_config, config.timing_cache)

    started = time.perf_counter()
    log.info("building TensorRT %s engine from %s (%s); this takes minutes", trt.__version__, onnx_path, profile.describe())
    plan = builder.build_serialized_network(network, build_config)
    if plan is None:
        errors = _recent_errors(logger, mark)
        cls = TransientError if "memory" in errors.lower() else InputError
        raise cls(f"TensorRT could not build an engine from {onnx_path}: {errors}; try a smaller --max-shape/--tile or --workspace, or VSR_DEBUG=1")
    log.info("TensorRT build took %.1f s", time.perf_counter() - started)
    if timing is not None:
        _save_timing_cache(build_config, config.timing_cache)
    return plan, precision, tensor_in.name, tensor_out.name


def _attach_timing_cache(build_config, path: Path | None):
    if path is None:
        return None
    try:
        blob = path.read_bytes() if path.exists() else b""
    except OSError as err:
        log.warning("cannot read timing cache %s (%s); starting a new one", path, err.strerror or err)
        blob = b""
    timing = build_config.create_timing_cache(blob)
    if not build_config.set_timing_cache(timing, ignore_mismatch=False):
        # Made on another GPU, CUDA or TensorRT version: start empty rather than fail the build.
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", path)
        timing = build_config.create_timing_cache(b"")
        build_config.set_timing_cache(timing, ignore_mismatch=False)
    return timing  # must stay alive until the build is done


def _save_timing_cache(build_config, path: Path) -> None:
    try:
        blob = build_config.get_timing_cache().serialize()
        # Concurrent builders: the last complete cache wins.
        files.write_bytes(path, memoryview(blob), overwrite=True, claim_output=False)
    except OSError as err:
        log.warning("cannot save timing cache %s (%s)", path, err.strerror or err)
    except OutputError as err:
        log.warning("cannot save timing cache (%s)", err)


@dataclass(frozen=True)
class _Prepared:
    """Everything known about a build before TensorRT runs: shared by the cache and --output paths."""

    data: bytes
    onnx_path: Path
    info: OnnxInfo
    spec: ModelSpec
    profile: ShapeRange
    config: BuildConfig
    versions: dict[str, Any]
    device: dict[str, str]
    onnx_sha256: str

    @property
    def key(self) -> str:
        return cache.engine_key(self.onnx_sha256, self.config.key_fields(self.spec, self.profile), self.versions, self.device)

    def build_to(self, trt, target: Path) -> dict[str, Any]:
        plan, precision, name_in, name_out = _build_plan(trt, self.data, self.onnx_path, self.info, self.profile, self.config)
        with open(target, "wb") as fh:
            fh.write(memoryview(plan))
        return engine_metadata(
            spec=self.spec, profile=self.profile, precision=precision, input_name=name_in, output_name=name_out,
            config=self.config, versions=self.versions, device=self.device, onnx_sha256=self.onnx_sha256, onnx_path=self.onnx_path,
        )


def _read_input(path: Path, what: str, hint: str) -> bytes:
    """The bytes of an input file; missing is exit 66, unreadable exit 65, each with one line."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputMissing(f"{what} {path} does not exist; {hint}") from None
    except OSError as err:
        raise InputError(f"cannot read {what} {path} ({err.strerror or err})") from err


def _prepare(trt, onnx_path, config, onnx_bytes, spec, dev) -> _Prepared:
    onnx_path = Path(onnx_path)
    if onnx_bytes is None:
        onnx_bytes = _read_input(onnx_path, "ONNX file", "export one with `vsr export-onnx`")
    data = bytes(onnx_bytes)
    info = inspect_onnx(data)
    config = config or BuildConfig()
    check_precision(info, config.fp16, onnx_path)
    spec = spec or read_spec(onnx_path, info)
    return _Prepared(
        data=data, onnx_path=onnx_path, info=info, spec=spec, profile=fit_profile(config.profile(spec), info.input_shape, config), config=config,
        versions=runtime_versions(trt), device=device_info(dev), onnx_sha256=onnx_digest(data, info, onnx_path.parent),
    )


def build_engine(
    onnx_path: str | Path,
    output: str | Path | None = None,
    config: BuildConfig | None = None,
    *,
    onnx_bytes: bytes | None = None,
    spec: ModelSpec | None = None,
    overwrite: bool = False,
    device: torch.device | str | int | None = None,
    timeout: float = cache.DEFAULT_LOCK_TIMEOUT,
) -> Path:
    """Build a TensorRT engine from an ONNX file; returns the engine path.

    ``output`` None builds into the engine cache (reusing a cached build with the same key);
    otherwise the plan is written atomically to ``output`` with a sidecar ``<output>.json``
    holding the model spec, profile, precision, versions, GPU and ONNX SHA-256. ``onnx_bytes``
    replaces the file's content (e.g. an fp16 re-export of the same model); ``onnx_path`` still
    names it and locates external weight files. ``spec`` overrides the spec stored in the ONNX.
    """
    trt = _import_trt()
    dev = _cuda_device(device)
    if output is not None:
        output = Path(output)
        check_output(output, overwrite=overwrite)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create folder {output.parent} ({err.strerror or err}); check permissions") from err
    with torch.cuda.device(dev):
        prepared = _prepare(trt, onnx_path, config, onnx_bytes, spec, dev)
        if output is None:
            return cache.get_or_build(prepared.key, lambda tmp: prepared.build_to(trt, tmp), timeout=timeout)
        try:
            files.publish_artifact(output, lambda tmp: prepared.build_to(trt, tmp), key=prepared.key, overwrite=overwrite, claim_output=True)
        except OSError as err:
            raise OutputError(f"cannot write engine {output} ({err.strerror or err}); check free space and permissions") from err
    log.info("wrote %s and %s", output, files.sidecar_path(output))
    return output


# --------------------------------------------------------------------------- running


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
        trt = _import_trt()
        dev = _cuda_device(device)
        self.spec = spec
        self.device = dev
        self.path = path
        self.meta = dict(meta or {})
        self._lock = threading.Lock()
        logger = _trt_logger(trt)
        mark = logger.seq
        with torch.cuda.device(dev):
            self._runtime = trt.Runtime(logger)
            if (self.meta.get("build") or {}).get("version_compatible"):
                self._runtime.engine_host_code_allowed = True
            self._engine = self._runtime.deserialize_cuda_engine(bytes(plan))
            if self._engine is None:
                raise InputError(
                    f"TensorRT {trt.__version__} cannot load engine {path or '(bytes)'}: {_recent_errors(logger, mark)};"
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
                    f" ({_recent_errors(logger, mark)}); free GPU memory or build with a smaller --max-shape"
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
        """Load a plan written by :func:`build_engine` (its sidecar ``<plan>.json`` gives the spec)."""
        _import_trt()
        dev = _cuda_device(device)
        plan_path = Path(plan_path)
        plan = _read_input(plan_path, "engine file", "build it with `vsr build-engine`")
        meta = files.read_sidecar(plan_path) or {}
        if meta.get("sha256") and meta["sha256"] != files.sha256_bytes(plan):
            raise InputError(f"engine {plan_path} does not match its sidecar {files.sidecar_path(plan_path)} (damaged or replaced); rebuild it")
        if spec is None:
            if "spec" not in meta:
                raise InputError(f"engine {plan_path} has no sidecar {files.sidecar_path(plan_path)} with the model spec; rebuild it with vsr build-engine")
            spec = spec_from_dict(meta["spec"])
        _check_compatible(meta, plan_path, dev)
        return cls(plan, spec=spec, device=dev, meta=meta, path=plan_path)

    @classmethod
    def from_onnx(
        cls,
        onnx_path: str | Path,
        config: BuildConfig | None = None,
        *,
        onnx_bytes: bytes | None = None,
        spec: ModelSpec | None = None,
        device: torch.device | str | int | None = None,
        root: Path | None = None,
        timeout: float = cache.DEFAULT_LOCK_TIMEOUT,
    ) -> TrtEngine:
        """A ready engine for ``onnx_path``, built once and then taken from the engine cache."""
        trt = _import_trt()
        dev = _cuda_device(device)
        with torch.cuda.device(dev):
            prepared = _prepare(trt, onnx_path, config, onnx_bytes, spec, dev)
            path = cache.get_or_build(prepared.key, lambda tmp: prepared.build_to(trt, tmp), root=root, timeout=timeout)
        return cls.from_file(path, device=dev, spec=prepared.spec)

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
        mark = _LOGGER.seq if _LOGGER is not None else 0
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
                        f"TensorRT refused the address of {name!r} ({tensor.data_ptr():#x}): {_recent_errors(_LOGGER, mark)}"
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
                raise RuntimeError(f"TensorRT execution failed for input {shape}: {_recent_errors(_LOGGER, mark)}")
        return y

    def close(self) -> None:
        """Free the context, the engine and the runtime (in that order)."""
        with self._lock:
            self._context = None
            self._engine = None
            self._runtime = None
        torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"TrtEngine({self.spec.describe()}, {self.device}, {_PRECISION_NAMES.get(self.dtype, self.dtype)}, {self.profile.describe()})"


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


__all__ = [
    "BuildConfig",
    "OnnxInfo",
    "ShapeRange",
    "TrtEngine",
    "build_engine",
    "check_precision",
    "device_info",
    "engine_metadata",
    "fit_profile",
    "inspect_onnx",
    "network_flag_names",
    "onnx_digest",
    "parse_shape",
    "parse_version",
    "plan_profile",
    "read_spec",
    "runtime_versions",
    "spec_from_dict",
    "spec_to_dict",
    "torch_dtype",
]
