"""What building and running TensorRT engines share: importing TensorRT, the CUDA device, the
process-wide TensorRT logger, data types, and the input profile of an engine.

Written against the TensorRT Python API of 10.12+ and 11.x (``tensorrt`` from NVIDIA's index).
``import tensorrt`` happens inside :func:`import_trt`, so this module (and the build and runtime
modules on top of it) imports anywhere; without TensorRT or a CUDA GPU the entry points raise
:class:`~vsr.errors.BackendUnavailable` (exit 69) with the install command.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..device import PRECISIONS
from ..errors import BackendUnavailable, InputError, InputMissing
from ..tiling import Shape

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it from NVIDIA's index: pip install tensorrt-cu13 --extra-index-url https://pypi.nvidia.com,"
    " or use --backend torch"
)
MIN_VERSION = (10, 0)

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
#: Precision names of the floating torch types, as sidecars and messages write them.
PRECISION_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}


# --------------------------------------------------------------------------- import and device


def import_trt():
    """The ``tensorrt`` module, or exit 69 with the install command."""
    try:
        import tensorrt as trt
    except ImportError as err:
        detail = " ".join(str(err).split())
        raise BackendUnavailable(f"TensorRT is not installed (import tensorrt failed: {detail}); {INSTALL_HINT}") from err
    version = getattr(trt, "__version__", "0")
    network_flag_names(version)  # refuses versions older than MIN_VERSION
    return trt


def cuda_device(device: torch.device | str | int | None) -> torch.device:
    """The CUDA device TensorRT runs on (None: torch's current one), or exit 69 naming what is missing."""
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


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """torch dtype of a ``tensorrt.DataType`` (or its name, ``"HALF"``)."""
    name = trt_dtype if isinstance(trt_dtype, str) else getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise InputError(f"TensorRT engine tensor type {name} has no torch equivalent vsr supports") from None


def device_info(device: torch.device) -> dict[str, str]:
    """GPU name and compute capability (part of the cache key: engines are per architecture)."""
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def read_input(path: Path, what: str, hint: str) -> bytes:
    """The bytes of an input file (an ONNX model, a plan); missing is exit 66, unreadable exit 65, each with one line."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputMissing(f"{what} {path} does not exist; {hint}") from None
    except OSError as err:
        raise InputError(f"cannot read {what} {path} ({err.strerror or err})") from err


# --------------------------------------------------------------------------- the input profile


class ShapeRange(NamedTuple):
    """The optimisation profile of the engine's input: ``min <= shape <= max``, tuned for ``opt``."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        """Whether ``shape`` is inside the profile in every dimension."""
        shape = tuple(int(s) for s in shape)
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def describe(self) -> str:
        """``min 1x3x16x16, opt 4x3x256x256, max 4x3x256x256``."""
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        return f"min {fmt(self.min)}, opt {fmt(self.opt)}, max {fmt(self.max)}"

    def as_dict(self) -> dict[str, list[int]]:
        """JSON form, for the cache key and the sidecar."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> ShapeRange:
        """Inverse of :meth:`as_dict`."""
        return cls(*(tuple(int(v) for v in d[k]) for k in ("min", "opt", "max")))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- TensorRT logger

_LOGGER = None
_LOGGER_GUARD = threading.Lock()


def trt_logger(trt):
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


def recent_errors(logger, since: int) -> str:
    """The last few TensorRT error messages logged since ``logger.seq`` was ``since``, on one line."""
    errors = [msg for seq, msg in logger.errors if seq >= since] if logger is not None else []
    return "; ".join(errors[-3:]) or "no error message from TensorRT"


__all__ = [
    "INSTALL_HINT",
    "PRECISION_NAMES",
    "ShapeRange",
    "cuda_device",
    "device_info",
    "import_trt",
    "network_flag_names",
    "parse_version",
    "read_input",
    "recent_errors",
    "torch_dtype",
    "trt_logger",
]
