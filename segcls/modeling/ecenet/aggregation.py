"""
ECENet's multi-stage aggregation (Sec. 3.5): every stage's enhanced feature (B, C, H_i, W_i) is
brought to the finest stage's resolution with GhostModules and pixel shuffles (``r_i`` =
stride_i / stride_1), the results are concatenated (4C channels for 4 stages) and fused into the
N class logits at the finest stride. ``MODEL.ECENET.*`` switches (defaults: the authors' released
head, ``shared/specs/ecenet_released.md`` Sec. 1.7):

- ``UPSAMPLE "cascade"`` (released): ``log2 r_i`` steps of ``Ghost(C -> 4C)`` + ``PixelShuffle(2)``,
  level 1 (``r = 1``) untouched; ``r_i`` must be powers of 2. ``"single"`` (paper-literal): one
  ``Ghost(C -> C r_i^2)`` + ``PixelShuffle(r_i)`` per level, level 1 included (``Ghost(C -> C)``).
  The maps are then bilinearly resized to the first one's size (a no-op for matching strides).
- ``FUSION "conv3x3"`` (released, about 60 GFLOPs of the Swin-B model at 640x640): ``ReLU(BN(3x3
  conv 4C -> C, no bias))``, ``Dropout2d(FUSION_DROPOUT = 0.1)``, ``1x1 conv C -> N`` (with bias,
  mmsegmentation's ``conv_seg``); ``"conv1x1"`` (paper-literal): one ``1x1 conv 4C -> N``. The
  final 1x1's weights are N(0, 0.01^2), bias 0, as mmsegmentation's ``conv_seg``.
"""
import math
from typing import Sequence

import torch
from torch import nn

from ..layers import conv_norm_act, resize
from .fr import cheap_operation

UPSAMPLES = ("cascade", "single")
FUSIONS = ("conv3x3", "conv1x1")


class GhostModule(nn.Module):
    """
    GhostNet's Ghost module with ratio 2: primary 1x1 conv (no bias) + norm + ReLU to
    ``ceil(out / 2)`` channels, the :func:`~segcls.modeling.ecenet.fr.cheap_operation` on them
    (depthwise 3x3 + norm + ReLU), concatenated and cut to ``out_channels``.
    (B, in, H, W) -> (B, out, H, W).
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


def ghost_upsampler(dim: int, scale: int, upsample: str, norm: str) -> nn.Module:
    """(B, C, h, w) -> (B, C, h * scale, w * scale) as ``upsample`` says (module docstring)."""
    if upsample == "single":
        return nn.Sequential(GhostModule(dim, dim * scale * scale, norm), nn.PixelShuffle(scale))
    steps = int(round(math.log2(scale)))
    if 2**steps != scale:
        raise ValueError(
            f"MODEL.ECENET.UPSAMPLE='cascade' needs stride ratios that are powers of 2 (MODEL.ECENET.IN_FEATURES), "
            f"got {scale}; use 'single'"
        )
    steps = [nn.Sequential(GhostModule(dim, 4 * dim, norm), nn.PixelShuffle(2)) for _ in range(steps)]
    return nn.Sequential(*steps)  # empty (identity) for scale 1


class GhostShuffleAggregation(nn.Module):
    """forward(list of (B, C, H_1 / r_i, W_1 / r_i)) -> (B, N, H_1, W_1) logits; see the module docstring
    (the keyword defaults are the paper-literal reading, the config defaults the released one)."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        scales: Sequence[int],
        norm: str = "BN",
        *,
        upsample: str = "single",
        fusion: str = "conv1x1",
        dropout: float = 0.1,
        align_corners: bool = False,
    ):
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"MODEL.ECENET.UPSAMPLE={upsample!r}: expected one of {list(UPSAMPLES)}")
        if fusion not in FUSIONS:
            raise ValueError(f"MODEL.ECENET.FUSION={fusion!r}: expected one of {list(FUSIONS)}")
        self.align_corners = align_corners
        self.upsamplers = nn.ModuleList(ghost_upsampler(dim, r, upsample, norm) for r in scales)
        in_channels = dim * len(scales)
        if fusion == "conv3x3":
            self.fuse = conv_norm_act(in_channels, dim, 3, norm)
            self.dropout = nn.Dropout2d(dropout)
            in_channels = dim
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        ups = [up(x) for up, x in zip(self.upsamplers, features)]
        x = torch.cat([resize(u, ups[0].shape[-2:], self.align_corners) for u in ups], dim=1)
        if hasattr(self, "fuse"):
            x = self.dropout(self.fuse(x))
        return self.classifier(x)
