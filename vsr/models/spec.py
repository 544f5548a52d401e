"""``ModelSpec``: what the rest of vsr needs to know about a network, carried with every model.

The tiler, the pipeline and the engines read the spec instead of special-casing architectures.
Files that outlive the process (ONNX exports, TensorRT engine sidecars) store it in the one form
:meth:`ModelSpec.to_dict` writes and :meth:`ModelSpec.from_dict` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about one network instance.

    ``params`` are the keyword arguments that rebuild the network from its registry entry;
    two models with the same ``arch`` and ``params`` have state dicts of identical shapes.
    """

    arch: str
    params: tuple[tuple[str, Any], ...]
    scale: int
    in_channels: int
    out_channels: int
    # Input height and width must be multiples of this (pixel-unshuffle models need 2 or 4);
    # the tiler pads to it.
    multiple_of: int = 1
    # Smallest input side the network accepts after padding.
    min_size: int = 1
    dtypes: tuple[str, ...] = DTYPES
    # Fully convolutional, so overlapping tiles blended together reproduce the whole image.
    tileable: bool = True
    # Rough peak number of activation values per input pixel during inference (batch 1),
    # used to pick a tile size that fits in memory. Calibrated against measured peaks.
    activation_per_pixel: float = field(default=0.0, compare=False)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The hyper-parameters as a dict, for ``registry.build(spec.arch, **spec.kwargs)``."""
        return dict(self.params)

    def describe(self) -> str:
        """Short human description, e.g. ``RRDBNet x4 (num_feat=64, num_block=23, ...)``."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.arch} x{self.scale} ({inner})"

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON values: the stored form of a spec (ONNX ``vsr.spec`` metadata, engine sidecars).

        ``params`` is a list of ``[name, value]`` pairs, not an object: the files are written with
        sorted keys, and an object would come back in another order (``ModelSpec`` equality sees
        the order of ``params``).
        """
        return {
            "arch": self.arch,
            "params": [[k, v] for k, v in self.params],
            "scale": self.scale,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "multiple_of": self.multiple_of,
            "min_size": self.min_size,
            "dtypes": list(self.dtypes),
            "tileable": self.tileable,
            "activation_per_pixel": self.activation_per_pixel,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ModelSpec:
        """The spec :meth:`to_dict` stored, after a JSON round trip; ``ValueError`` for a record that is not one.

        Keys other than :data:`FIELDS` are ignored (the ONNX metadata keeps export facts beside the
        spec). A field with a default may be missing, as in files written before it existed.
        ``params`` may also be an object (a hand-written sidecar).
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"a model spec is a JSON object, not {type(record).__name__}")
        missing = [name for name in _REQUIRED if name not in record]
        if missing:
            raise ValueError(f"the model spec has no {', '.join(missing)}")
        params = record["params"]
        try:
            pairs = tuple((k, _tuplify(v)) for k, v in (params.items() if isinstance(params, Mapping) else params))
            optional = {name: record[name] for name in FIELDS if name in record and name not in _REQUIRED}
            if "dtypes" in optional:
                optional["dtypes"] = tuple(optional["dtypes"])
            return cls(
                arch=record["arch"],
                params=pairs,
                scale=int(record["scale"]),
                in_channels=int(record["in_channels"]),
                out_channels=int(record["out_channels"]),
                **optional,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"malformed model spec ({err})") from err


#: Names of the spec's fields, the keys :meth:`ModelSpec.to_dict` writes.
FIELDS = tuple(f.name for f in fields(ModelSpec))
# Fields without a default: a stored spec without them cannot be read back.
_REQUIRED = ("arch", "params", "scale", "in_channels", "out_channels")


def _tuplify(value: Any) -> Any:
    # JSON has no tuples; param values must stay hashable for the frozen ModelSpec.
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value
