"""DISTS (Ding et al., TPAMI 2020), deep image structure and texture similarity.

The definition is the official one (dingkeyan93/DISTS, ``DISTS_pytorch/DISTS_pt.py``):

* the trunk is torchvision's ImageNet VGG16 up to ``relu5_3``, its input normalised with the
  ImageNet mean and std, with every 2x2 max-pool replaced by an L2 pooling: the square root of a
  stride-2 depthwise blur of the squared feature (3x3 window ``hanning(5)[1:-1]`` outer product,
  normalised to sum 1, padding 1, plus 1e-12 under the root);
* the compared stages are the input itself (3 channels, not normalised) and ``relu1_2``,
  ``relu2_2``, ``relu3_3``, ``relu4_3``, ``relu5_3`` (64, 128, 256, 512, 512 channels: 1475);
* per channel, a texture term ``(2 mx my + c1) / (mx^2 + my^2 + c1)`` on the spatial means and a
  structure term ``(2 cov + c2) / (vx + vy + c2)`` on the spatial (biased) variances and
  covariance, c1 = c2 = 1e-6; weighted by alpha and beta (each divided by ``sum(alpha) + sum(beta)``),
  summed; DISTS = 1 - the sum. Lower is more similar; 0 for equal images.

Sizes: the official model computes on the images as given. Its command-line demo
(``prepare_image``) first shrinks images whose shorter side is over 256 pixels, but the metric
itself does not, and the published values (IQA-PyTorch's ``results_official.csv``, reproduced in
the tests) are of full-size images; :class:`DISTS` likewise never resizes.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import fetch, nets
from .lpips import check_pair

log = logging.getLogger(__name__)

STAGES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = (3, 64, 128, 256, 512, 512)  # the input, then the five stages
C1 = 1e-6
C2 = 1e-6


def hanning_window(size: int = 5) -> torch.Tensor:
    """DISTS's 2-D pooling window: ``hanning(size)[1:-1]`` outer product, normalised to sum 1."""
    a = np.hanning(size)[1:-1]
    g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
    return g / g.sum()


class L2Pool(nn.Module):
    """DISTS's L2 pooling for ``channels`` channels: ``sqrt(blur(x^2) + 1e-12)``, stride 2."""

    def __init__(self, channels: int, *, filter_size: int = 5):
        super().__init__()
        self.padding = (filter_size - 2) // 2
        # Not persistent: the trunk's state dict stays torchvision's.
        self.register_buffer("filter", hanning_window(filter_size)[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.filter.to(x.dtype), stride=2, padding=self.padding, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS; ``forward(x, y)`` takes RGB in [0, 1], (N, 3, H, W), at full size, returns (N,).

    The trunk is the offline VGG16 and alpha/beta the ``DISTS_pytorch`` wheel's
    (``vsr models fetch perceptual``); frozen, eval mode. Gradients flow to the inputs (DISTS also
    serves as a loss); wrap calls in ``torch.no_grad()`` for measuring.
    """

    def __init__(self):
        super().__init__()
        self.vgg = nets.vgg16(layers=STAGES, normalize_input=True, pool=L2Pool)
        weights = fetch.load("dists")
        self.register_buffer("alpha", weights["alpha"].float())
        self.register_buffer("beta", weights["beta"].float())
        nets.freeze(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_pair(x, y, "DISTS")
        dtype = self.alpha.dtype
        x, y = x.to(dtype), y.to(dtype)
        fx, fy = self.vgg(x), self.vgg(y)
        feats_x = [x, *(fx[name] for name in STAGES)]
        feats_y = [y, *(fy[name] for name in STAGES)]
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, CHANNELS, dim=1)
        texture = x.new_zeros((x.shape[0], 1, 1, 1))
        structure = x.new_zeros((x.shape[0], 1, 1, 1))
        for a, b, f0, f1 in zip(alphas, betas, feats_x, feats_y, strict=True):
            mx, my = f0.mean((2, 3), keepdim=True), f1.mean((2, 3), keepdim=True)
            texture = texture + (a * ((2 * mx * my + C1) / (mx**2 + my**2 + C1))).sum(1, keepdim=True)
            vx = ((f0 - mx) ** 2).mean((2, 3), keepdim=True)
            vy = ((f1 - my) ** 2).mean((2, 3), keepdim=True)
            cov = (f0 * f1).mean((2, 3), keepdim=True) - mx * my
            structure = structure + (b * ((2 * cov + C2) / (vx + vy + C2))).sum(1, keepdim=True)
        return 1 - (texture + structure).view(x.shape[0])


def dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DISTS (N,) between two RGB batches in [0, 1], without gradients (builds the network each
    call: keep a :class:`DISTS` for many calls)."""
    with torch.no_grad():
        return DISTS()(x, y)
