"""Training configuration: a TOML file loaded into frozen dataclasses, one per section.

``load_config("train.toml", ["train.lr=1e-4", "data.workers=0"])`` reads the file with the
standard library's :mod:`tomllib`, applies ``--set section.key=value`` overrides (each value is a
TOML literal; a bare word such as ``cuda`` or ``data/hr`` is taken as a string), checks every key
and type, fills the stage-dependent loss weights, and returns a :class:`Config`.

Every mistake is a :class:`~vsr.errors.ConfigError` (exit 78) with a one-line message naming the
section and key and listing the valid keys of that section.

Relative paths in a config (data folders, the run folder, the VGG file) are relative to the
directory vsr is started from, as with most command-line tools; the resolved config saved beside the
checkpoints records that directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputMissing


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _at_least(low: float) -> dict[str, Any]:
    return {"min": low}


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the generator to train."""

    arch: str = field(default="rrdbnet", metadata=_choices("rrdbnet", "srvgg"))
    num_feat: int = field(default=64, metadata=_at_least(1))
    num_block: int = field(default=23, metadata=_at_least(1))  # rrdbnet
    num_grow_ch: int = field(default=32, metadata=_at_least(1))  # rrdbnet
    num_conv: int = field(default=16, metadata=_at_least(0))  # srvgg
    scale: int = field(default=4, metadata=_at_least(1))
    # A named model (``vsr models``), a checkpoint file, a training step_*.pt, or a run folder
    # (its newest checkpoint, EMA weights); "" trains from scratch.
    pretrained: str = ""


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: where the training and validation pictures come from."""

    train: tuple[str, ...] = ()  # HR image folders and/or video files
    train_lr: str = ""  # paired LR folder: same file names, HR size = LR size * scale
    val: str = ""  # HR pictures: a folder, one image, or a video (frames spread across it)
    val_lr: str = ""  # paired LR folder for val; "" makes LR by bicubic downscaling
    patch_size: int = field(default=128, metadata=_at_least(8))  # HR side of a training crop
    batch_size: int = field(default=16, metadata=_at_least(1))  # per process
    degradation: str = field(default="bicubic", metadata=_choices("bicubic", "realesrgan"))
    workers: int = field(default=4, metadata=_at_least(0))
    frames_per_video: int = field(default=32, metadata=_at_least(1))
    flip: bool = True  # random horizontal and vertical flips
    rot90: bool = True  # random 90-degree rotations (Real-ESRGAN's recipe turns this off)


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: optimisation. Defaults are ESRGAN's PSNR stage (BasicSR train_RRDBNet_PSNR_x4)."""

    stage: str = field(default="psnr", metadata=_choices("psnr", "gan"))
    steps: int = field(default=1000, metadata=_at_least(1))
    lr: float | None = field(default=None, metadata=_at_least(0))  # unset: 2e-4 (psnr stage), 1e-4 (gan stage)
    betas: tuple[float, ...] = (0.9, 0.99)
    schedule: str = field(default="multistep", metadata=_choices("multistep", "cosine", "constant"))
    lr_milestones: tuple[int, ...] = ()  # multistep: steps after which lr is multiplied by lr_gamma
    lr_gamma: float = field(default=0.5, metadata=_at_least(0))
    cosine_period: int = field(default=0, metadata=_at_least(0))  # cosine: restart period; 0 = the whole run
    eta_min: float = field(default=1e-7, metadata=_at_least(0))  # cosine: lowest lr
    ema: float = field(default=0.999, metadata=_at_least(0))  # EMA decay of the generator; 0 disables
    # EMA warm-up: the decay after step n is min(ema, (1 + n) / (10 + n)), so the average covers
    # about the last tenth of the steps until that reaches train.ema (n ~ 9,000 for 0.999) instead
    # of holding the starting weights for thousands of steps; false: train.ema from the first step.
    ema_warmup: bool = True
    seed: int = field(default=0, metadata=_at_least(0))
    device: str = "auto"  # auto, cpu, cuda, cuda:N (torchrun picks cuda:LOCAL_RANK)
    precision: str = field(default="fp32", metadata=_choices("fp32", "bf16", "fp16"))
    log_every: int = field(default=100, metadata=_at_least(1))


@dataclass(frozen=True)
class LossConfig:
    """``[loss]``: weights. Unset weights take the stage's defaults: psnr stage L1 only (1.0, 0, 0);
    gan stage ESRGAN's (pixel 1e-2, perceptual 1.0, gan 5e-3)."""

    pixel: float | None = field(default=None, metadata=_at_least(0))
    perceptual: float | None = field(default=None, metadata=_at_least(0))
    gan: float | None = field(default=None, metadata=_at_least(0))
    # vgg16: torchvision's ImageNet VGG16, offline (`vsr models fetch perceptual`) unless vgg_weights
    # names a file; vgg19 (ESRGAN's network): vgg_weights must name torchvision's vgg19-dcbb9e9d.pth.
    vgg: str = field(default="vgg16", metadata=_choices("vgg16", "vgg19"))
    vgg_weights: str = ""  # a torchvision-format state dict of that network; never downloaded
    vgg_layers: tuple[str, ...] = ()  # features taken before the ReLU; empty = conv5_3 (vgg16) / conv5_4 (vgg19)
    vgg_layer_weights: tuple[float, ...] = ()  # one per layer; empty = 1.0 each


