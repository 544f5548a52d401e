"""LPIPS v0.1 (Zhang et al., CVPR 2018), the learned perceptual image patch similarity.

The definition is the official one (richzhang/PerceptualSimilarity, ``lpips/lpips.py``):

1. inputs in [0, 1] are mapped to [-1, 1] (``2x - 1``), then through LPIPS's ScalingLayer
   ``(x - shift) / scale`` with shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450);
2. the trunk's five ReLU outputs (AlexNet ``relu1``..``relu5``; VGG16 ``relu1_2``, ``relu2_2``,
   ``relu3_3``, ``relu4_3``, ``relu5_3``) of both images are unit-normalised over channels
   (``f / (||f||_2 + 1e-10)``);
3. their squared difference goes through a 1x1 linear head per layer (no bias), is averaged over
   the picture, and the five layers are summed.

The trunk and heads are the offline files (:mod:`vsr.perceptual.fetch`): torchvision's ImageNet
AlexNet/VGG16 and the ``lpips`` wheel's v0.1 heads. Lower is more similar; 0 for equal images.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from . import fetch, nets

log = logging.getLogger(__name__)

# LPIPS's ScalingLayer constants (the official code's, in its [-1, 1] input units).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

_TRUNKS = {
    "alex": (nets.ALEXNET_LPIPS_LAYERS, "lpips_alex"),
    "vgg": (nets.VGG16_LPIPS_LAYERS, "lpips_vgg"),
}


def check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Refuse inputs that are not two (N, 3, H, W) RGB batches of one shape."""
    if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
        raise ValueError(f"{what} takes two RGB batches (N, 3, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def normalize_channels(feature: torch.Tensor) -> torch.Tensor:
    """Each pixel's feature vector divided by its L2 norm (plus 1e-10, as the official code)."""
    norm = torch.sqrt(torch.sum(feature**2, dim=1, keepdim=True))
    return feature / (norm + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance; ``forward(x, y)`` takes RGB in [0, 1], (N, 3, H, W), returns (N,).

    ``net`` is ``"alex"`` (the default, the metric people quote) or ``"vgg"`` (closer to a
    perceptual loss). The weights come from ``$VSR_HOME/perceptual`` (``vsr models fetch
    perceptual``); the module is frozen and in eval mode. Gradients flow to the inputs, so it
    also serves as a loss; wrap calls in ``torch.no_grad()`` for measuring.
    """

    def __init__(self, *, net: str = "alex"):
        super().__init__()
        if net not in _TRUNKS:
            raise ValueError(f"unknown LPIPS trunk {net!r}; known: {', '.join(_TRUNKS)}")
        layers, heads_name = _TRUNKS[net]
        self.net_name = net
        # LPIPS scales its own input; no ImageNet mean/std on top.
        self.net = nets.alexnet(layers=layers) if net == "alex" else nets.vgg16(layers=layers, normalize_input=False)
        heads = fetch.load(heads_name)
        self.lins = nn.ModuleList(nn.Conv2d(heads[f"lins.{k}.weight"].shape[1], 1, kernel_size=1, bias=False) for k in range(len(layers)))
        self.lins.load_state_dict({k.removeprefix("lins."): v for k, v in heads.items()}, strict=True)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        nets.freeze(self)

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> [-1, 1] -> LPIPS's ScalingLayer, in the official order of operations."""
        x = 2 * x - 1
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_pair(x, y, "LPIPS")
        dtype = self.lins[0].weight.dtype
        fx = self.net(self.scale_input(x.to(dtype)))
        fy = self.net(self.scale_input(y.to(dtype)))
        total = x.new_zeros((x.shape[0],), dtype=dtype)
        for lin, name in zip(self.lins, self.net.layers, strict=True):
            diff = (normalize_channels(fx[name]) - normalize_channels(fy[name])) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def lpips(x: torch.Tensor, y: torch.Tensor, *, net: str = "alex") -> torch.Tensor:
    """LPIPS v0.1 distances (N,) between two RGB batches in [0, 1], without gradients (builds the
    network each call: keep an :class:`LPIPS` for many calls)."""
    with torch.no_grad():
        return LPIPS(net=net)(x, y)
