"""
ECENet's multi-stage aggregation (Sec. 3.5): every stage's enhanced feature (B, C, H_i, W_i) is
upsampled to the finest stage with a GhostModule ``C -> C r_i^2`` followed by
``PixelShuffle(r_i)`` (``r_i`` = stride_i / stride_1, i.e. 1, 2, 4, 8 for strides 4-32); the
results are concatenated and a 1x1 conv (with bias; weights N(0, 0.01^2) as mmsegmentation's
``conv_seg``) gives the N class logits at the finest stride.
"""
import math
from typing import Sequence

import torch
from torch import nn

from ..layers import conv_norm_act
from .fr import cheap_operation


class GhostModule(nn.Module):
    """
    GhostNet's Ghost module with ratio 2: primary 1x1 conv (no bias) + norm + ReLU to
    ``ceil(out / 2)`` channels, the :func:`~segcls.modeling.ecenet.fr.cheap_operation` on them,
    concatenated and cut to ``out_channels``. (B, in, H, W) -> (B, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN"):
        super().__init__()
        init_channels = math.ceil(out_channels / 2)
        self.out_channels = out_channels
        self.primary = conv_norm_act(in_channels, init_channels, 1, norm)
        self.cheap = cheap_operation(init_channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.primary(x)
        return torch.cat([x, self.cheap(x)], dim=1)[:, : self.out_channels]


class GhostShuffleAggregation(nn.Module):
    """forward(list of (B, C, H_1 / r_i, W_1 / r_i)) -> (B, N, H_1, W_1) logits; see the module docstring."""

    def __init__(self, dim: int, num_classes: int, scales: Sequence[int], norm: str = "BN"):
        super().__init__()
        self.upsamplers = nn.ModuleList(
            nn.Sequential(GhostModule(dim, dim * r * r, norm), nn.PixelShuffle(r)) for r in scales
        )
        self.classifier = nn.Conv2d(dim * len(scales), num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(torch.cat([up(x) for up, x in zip(self.upsamplers, features)], dim=1))