@dataclass(frozen=True)
class DiscriminatorConfig:
    """``[discriminator]``: the gan stage's critic."""

    # vgg: ESRGAN's VGG-style discriminator (patch_size = 4 * 2^k, e.g. 128 as in ESRGAN);
    # patch: fully convolutional variant for any patch size.
    arch: str = field(default="vgg", metadata=_choices("vgg", "patch"))
    num_feat: int = field(default=64, metadata=_at_least(1))
    lr: float = field(default=0.0, metadata=_at_least(0))  # 0 = same as train.lr


@dataclass(frozen=True)
class CheckpointConfig:
    """``[checkpoint]``: the run folder and how often to save."""

    dir: str = "runs/train"
    every: int = field(default=1000, metadata=_at_least(1))
    keep: int = field(default=3, metadata=_at_least(0))  # newest checkpoints kept; 0 keeps all


@dataclass(frozen=True)
class ValConfig:
    """``[val]``: validation on ``data.val``."""

    every: int = field(default=1000, metadata=_at_least(0))  # 0 = only at the end


@dataclass(frozen=True)
class DegradationConfig:
    """``[degradation]``: Real-ESRGAN's second-order pipeline (used when data.degradation = "realesrgan").

    Defaults are the published ranges of Real-ESRGAN (Wang et al., ICCVW 2021, arXiv:2107.10833)
    as set in BasicSR's options/train_realesrgan_x4plus.yml (perf-quality.md section 4).
    Kernel names: iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso.
    """

    # first order
    blur_kernel_size: int = field(default=21, metadata=_at_least(3))  # largest kernel; sizes 7..this, odd
    kernel_list: tuple[str, ...] = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, ...] = (0.2, 3.0)
    betag_range: tuple[float, ...] = (0.5, 4.0)
    betap_range: tuple[float, ...] = (1.0, 2.0)
    resize_prob: tuple[float, ...] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, ...] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, ...] = (1.0, 30.0)  # sigma on the 0..255 scale
    poisson_scale_range: tuple[float, ...] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, ...] = (30.0, 95.0)
    # second order
    second_blur_prob: float = 0.8
    kernel_list2: tuple[str, ...] = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, ...] = (0.2, 1.5)
    betag_range2: tuple[float, ...] = (0.5, 4.0)
    betap_range2: tuple[float, ...] = (1.0, 2.0)
    resize_prob2: tuple[float, ...] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, ...] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, ...] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, ...] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, ...] = (30.0, 95.0)
    final_sinc_prob: float = 0.8


@dataclass(frozen=True)
class Config:
    """The whole training configuration."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    loss: LossConfig = LossConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    val: ValConfig = ValConfig()
    degradation: DegradationConfig = DegradationConfig()


SECTIONS: dict[str, type] = {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in dataclasses.fields(Config)}

# GAN-stage loss weights of ESRGAN (BasicSR train_ESRGAN_x4.yml): L1 1e-2, VGG19 conv5_4 1.0, RaGAN 5e-3.
GAN_STAGE_WEIGHTS = {"pixel": 1e-2, "perceptual": 1.0, "gan": 5e-3}
PSNR_STAGE_WEIGHTS = {"pixel": 1.0, "perceptual": 0.0, "gan": 0.0}
KERNEL_NAMES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a TOML config (or start from the defaults when ``path`` is None), apply
    ``section.key=value`` overrides, and validate everything."""
    raw: dict[str, Any] = {}
    source = "the configuration"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise InputMissing(f"config file {path} does not exist; check the path (examples/ has starting points)")
        if path.is_dir():
            raise ConfigError(f"config {path} is a folder; pass a .toml file")
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config {path} is not valid TOML ({err}); fix the syntax") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"config {path} is not UTF-8 text TOML; save it as UTF-8") from err
    overridden = set()
    for text in overrides:
        section, key, value = parse_override(text)
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {text}: {section} is not a table in {source}")
        table[key] = value
        overridden.add((section, key))
    return config_from_dict(raw, source=source, overridden=overridden)


