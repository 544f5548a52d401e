"""ESRGAN's generator, RRDBNet (Wang et al., ECCV-W 2018), with BasicSR module names.

Module names and registration order follow BasicSR (``conv_first``, ``body.N.rdbK.convM``,
``conv_body``, ``conv_upK``, ``conv_hr``, ``conv_last``) so Real-ESRGAN files load strictly and the
ncnn layers pair one to one with ``named_modules()`` order.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .spec import ModelSpec

# Residual scaling of ESRGAN: every dense block and every RRDB adds 0.2 * branch to its input.
RESIDUAL_SCALE = 0.2


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the concatenation of the input and all earlier outputs."""

    def __init__(self, *, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual in Residual Dense Block: three dense blocks and an outer scaled residual."""

    def __init__(self, *, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * RESIDUAL_SCALE + x


def default_upsample_count(scale: int) -> int:
    """Upsampling stages BasicSR uses for a scale: x1 and x2 pixel-unshuffle then upsample twice."""
    if scale in (1, 2, 4):
        return 2
    if scale == 8:
        return 3
    raise ValueError(f"RRDBNet scale must be 1, 2, 4 or 8, got {scale}")


class RRDBNet(nn.Module):
    """RRDBNet generator.

    The network pixel-unshuffles its input by ``2**num_upsample // scale`` (BasicSR's x1 and x2
    models), runs ``num_block`` RRDBs at input resolution, then ``num_upsample`` nearest x2 + conv
    stages. ``num_upsample`` defaults to BasicSR's choice for ``scale``; old ESRGAN "1x"/"2x" files
    that upsample 0 or 1 times without unshuffling set it explicitly.
    """

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        num_upsample: int | None = None,
    ):
        super().__init__()
        if num_upsample is None:
            num_upsample = default_upsample_count(scale)
        if num_upsample < 0 or scale < 1 or (2**num_upsample) % scale:
            raise ValueError(f"RRDBNet cannot reach scale {scale} with {num_upsample} x2 upsampling stages")
        unshuffle = 2**num_upsample // scale
        if unshuffle not in (1, 2, 4):
            raise ValueError(f"RRDBNet pixel-unshuffle factor must be 1, 2 or 4, got {unshuffle}")
        self.unshuffle = unshuffle
        self.num_upsample = num_upsample

        self.conv_first = nn.Conv2d(num_in_ch * unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat=num_feat, num_grow_ch=num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for i in range(1, num_upsample + 1):
            setattr(self, f"conv_up{i}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

        params = dict(
            num_in_ch=num_in_ch,
            num_out_ch=num_out_ch,
            scale=scale,
            num_feat=num_feat,
            num_block=num_block,
            num_grow_ch=num_grow_ch,
            num_upsample=num_upsample,
        )
        # Peak live activations per input pixel: three full-width tensors at output resolution,
        # plus a dense block's concatenations at (unshuffled) input resolution.
        hr_px = (2**num_upsample / unshuffle) ** 2
        lr_px = 1.0 / unshuffle**2
        self.spec = ModelSpec(
            arch="RRDBNet",
            params=tuple(params.items()),
            scale=scale,
            in_channels=num_in_ch,
            out_channels=num_out_ch,
            multiple_of=unshuffle,
            min_size=unshuffle,
            activation_per_pixel=3 * num_feat * hr_px + 3 * (num_feat + 4 * num_grow_ch) * lr_px,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(1, self.num_upsample + 1):
            conv = getattr(self, f"conv_up{i}")
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))
