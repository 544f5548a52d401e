"""Discriminators for the GAN stage.

:class:`VGGStyleDiscriminator` is ESRGAN's critic (Wang et al. 2018; BasicSR's
``VGGStyleDiscriminator``): stages of a 3x3 conv and a stride-2 4x4 conv, each followed by batch
norm (except the very first conv) and LeakyReLU(0.2), channels 64, 128, 256, 512, 512, ..., until the
map is 4x4, then two linear layers (100 units, 1 logit). ESRGAN trains it on 128x128 HR patches
(five stages); here the number of stages follows ``input_size`` (4 * 2^k), so 128 gives exactly
ESRGAN's layer list and names (``conv0_0`` ... ``conv4_1``, ``bn0_1`` ... ``linear2``) and 256 gives
BasicSR's 256 variant. The linear head fixes the input size.

:class:`PatchDiscriminator` is the same conv stack, three stages deep, ending in a 3x3 conv to one
logit per location instead of the linear head, so it takes any patch size (each logit sees a
receptive field of about 40 px); the RaGAN losses average over all of them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _stage_channels(num_feat: int, stage: int) -> int:
    return num_feat * min(2**stage, 8)


def _add_stages(module: nn.Module, num_in_ch: int, num_feat: int, stages: int) -> int:
    """Add ``stages`` x (3x3 conv, 4x4 stride-2 conv) with BN to ``module``; returns the last channel count.

    Names follow BasicSR (``conv{i}_0``, ``bn{i}_0``, ``conv{i}_1``, ``bn{i}_1``) so its ESRGAN
    discriminator checkpoints load by name.
    """
    in_ch = num_in_ch
    for i in range(stages):
        ch = _stage_channels(num_feat, i)
        first = i == 0
        # The very first conv has a bias and no norm; every conv followed by BN has no bias.
        module.add_module(f"conv{i}_0", nn.Conv2d(in_ch, ch, 3, 1, 1, bias=first))
        if not first:
            module.add_module(f"bn{i}_0", nn.BatchNorm2d(ch, affine=True))
        module.add_module(f"conv{i}_1", nn.Conv2d(ch, ch, 4, 2, 1, bias=False))
        module.add_module(f"bn{i}_1", nn.BatchNorm2d(ch, affine=True))
        in_ch = ch
    return in_ch


def _run_stages(module: nn.Module, x: torch.Tensor, stages: int, lrelu: nn.Module) -> torch.Tensor:
    for i in range(stages):
        x = getattr(module, f"conv{i}_0")(x)
        if i:
            x = getattr(module, f"bn{i}_0")(x)
        x = lrelu(x)
        x = lrelu(getattr(module, f"bn{i}_1")(getattr(module, f"conv{i}_1")(x)))
    return x


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator for ``input_size`` x ``input_size`` patches (128 in ESRGAN)."""

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128):
        super().__init__()
        stages = round(math.log2(max(input_size, 1) / 4))
        if input_size < 8 or 4 * 2**stages != input_size:
            raise ValueError(f"VGGStyleDiscriminator needs input_size = 4 * 2^k (8, 16, ..., 128, 256), got {input_size}")
        self.input_size = input_size
        self.stages = stages
        out_ch = _add_stages(self, num_in_ch, num_feat, stages)
        self.linear1 = nn.Linear(out_ch * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"VGGStyleDiscriminator built for {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}")
        feat = _run_stages(self, x, self.stages, self.lrelu).flatten(1)
        return self.linear2(self.lrelu(self.linear1(feat)))


class PatchDiscriminator(nn.Module):
    """Fully convolutional variant: three conv stages, then one logit per location (any input size >= 8)."""

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, stages: int = 3):
        super().__init__()
        self.stages = stages
        out_ch = _add_stages(self, num_in_ch, num_feat, stages)
        self.conv_out = nn.Conv2d(out_ch, 1, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(_run_stages(self, x, self.stages, self.lrelu)).flatten(1)


def build_discriminator(arch: str, *, num_feat: int, patch_size: int) -> nn.Module:
    """``vgg`` (ESRGAN's, for ``patch_size`` = 4 * 2^k) or ``patch`` (any size)."""
    if arch == "vgg":
        return VGGStyleDiscriminator(num_feat=num_feat, input_size=patch_size)
    if arch == "patch":
        return PatchDiscriminator(num_feat=num_feat)
    raise ValueError(f"unknown discriminator {arch!r}; known: vgg, patch")