_BARE_WORD = re.compile(r"[^\s\[\]{}\"'=,#]+")


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"train.lr=1e-4"`` -> ``("train", "lr", 1e-4)``; the value is a TOML literal, or a bare word string."""
    name, sep, value_text = text.partition("=")
    name = name.strip()
    value_text = value_text.strip()
    parts = name.split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"--set {text!r} is not section.key=value (e.g. --set train.lr=1e-4); sections: {', '.join(SECTIONS)}"
        )
    section, key = parts
    if section not in SECTIONS:
        raise ConfigError(f"--set {text!r}: unknown section [{section}]; valid sections: {', '.join(SECTIONS)}")
    valid = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if key not in valid:
        raise ConfigError(f"--set {text!r}: unknown key {key!r} in [{section}]; valid keys: {', '.join(valid)}")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE_WORD.fullmatch(value_text):
            raise ConfigError(
                f"--set {text!r}: {value_text!r} is neither a TOML value nor a bare word; quote strings with spaces,"
                ' e.g. --set data.val="my folder"'
            ) from None
        value = value_text
    return section, key, value


def config_from_dict(raw: Mapping[str, Any], *, source: str = "config", overridden: set[tuple[str, str]] = frozenset()) -> Config:
    """Validate a parsed TOML document into a :class:`Config`; ``overridden`` keys are reported as
    coming from ``--set``."""
    unknown = [name for name in raw if name not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] in {source}; valid sections: {', '.join(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{name}] in {source} must be a table (section), not {_kind(table)}")
        sections[name] = _build_section(cls, name, table, source, overridden)
    cfg = Config(**sections)
    return _finish(cfg, source)


def _build_section(cls: type, name: str, table: Mapping[str, Any], source: str, overridden: set[tuple[str, str]]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            raise ConfigError(f"unknown key {key!r} in [{name}] of {source}; valid keys: {', '.join(fields)}")
    values = {}
    for key, value in table.items():
        origin = "--set" if (name, key) in overridden else source
        value = _coerce(value, hints[key], f"{name}.{key}", origin)
        where = f"{name}.{key} from --set" if origin == "--set" else f"{name}.{key} in {source}"
        meta = fields[key].metadata
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{where} is {value!r}; valid values: {', '.join(meta['choices'])}")
        if "min" in meta and value is not None and value < meta["min"]:
            raise ConfigError(f"{where} is {value!r}; it must be >= {meta['min']}")
        values[key] = value
    return cls(**values)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return next((label for t, label in names.items() if type(value) is t), type(value).__name__)


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _type_label(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return f"a list of {_TYPE_NAMES[typing.get_args(hint)[0]]}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_label(a) for a in typing.get_args(hint) if a is not type(None))
    name = _TYPE_NAMES.get(hint, str(hint))
    return ("an " if name[0] in "aeiou" else "a ") + name


def _coerce(value: Any, hint: Any, label: str, source: str) -> Any:
    """Check ``value`` against the field's type; ``label`` is ``section.key`` (``[i]`` for list items)."""
    where = f"{label} from --set" if source == "--set" else f"{label} in {source}"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, args[0], label, source)
    if origin is tuple:
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if isinstance(value, str) and item is str:
            value = [value]  # a single folder needs no list brackets
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be {_type_label(hint)}, got {_kind(value)} {value!r}")
        return tuple(_coerce(v, item, f"{label}[{i}]", source) for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(f"{where} must be {_type_label(hint)}, got {_kind(value)} {value!r}")
    if hint is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value}")
    return value


