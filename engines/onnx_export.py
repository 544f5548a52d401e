"""ONNX export: one self-contained ``.onnx`` file per model, precision and shape mode.

The file is what the onnxruntime and TensorRT backends load. Three facts shape this module:

- torch 2.13's ``torch.onnx.export`` is the dynamo exporter. Given a path it writes the weights to a
  ``<name>.data`` sidecar by default; we never let it write: it returns an ``ONNXProgram`` and the
  serialised ``ModelProto`` (weights inline, RRDBNet x4plus is ~67 MB, far below protobuf's 2 GB)
  goes through :func:`vsr.files.publish`, so the result is always one file and never half a file.
- TensorRT 11 networks are strongly typed: an FP16 engine needs an FP16 graph. ``fp16=True``
  exports ``model.half()`` with a half example input, so inputs, weights and outputs are FLOAT16.
- The engine cache keys on the file's sha256, so the bytes should not depend on when or where the
  export ran. Nothing time- or path-dependent is written (see :func:`build_onnx`).

The :class:`~vsr.models.ModelSpec` travels inside the file as ``metadata_props["vsr.spec"]`` (JSON),
so an engine built from the file knows scale, channels, ``multiple_of`` and the rest without the
checkpoint. The spec's own fields are :meth:`ModelSpec.to_dict`, the form TensorRT engine sidecars
store too. :func:`read_onnx_spec` reads it back; :func:`spec_from_json` is the pure decoder the
engines share (it needs neither onnx nor onnxruntime). :func:`import_onnx` is the one place the
``onnx`` package is imported for export and for reading ONNX files before a TensorRT build.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BackendUnavailable, InputError, OutputError, UsageError
from ..models.spec import FIELDS, ModelSpec
from ..files import check_output, publish

log = logging.getLogger(__name__)

# metadata_props key holding the spec; bump FORMAT when the JSON layout changes incompatibly.
SPEC_KEY = "vsr.spec"
FORMAT = 1
INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Names of the symbolic dims of a dynamic export (output dims come out as e.g. "4*height").
DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}
# Example spatial size traced for a dynamic export. Not 1: torch.export specialises size-1 dims.
DYNAMIC_EXAMPLE = 64
INSTALL_HINT = 'pip install "vsr[onnx]"'


def export_onnx(
    model: nn.Module,
    output: Path,
    *,
    fp16: bool = False,
    batch: int = 1,
    tile: tuple[int, int] | None = None,
    dynamic: bool = False,
    opset: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Export ``model`` (an ``nn.Module`` carrying ``.spec``) to one self-contained ONNX file.

    Shape: ``tile=(h, w)`` gives a fixed ``(batch, C, h, w)`` input; ``dynamic=True`` gives
    dynamic ``batch``/``height``/``width`` dims. With neither, the export is dynamic (a dynamic graph
    runs any tile the tiler picks; fixed shapes are an optimisation the caller opts into).
    ``batch`` applies to fixed shapes only. Dynamic exports trace much slower (about 80 s for
    x4plus on two CPU cores, against 20 s fixed), so callers that export on the fly should cache.
    ``fp16`` makes the graph itself FLOAT16. ``opset`` None takes the exporter's default (20 with
    torch 2.13). The input is named ``input``, the output ``output``.

    The file is written under a temporary name, checked with ``onnx.checker`` and published into
    place; an existing ``output`` is refused (exit 73) unless ``overwrite``. Returns ``output``.
    """
    output = Path(output)
    check_output(output, overwrite=overwrite)
    data = build_onnx(model, fp16=fp16, batch=batch, tile=tile, dynamic=dynamic, opset=opset)
    onnx = import_onnx("ONNX export", exporter=True)
    with publish(output, overwrite=overwrite) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as err:
            raise OutputError(f"cannot write {output} ({err.strerror}); check free space and permissions") from err
        # Checked from the path, as a consumer would load it, before it gets its final name.
        onnx.checker.check_model(str(tmp))
    _warn_external_data(output)
    return output


def build_onnx(
    model: nn.Module,
    *,
    fp16: bool = False,
    batch: int = 1,
    tile: tuple[int, int] | None = None,
    dynamic: bool = False,
    opset: int | None = None,
) -> bytes:
    """The serialised ONNX model :func:`export_onnx` writes, built in memory (arguments as there).

    Useful for running onnxruntime straight from a checkpoint: ``OrtEngine(build_onnx(model))``.
    """
    spec: ModelSpec = model.spec
    shape = input_shape(spec, batch=batch, tile=tile, dynamic=dynamic)
    onnx = import_onnx("ONNX export", exporter=True)
    dtype = torch.float16 if fp16 else torch.float32
    # Export a CPU copy: the caller's model keeps its device and precision.
    net = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
    example = _example_input(shape, spec, dtype)
    dynamic_shapes = (DYNAMIC_DIMS,) if shape[2] is None else None
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            net,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            # Nothing is written by torch (no path given); this just states that weights stay inline.
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    if any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer):
        # Cannot happen for an in-memory program today; a silent sidecar reference would be a broken file.
        raise RuntimeError("the ONNX exporter left weights as external data; cannot write a single file")
    meta = spec_to_json(
        spec,
        precision="fp16" if fp16 else "fp32",
        shape_mode="dynamic" if shape[2] is None else "fixed",
        shape=[d if d is not None else DYNAMIC_DIMS[i] for i, d in enumerate(shape)],
        opset=_opset_of(proto),
    )
    del proto.metadata_props[:]
    proto.metadata_props.add(key=SPEC_KEY, value=meta)
    data = proto.SerializeToString(deterministic=True)
    if len(data) >= 2**31:
        raise UsageError(f"{spec.describe()} is {len(data) / 2**30:.1f} GiB as ONNX, over protobuf's 2 GiB single-file limit")
    return data


