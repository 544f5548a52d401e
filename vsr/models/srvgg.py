"""SRVGGNetCompact (Real-ESRGAN's "compact" models such as realesr-animevideov3).

A plain stack of 3x3 convs with activations at input resolution, a last conv to
``num_out_ch * upscale**2`` channels, PixelShuffle, and the nearest-upsampled input added so the
network only learns the residual. Module indices follow Real-ESRGAN (``body.N``), activations
included, so PReLU slopes sit at the odd indices.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .spec import ModelSpec

ACTIVATIONS = ("prelu", "relu", "leakyrelu")


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"SRVGGNetCompact act_type must be one of {ACTIVATIONS}, got {act_type!r}")


class SRVGGNetCompact(nn.Module):
    """Compact VGG-style super-resolution network with a global nearest-upsampling skip."""

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ):
        super().__init__()
        if upscale < 1:
            raise ValueError(f"SRVGGNetCompact upscale must be >= 1, got {upscale}")
        if num_in_ch != num_out_ch:
            # The skip adds the upsampled input to the output channel for channel.
            raise ValueError(f"SRVGGNetCompact needs num_in_ch == num_out_ch, got {num_in_ch} and {num_out_ch}")
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)
        self.upscale = upscale
        params = dict(
            num_in_ch=num_in_ch,
            num_out_ch=num_out_ch,
            num_feat=num_feat,
            num_conv=num_conv,
            upscale=upscale,
            act_type=act_type,
        )
        self.spec = ModelSpec(
            arch="SRVGGNetCompact",
            params=tuple(params.items()),
            scale=upscale,
            in_channels=num_in_ch,
            out_channels=num_out_ch,
            # Three feature maps at input resolution, the shuffled output and the upsampled skip.
            activation_per_pixel=3 * num_feat + 3 * num_out_ch * upscale * upscale,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