def _finish(cfg: Config, source: str) -> Config:
    """Cross-field checks and the stage-dependent loss defaults."""
    m, d, t, loss = cfg.model, cfg.data, cfg.train, cfg.loss
    if m.arch == "rrdbnet" and m.scale not in (1, 2, 4, 8):
        raise ConfigError(f"model.scale = {m.scale} in {source}: RRDBNet supports 1, 2, 4 or 8")
    if d.patch_size % m.scale:
        raise ConfigError(f"data.patch_size = {d.patch_size} in {source} is not a multiple of model.scale = {m.scale}")
    lr_patch = d.patch_size // m.scale
    if m.arch == "rrdbnet" and m.scale in (1, 2) and lr_patch % (4 // m.scale):
        raise ConfigError(f"data.patch_size = {d.patch_size} in {source}: x{m.scale} RRDBNet needs patch_size / scale to be a multiple of {4 // m.scale}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device):
        raise ConfigError(f"train.device = {t.device!r} in {source}; valid values: auto, cpu, cuda, cuda:N")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas = {list(t.betas)} in {source}; give two numbers in [0, 1), e.g. [0.9, 0.99]")
    if list(t.lr_milestones) != sorted(t.lr_milestones) or any(s < 1 for s in t.lr_milestones):
        raise ConfigError(f"train.lr_milestones = {list(t.lr_milestones)} in {source} must be increasing positive step numbers")
    if not 0 <= t.ema < 1:
        raise ConfigError(f"train.ema = {t.ema} in {source}; give a decay in [0, 1) (0.999 as in ESRGAN), 0 disables EMA")

    defaults = GAN_STAGE_WEIGHTS if t.stage == "gan" else PSNR_STAGE_WEIGHTS
    weights = {k: defaults[k] if getattr(loss, k) is None else getattr(loss, k) for k in defaults}
    if t.stage == "psnr" and weights["gan"] > 0:
        raise ConfigError(f"loss.gan = {weights['gan']} in {source} but train.stage = 'psnr'; set train.stage = 'gan' to train with a discriminator")
    if t.stage == "gan" and weights["gan"] <= 0:
        raise ConfigError(f"train.stage = 'gan' in {source} with loss.gan = 0; give the adversarial loss a weight (ESRGAN: 5e-3) or use stage 'psnr'")
    from ..perceptual.nets import vgg_layer_names  # local: keeps `import vsr.train.config` light
    from .losses import perceptual_layers

    layers = perceptual_layers(loss.vgg, loss.vgg_layers)
    valid = vgg_layer_names(loss.vgg)
    bad = [name for name in layers if name not in valid]
    if bad:
        raise ConfigError(
            f"loss.vgg_layers = {list(layers)} in {source}: {bad[0]} is not a {loss.vgg} layer; valid: {', '.join(valid)}"
            + (f" ({bad[0]} is VGG19's: set loss.vgg = 'vgg19' with its file)" if loss.vgg == "vgg16" and bad[0] in vgg_layer_names("vgg19") else "")
        )
    if loss.vgg_layer_weights and len(loss.vgg_layer_weights) != len(layers):
        raise ConfigError(f"loss.vgg_layer_weights in {source} has {len(loss.vgg_layer_weights)} numbers for {len(layers)} vgg_layers; give one per layer or none")

    if t.stage == "gan" and cfg.discriminator.arch == "vgg":
        p = d.patch_size
        if p < 8 or p & (p - 1):
            raise ConfigError(
                f"discriminator.arch = 'vgg' in {source} needs data.patch_size = 4 * 2^k (32, 64, 128, 256...), got {p};"
                " use discriminator.arch = 'patch' for other sizes"
            )
    _check_degradation(cfg.degradation, source)
    lr = t.lr if t.lr is not None else (1e-4 if t.stage == "gan" else 2e-4)  # ESRGAN's two stages
    return dataclasses.replace(cfg, loss=dataclasses.replace(loss, **weights, vgg_layers=layers), train=dataclasses.replace(t, lr=lr))


def _check_degradation(g: DegradationConfig, source: str) -> None:
    def fail(key: str, what: str) -> None:
        raise ConfigError(f"degradation.{key} = {getattr(g, key)!r} in {source}: {what}")

    for key in ("kernel_list", "kernel_list2"):
        bad = [k for k in getattr(g, key) if k not in KERNEL_NAMES]
        if bad or not getattr(g, key):
            fail(key, f"valid kernel names: {', '.join(KERNEL_NAMES)}")
    for names, probs in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
        if len(getattr(g, names)) != len(getattr(g, probs)):
            fail(probs, f"needs one probability per entry of {names}")
    for key in ("resize_prob", "resize_prob2"):
        if len(getattr(g, key)) != 3:
            fail(key, "give three probabilities: up, down, keep")
    for key in ("kernel_prob", "kernel_prob2", "resize_prob", "resize_prob2"):
        values = getattr(g, key)
        if any(v < 0 for v in values) or sum(values) <= 0:
            fail(key, "probabilities must be >= 0 and not all 0")
    for f in dataclasses.fields(g):
        value = getattr(g, f.name)
        if f.name.endswith(("_range", "_range2")) or f.name.startswith("blur_sigma"):
            if len(value) != 2 or value[0] > value[1] or value[0] < 0:
                fail(f.name, "give [low, high] with 0 <= low <= high")
        elif isinstance(value, float) and not 0 <= value <= 1:
            fail(f.name, "a probability must be in [0, 1]")
    if g.blur_kernel_size % 2 == 0 or g.blur_kernel_size < 7:
        fail("blur_kernel_size", "must be odd and >= 7 (Real-ESRGAN: 21)")
    if not (1 <= g.jpeg_range[0] and g.jpeg_range[1] <= 100 and 1 <= g.jpeg_range2[0] and g.jpeg_range2[1] <= 100):
        fail("jpeg_range", "JPEG qualities are 1..100")


# --------------------------------------------------------------------------- output


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The config as plain dicts and lists (tuples become lists), in section order."""

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, name)).items()} for name in SECTIONS}


def config_to_json(cfg: Config, *, indent: int | None = 2) -> str:
    """The resolved config as JSON (what is saved as ``config.json`` in the run folder)."""
    return json.dumps(config_to_dict(cfg), indent=indent)