def input_shape(
    spec: ModelSpec, *, batch: int = 1, tile: tuple[int, int] | None = None, dynamic: bool = False
) -> tuple[int | None, int, int | None, int | None]:
    """The graph input shape for these options; ``None`` marks a dynamic dim.

    Raises :class:`UsageError` for a tile the network cannot take (not a multiple of
    ``spec.multiple_of``, smaller than ``spec.min_size``) or for both ``tile`` and ``dynamic``.
    """
    if tile is not None and dynamic:
        raise UsageError("give either a fixed tile (--tile H W) or --dynamic, not both")
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    if tile is None:
        return (None, spec.in_channels, None, None)
    h, w = (int(v) for v in tile)
    for side in (h, w):
        if side < max(1, spec.min_size) or side % spec.multiple_of:
            raise UsageError(
                f"tile {h}x{w} does not fit {spec.describe()}: sides must be >= {max(1, spec.min_size)}"
                f" and multiples of {spec.multiple_of}"
            )
    return (batch, spec.in_channels, h, w)


def spec_to_json(spec: ModelSpec, **extra: Any) -> str:
    """The ``vsr.spec`` metadata value: ``format``, every spec field (:meth:`ModelSpec.to_dict`), plus
    ``extra`` (precision, shape, ...)."""
    body = {"format": FORMAT, **spec.to_dict()}
    clash = body.keys() & extra.keys()
    if clash:
        raise ValueError(f"extra metadata keys clash with the spec: {sorted(clash)}")
    # sort_keys: the bytes (and so the engine-cache key) must not depend on dict order.
    return json.dumps(body | extra, sort_keys=True, separators=(",", ":"))


def spec_from_json(text: str, *, source: str = "ONNX file") -> tuple[ModelSpec, dict[str, Any]]:
    """Decode :func:`spec_to_json`: the spec and the extra fields.

    For an exported file the extras are ``precision`` ("fp32"/"fp16"), ``shape_mode``
    ("fixed"/"dynamic"), ``shape`` (the input shape, dim names for dynamic dims) and ``opset``.
    """
    try:
        body = json.loads(text)
        if body.get("format") != FORMAT:
            raise InputError(f"{source}: vsr.spec format {body.get('format')!r} is not {FORMAT}; re-export it with this vsr")
        spec = ModelSpec.from_dict(body)
    except (ValueError, AttributeError) as err:  # AttributeError: JSON that is not an object
        raise InputError(f"{source}: damaged vsr.spec metadata ({err}); re-export it with `vsr export-onnx`") from err
    return spec, {k: v for k, v in body.items() if k != "format" and k not in FIELDS}


def read_onnx_spec(path: Path) -> tuple[ModelSpec, dict[str, Any]]:
    """The :class:`ModelSpec` stored in an exported file, and the export facts (see :func:`spec_from_json`)."""
    onnx = import_onnx("reading an ONNX file's vsr.spec")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: the file is not ONNX
        raise InputError(f"{path} is not a readable ONNX file ({err})") from err
    meta = {p.key: p.value for p in proto.metadata_props}
    if SPEC_KEY not in meta:
        raise InputError(f"{path} has no {SPEC_KEY} metadata; export it with `vsr export-onnx`")
    return spec_from_json(meta[SPEC_KEY], source=str(path))


# --------------------------------------------------------------------------- helpers


def import_onnx(purpose: str, hint: str = INSTALL_HINT, *, exporter: bool = False):
    """The ``onnx`` package, or exit 69 saying that ``purpose`` needs it and how to install it (``hint``).

    ``exporter``: also require ``onnxscript``, which torch's dynamo exporter needs (fail here with
    the install command, not deep inside torch).
    """
    try:
        import onnx

        if exporter:
            import onnxscript  # noqa: F401
    except ImportError as err:
        needed = "the onnx and onnxscript packages" if exporter else "the onnx package"
        raise BackendUnavailable(f"{purpose} needs {needed} ({err.name} is missing): {hint}") from err
    return onnx


def example_side(spec: ModelSpec) -> int:
    """Side of the square a dynamic-shape trace runs: ``DYNAMIC_EXAMPLE``, raised to the model's
    smallest input and rounded up to its multiple (the ONNX export and OpenVINO's conversion)."""
    return -(-max(DYNAMIC_EXAMPLE, spec.min_size) // spec.multiple_of) * spec.multiple_of


def _example_input(shape: tuple[int | None, ...], spec: ModelSpec, dtype: torch.dtype) -> torch.Tensor:
    """A traced example: the fixed shape, or batch 2 and a 64-ish square for a dynamic export."""
    side = example_side(spec)
    dims = [d if d is not None else (2 if i == 0 else side) for i, d in enumerate(shape)]
    # Values do not reach the graph; a seeded generator just keeps the export reproducible.
    return torch.rand(dims, generator=torch.Generator().manual_seed(0)).to(dtype)


def _opset_of(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _warn_external_data(output: Path) -> None:
    # A file exported earlier by torch directly may have left <name>.data next to it. The new file
    # does not reference it; it is not vsr's to delete, so say so instead.
    data = output.with_name(output.name + ".data")
    if data.is_file():
        log.warning("%s embeds its weights; %s beside it is not used by it (left as it is)", output.name, data.name)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision-op registration warnings, deprecation notices).

    The CLI is the only place that prints; export problems still surface as exceptions.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)
