"""Losses: L1, the VGG19 perceptual loss (features before ReLU), and relativistic average GAN losses.

The VGG19 feature extractor is written here (torchvision has no CPU build to depend on) with
torchvision's parameter names, ``features.0.weight`` ... ``features.34.bias``, so the state dict
file torchvision publishes for ``vgg19`` (``vgg19-dcbb9e9d.pth``) loads strictly. Only the layers up
to the deepest one asked for are built; the file's deeper ``features.*`` tensors and its
``classifier.*`` tensors are checked by name and ignored. vsr never downloads the weights: the
user points ``loss.vgg_weights`` at the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, InputError

# torchvision's VGG19 ("configuration E"): channels per conv, "M" for a 2x2 max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# ImageNet statistics the torchvision weights were trained with (inputs are RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> dict[str, int]:
    """``conv1_1`` -> 0, ``relu1_1`` -> 1, ..., ``pool5`` -> 36: indices into ``features``."""
    names: dict[str, int] = {}
    index, block, conv = 0, 1, 1
    for item in VGG19_CFG:
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


VGG19_LAYERS: dict[str, int] = _layer_names()
CONV_INDICES: tuple[int, ...] = tuple(i for name, i in VGG19_LAYERS.items() if name.startswith("conv"))


def _build_features(last: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in VGG19_CFG:
        if len(layers) > last:
            break
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_ch, item, kernel_size=3, padding=1))
            # Not in place: a feature taken "before ReLU" must not be overwritten by the ReLU.
            layers.append(nn.ReLU(inplace=False))
            in_ch = item
    return nn.Sequential(*layers[: last + 1])


class VGG19Features(nn.Module):
    """VGG19 ``features`` up to the deepest requested layer; ``forward`` returns ``{name: feature}``.

    ``conv5_4`` is the output of ``features[34]``, before its ReLU (ESRGAN's choice: features
    before activation keep more information and give sharper edges). Inputs are RGB in [0, 1] and
    are normalised with the ImageNet mean and std first.
    """

    def __init__(self, layers: Sequence[str] = ("conv5_4",), *, use_input_norm: bool = True):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG19 layer {unknown[:1] or 'none'}; valid: {', '.join(VGG19_LAYERS)}")
        self.layers = tuple(layers)
        self.last = max(VGG19_LAYERS[name] for name in layers)
        self.features = _build_features(self.last)
        self.use_input_norm = use_input_norm
        # Not persistent: the state dict holds exactly torchvision's ``features.N.*`` names.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._wanted = {VGG19_LAYERS[name]: name for name in self.layers}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.use_input_norm:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._wanted:
                out[self._wanted[index]] = x
        return out


_FEATURE_KEY = re.compile(r"features\.(\d+)\.(weight|bias)")


def load_vgg19(path: str | Path, layers: Sequence[str] = ("conv5_4",)) -> VGG19Features:
    """Build :class:`VGG19Features` for ``layers`` and load a torchvision-format state dict file.

    The file may be torchvision's full ``vgg19`` file or a truncated one holding ``features.*`` up to
    the deepest layer needed. The returned module is frozen (no gradients) and in eval mode.
    """
    if not str(path):
        raise ConfigError(
            "loss.perceptual > 0 needs loss.vgg_weights: the path of torchvision's vgg19 state dict"
            " (vgg19-dcbb9e9d.pth); vsr never downloads it, or set loss.perceptual = 0"
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"loss.vgg_weights = {str(path)!r} does not exist; point it at torchvision's vgg19 state dict file"
            " (vgg19-dcbb9e9d.pth, copied from a machine that has it), or set loss.perceptual = 0"
        )
    from ..models.checkpoint import read_tensors

    tensors, _ = read_tensors(path)
    model = VGG19Features(layers)
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
            else f"{wrong[0]} is {tuple(tensors[wrong[0]].shape)}, VGG19 has {tuple(own[wrong[0]].shape)}"
        )
        raise InputError(
            f"{path} is not a torchvision VGG19 state dict up to {model.layers[-1]} ({detail});"
            " use torchvision's vgg19 file (not vgg16 or vgg19_bn)"
        )
    model.load_state_dict({k: tensors[k].float() for k in own}, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class PerceptualLoss(nn.Module):
    """Weighted L1 distance between VGG19 features of the output and of the target."""

    def __init__(self, vgg: VGG19Features, layer_weights: Sequence[float] | None = None):
        super().__init__()
        self.vgg = vgg
        weights = list(layer_weights) if layer_weights else [1.0] * len(vgg.layers)
        self.layer_weights = dict(zip(vgg.layers, weights, strict=True))

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()  # frozen network: never in training mode
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats = self.vgg(output)
        with torch.no_grad():
            targets = self.vgg(target.detach())
        loss = output.new_zeros((), dtype=torch.float32)
        for name, weight in self.layer_weights.items():
            loss = loss + weight * F.l1_loss(feats[name].float(), targets[name].float())
        return loss


def l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in float32."""
    return F.l1_loss(output.float(), target.float())


# Relativistic average GAN (ESRGAN, Wang et al. 2018, eq. 1-2): the critic judges whether a real
# image is more realistic than the average fake one, and the other way round.


def ragan_d_real(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Half the discriminator loss: a real picture should look more real than the average fake
    (the fake mean is a constant here)."""
    real_logits = real_logits.float()
    target = torch.ones_like(real_logits)
    return 0.5 * F.binary_cross_entropy_with_logits(real_logits - fake_logits.detach().float().mean(), target)


def ragan_d_fake(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """The other half: a fake should look less real than the average real picture (a constant here)."""
    fake_logits = fake_logits.float()
    target = torch.zeros_like(fake_logits)
    return 0.5 * F.binary_cross_entropy_with_logits(fake_logits - real_logits.detach().float().mean(), target)


def ragan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss, both halves. The training loop backpropagates the halves separately
    (one backward per forward with gradients, as BasicSR does, which DDP needs); the sum is the same."""
    return ragan_d_real(real_logits, fake_logits) + ragan_d_fake(fake_logits, real_logits)


def ragan_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss: the targets swapped. ``real_logits`` is a constant (computed without gradient);
    the generator's gradient flows through ``fake_logits`` in both terms."""
    real_logits, fake_logits = real_logits.detach().float(), fake_logits.float()
    loss_real = F.binary_cross_entropy_with_logits(real_logits - fake_logits.mean(), torch.zeros_like(real_logits))
    loss_fake = F.binary_cross_entropy_with_logits(fake_logits - real_logits.mean(), torch.ones_like(fake_logits))
    return (loss_real + loss_fake) / 2
