"""Losses: L1, the VGG perceptual loss (features before ReLU), and relativistic average GAN losses.

The perceptual loss compares VGG features of the output and the target with an L1 distance
(ESRGAN: features before the activation keep more information and give sharper edges). The
network is VGG16 with torchvision's ImageNet weights from the offline files
(:mod:`vsr.perceptual.fetch`, ``vsr models fetch perceptual``), or, with ``loss.vgg_weights``, a
user's own torchvision state dict file: VGG19 (``vgg19-dcbb9e9d.pth``, ESRGAN's network, which
no package ships) or VGG16. The feature stacks are :mod:`vsr.perceptual.nets`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..perceptual import nets

PERCEPTUAL_NETS = ("vgg16", "vgg19")
# ESRGAN's choice, the last conv before its ReLU: conv5_4 in VGG19; its place in VGG16 is conv5_3.
DEFAULT_LAYERS = {"vgg16": ("conv5_3",), "vgg19": ("conv5_4",)}


def perceptual_layers(net: str, layers: Sequence[str]) -> tuple[str, ...]:
    """The layers the loss takes: ``layers``, or the network's default when empty."""
    return tuple(layers) or DEFAULT_LAYERS[net]


def check_perceptual_source(net: str, weights: str) -> None:
    """Refuse before any work a perceptual loss whose network cannot be had (exit 78), or whose
    offline weights are not fetched yet (exit 69, naming the command)."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"loss.vgg_weights = {weights!r} does not exist; point it at torchvision's {net} state dict file"
                f" (e.g. {'vgg19-dcbb9e9d.pth' if net == 'vgg19' else 'vgg16-397923af.pth'}), or leave it empty for the offline VGG16"
            )
        return
    if net == "vgg19":
        raise ConfigError(
            "loss.vgg = 'vgg19' needs loss.vgg_weights: the path of torchvision's vgg19 state dict (vgg19-dcbb9e9d.pth);"
            " no package ships VGG19 and vsr never downloads it. Or use loss.vgg = 'vgg16' (offline: `vsr models fetch perceptual`)"
        )
    from ..perceptual import fetch

    fetch.require("vgg16")


def perceptual_features(net: str, weights: str, layers: Sequence[str]) -> nets.FeatureStack:
    """The frozen VGG feature stack the perceptual loss uses (see the module notes)."""
    layers = perceptual_layers(net, layers)
    if weights or net == "vgg19":
        check_perceptual_source(net, weights)  # a missing user file is a config error, not a load error
        return nets.vgg_from_file(Path(weights).expanduser(), net, layers=layers)
    return nets.vgg16(layers=layers)  # loading checks the offline file once (exit 69 / 65)


class PerceptualLoss(nn.Module):
    """Weighted L1 distance between VGG features of the output and of the target."""

    def __init__(self, vgg: nets.FeatureStack, layer_weights: Sequence[float] | None = None):
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
