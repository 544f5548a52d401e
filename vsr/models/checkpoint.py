"""Reading and writing checkpoint files, in every RRDB/SRVGG state-dict layout people bring.

A checkpoint goes through three steps:

1. ``read_tensors``: the file (``.pth``/``.pt``/``.ckpt`` via ``torch.load(weights_only=True)``, or
   ``.safetensors``) becomes a flat ``{name: tensor}`` dict, unwrapped from ``params_ema``,
   ``params``, ``state_dict``, ``model``, ``net`` ... and stripped of a DataParallel ``module.``
   prefix.
2. ``canonicalize``: the layout (BasicSR/Real-ESRGAN, old ESRGAN ``model.N``, ESRGAN "new arch"
   ``RRDB_trunk``, SRVGGNetCompact ``body.N``) is recognised, names are mapped to BasicSR's, and the
   hyper-parameters are read from tensor shapes.
3. ``load_model``: the architecture is built from the registry and the tensors are loaded strictly.

Every failure is an ``InputError`` whose one-line message says what was found.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, InputMissing, OutputError
from . import registry
from .spec import ModelSpec

Tensors = dict[str, torch.Tensor]

# Keys that wrap the real state dict in training checkpoints, most specific first
# (Real-ESRGAN saves both ``params_ema`` and ``params``; the EMA weights are the good ones).
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "netG", "generator")
# Metadata key in vsr's own safetensors files: one JSON string, so the header bytes are
# deterministic (safetensors writes its metadata map in hash order).
META_KEY = "vsr"


# --------------------------------------------------------------------------- reading files


def read_tensors(path: str | Path) -> tuple[Tensors, dict[str, Any]]:
    """Read a checkpoint file into a flat CPU state dict plus vsr metadata (empty if none)."""
    path = Path(path)
    if not path.exists():
        raise InputMissing(f"model file {path} does not exist, check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a model file; pass a .pth or .safetensors file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise InputError(f"model file {path} is empty, re-download or re-export it")
    if _looks_like_safetensors(head):
        tensors, meta = _read_safetensors(path)
    else:
        tensors, meta = unwrap(_torch_load(path), source=path), {}
    return tensors, meta


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000


def _read_safetensors(path: Path) -> tuple[Tensors, dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"model file {path} is a damaged safetensors file ({_first_line(err)}); re-create it") from err
    return unwrap(tensors, source=path), meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """vsr metadata from a safetensors header, without reading the tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"model file {path} is a damaged safetensors file ({_first_line(err)}); re-create it") from err
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter would break the one-line error
            # weights_only: a checkpoint from the internet must not be able to run code.
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ValueError, ... for bad files
        text = str(err)
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"WeightsUnpickler error: \s*(.+)", text)
            what = f" ({found[1]})" if found else ""
            raise InputError(
                f"model file {path} holds Python objects{what} that torch.load(weights_only=True) refuses to run;"
                " save only the state_dict, or convert the file to .safetensors where you trust it"
            ) from err
        raise InputError(f"model file {path} is not a readable PyTorch or safetensors checkpoint ({_first_line(err)[:160]})") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def unwrap(obj: Any, *, source: str | Path = "checkpoint") -> Tensors:
    """Dig the state dict out of training wrappers and strip a ``module.`` prefix."""
    for _ in range(len(WRAPPER_KEYS)):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise InputError(f"model file {source} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(repr(k) for k in list(obj)[:5]) or "nothing"
        raise InputError(f"model file {source} contains no tensors (top-level keys: {keys})")
    while all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


# --------------------------------------------------------------------------- layouts

_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_OLD_TRUNK = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")
_NEW_ARCH = [
    (re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\."), r"body.\1.rdb\2.conv\3."),
    (re.compile(r"trunk_conv\."), "conv_body."),
    (re.compile(r"upconv(\d+)\."), r"conv_up\1."),
    (re.compile(r"HRconv\."), "conv_hr."),
]
_SRVGG_KEY = re.compile(r"body\.(\d+)\.(weight|bias)")


def _layout_name(sd: Tensors) -> str | None:
    if "conv_first.weight" in sd and "conv_last.weight" in sd:
        if any(k.startswith("RRDB_trunk.") or k.startswith("trunk_conv.") for k in sd):
            return "esrgan-new-arch"
        return "basicsr"
    if "model.0.weight" in sd and any(_OLD_RDB.fullmatch(k) or _OLD_TOP.fullmatch(k) for k in sd):
        return "esrgan-old-arch"
    if sd and all(_SRVGG_KEY.fullmatch(k) for k in sd) and sd.get("body.0.weight", torch.empty(0)).dim() == 4:
        return "srvgg"
    return None


def _from_new_arch(sd: Tensors) -> Tensors:
    out = {}
    for key, value in sd.items():
        for pattern, repl in _NEW_ARCH:
            key = pattern.sub(repl, key, count=1) if pattern.match(key) else key
        out[key] = value
    return out


def _from_old_arch(sd: Tensors, source: str | Path) -> Tensors:
    out: Tensors = {}
    tops: dict[int, Tensors] = {}
    trunk: dict[int, Tensors] = {}
    for key, value in sd.items():
        if m := _OLD_RDB.fullmatch(key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif m := _OLD_TRUNK.fullmatch(key):
            trunk.setdefault(int(m[1]), {})[m[2]] = value
        elif m := _OLD_TOP.fullmatch(key):
            tops.setdefault(int(m[1]), {})[m[2]] = value
        else:
            out[key] = value  # left for the strict load to report as unexpected
    if len(trunk) != 1:
        raise InputError(f"model file {source}: old ESRGAN layout without a single trunk conv (found {len(trunk)})")
    ((_, trunk_conv),) = trunk.items()
    # ESRGAN's sequential: conv_first at 0, the trunk at 1, then per x2 stage (upsample, conv, act)
    # so upsampling convs sit at 3, 6, 9..., then HR conv at 2+3n, act, last conv at 4+3n.
    idx = sorted(i for i in tops if i != 0)
    n_up = len(idx) - 2
    expected = [3 * (k + 1) for k in range(n_up)] + [2 + 3 * n_up, 4 + 3 * n_up]
    if 0 not in tops or n_up < 0 or idx != expected:
        found = ", ".join(f"model.{i}" for i in sorted(tops))
        raise InputError(
            f"model file {source}: old ESRGAN layout with an unexpected layer sequence ({found}); "
            "expected model.0, model.3, model.6, ..., HR conv and last conv"
        )
    names = ["conv_first"] + [f"conv_up{k + 1}" for k in range(n_up)] + ["conv_hr", "conv_last"]
    for name, i in zip(names, [0] + expected):
        for kind, value in tops[i].items():
            out[f"{name}.{kind}"] = value
    for kind, value in trunk_conv.items():
        out[f"conv_body.{kind}"] = value
    return out


def _rrdb_params(sd: Tensors, source: str | Path) -> dict[str, Any]:
    first, last = sd["conv_first.weight"], sd["conv_last.weight"]
    num_feat, in_total = first.shape[0], first.shape[1]
    num_out_ch = last.shape[0]
    blocks = {int(m[1]) for k in sd if (m := re.match(r"body\.(\d+)\.", k))}
    num_block = len(blocks)
    if blocks != set(range(num_block)):
        raise InputError(f"model file {source}: RRDB blocks are not numbered 0..{num_block - 1} ({sorted(blocks)[:8]})")
    grow = sd.get("body.0.rdb1.conv1.weight")
    num_grow_ch = int(grow.shape[0]) if grow is not None else 32
    num_upsample = sum(1 for k in sd if re.fullmatch(r"conv_up\d+\.weight", k))
    # BasicSR x2 and x1 models pixel-unshuffle the input by 2 or 4 before conv_first.
    unshuffle = 1
    for factor in (4, 2):
        if in_total == num_out_ch * factor * factor:
            unshuffle = factor
            break
    scale = 2**num_upsample / unshuffle
    if scale < 1 or scale != int(scale):
        raise InputError(
            f"model file {source}: RRDB with {num_upsample} upsampling convs and a {unshuffle}x pixel-unshuffle "
            "does not give an integer scale"
        )
    return dict(
        num_in_ch=in_total // unshuffle**2,
        num_out_ch=num_out_ch,
        scale=int(scale),
        num_feat=num_feat,
        num_block=num_block,
        num_grow_ch=num_grow_ch,
        num_upsample=num_upsample,
    )


def _srvgg_params(sd: Tensors, source: str | Path) -> dict[str, Any]:
    weights = {int(m[1]): v for k, v in sd.items() if (m := _SRVGG_KEY.fullmatch(k)) and m[2] == "weight"}
    convs = sorted(i for i, w in weights.items() if w.dim() == 4)
    slopes = sorted(i for i, w in weights.items() if w.dim() == 1)
    if not slopes:
        raise InputError(
            f"model file {source}: SRVGGNetCompact without PReLU weights; its activation (ReLU or LeakyReLU) "
            "cannot be read from the tensors"
        )
    if convs != list(range(0, 2 * len(convs) - 1, 2)) or slopes != list(range(1, 2 * len(convs) - 2, 2)):
        raise InputError(f"model file {source}: body.N indices do not form conv/PReLU pairs (convs at {convs[:6]}...)")
    first, last = weights[convs[0]], weights[convs[-1]]
    num_in_ch = first.shape[1]
    upscale = math.isqrt(last.shape[0] // num_in_ch)
    if upscale * upscale * num_in_ch != last.shape[0]:
        raise InputError(f"model file {source}: last conv has {last.shape[0]} outputs, not channels x scale^2")
    return dict(
        num_in_ch=num_in_ch,
        num_out_ch=num_in_ch,
        num_feat=first.shape[0],
        num_conv=len(convs) - 2,
        upscale=upscale,
        act_type="prelu",
    )


def canonicalize(sd: Tensors, *, source: str | Path = "checkpoint") -> tuple[str, dict[str, Any], Tensors]:
    """Recognise the layout; return (architecture, hyper-parameters, BasicSR-named tensors)."""
    layout = _layout_name(sd)
    if layout is None:
        keys = ", ".join(repr(k) for k in list(sd)[:4])
        raise InputError(
            f"model file {source} is not a known super-resolution checkpoint ({len(sd)} tensors, first keys {keys});"
            " vsr reads RRDBNet (ESRGAN old/new arch, BasicSR, Real-ESRGAN) and SRVGGNetCompact files"
        )
    if layout == "srvgg":
        return "SRVGGNetCompact", _srvgg_params(sd, source), sd
    if layout == "esrgan-old-arch":
        sd = _from_old_arch(sd, source)
    elif layout == "esrgan-new-arch":
        sd = _from_new_arch(sd)
    return "RRDBNet", _rrdb_params(sd, source), sd


# --------------------------------------------------------------------------- building


def load_state(model: nn.Module, sd: Tensors, *, source: str | Path = "checkpoint") -> None:
    """Strictly copy ``sd`` into ``model``, with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
        raise InputError(f"model file {source} does not fit {model.spec.arch}: tensors " + ", ".join(parts))
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def model_from_tensors(sd: Tensors, meta: Mapping[str, Any] | None = None, *, source: str | Path = "checkpoint") -> nn.Module:
    """Build the network a state dict describes and load it (fp32, eval mode, on the CPU)."""
    if meta and meta.get("arch") in registry.ARCHITECTURES and isinstance(meta.get("params"), dict):
        # vsr's own files say what they are (this also covers SRVGG without PReLU).
        arch, params = meta["arch"], meta["params"]
    else:
        arch, params, sd = canonicalize(sd, source=source)
    try:
        model = registry.build(arch, **params)
    except (TypeError, ValueError) as err:
        raise InputError(f"model file {source}: cannot build {arch} from {params} ({err})") from err
    load_state(model, sd, source=source)
    return model.eval()


def load_model(path: str | Path) -> nn.Module:
    """Load any supported checkpoint file into an eval-mode CPU model carrying ``.spec``."""
    sd, meta = read_tensors(path)
    return model_from_tensors(sd, meta, source=path)


def save_safetensors(path: str | Path, spec: ModelSpec, tensors: Tensors, extra: Mapping[str, Any] | None = None) -> None:
    """Write tensors with vsr metadata (arch, params, anything in ``extra``); deterministic bytes."""
    from safetensors.torch import save_file

    meta = {"arch": spec.arch, "params": spec.kwargs, **(extra or {})}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        save_file(contiguous, str(path), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    except OSError as err:
        raise OutputError(f"cannot write {path} ({err.strerror or err}); check the folder is writable") from err
