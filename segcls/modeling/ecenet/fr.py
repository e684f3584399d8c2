"""
ECENet's Feature Reconstruction (FR, ECENet Sec. 3.2, Eqs. 1-3) and its diversity loss.

How the paper's gaps are resolved (issue 8):

- intrinsic branch (Eq. 1): ``Y' = BN(conv1x1(F_i))`` (no bias) with ``C_i // 2`` channels;
- diverse branch (Eq. 2): ``Y'' = SE(Cheap(Y'))`` with GhostNet's cheap operation
  (depthwise 3x3 conv + BN + ReLU, :func:`cheap_operation`) and a squeeze-and-excitation block
  (global average pool -> 1x1 conv ``C' -> C' / ratio`` -> ReLU -> 1x1 conv ``-> C'`` -> gate;
  ratio 4 and the sigmoid gate are the defaults, both configurable);
- output: ``BN(conv1x1(concat(Y', Y'')))`` (no bias) back to ``C_i`` channels, no residual;
- diversity loss (Eq. 3) taken literally, see :func:`diversity_loss`.
"""
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import conv_norm_act

SE_GATES = {"sigmoid": torch.sigmoid, "hard_sigmoid": F.hardsigmoid}


def cheap_operation(channels: int, norm: str = "BN") -> nn.Module:
    """GhostNet's cheap linear operation: depthwise 3x3 conv (no bias) -> norm -> ReLU,
    (B, channels, H, W) -> (B, channels, H, W)."""
    return conv_norm_act(channels, channels, 3, norm, groups=channels)


class SqueezeExcitation(nn.Module):
    """
    SE block (Hu et al.): ``x * gate(W2 ReLU(W1 avgpool(x) + b1) + b2)``, ``W1``: C -> C // ratio,
    ``W2``: C // ratio -> C, gate ``"sigmoid"`` or ``"hard_sigmoid"``. (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, ratio: int = 4, gate: str = "sigmoid"):
        super().__init__()
        if gate not in SE_GATES:
            raise ValueError(f"MODEL.ECENET.FR.SE_GATE={gate!r}: expected one of {sorted(SE_GATES)}")
        if ratio < 1 or channels // ratio < 1:
            raise ValueError(
                f"MODEL.ECENET.FR.SE_RATIO={ratio}: must be >= 1 and at most the diverse-branch channels ({channels})"
            )
        self.reduce = nn.Conv2d(channels, channels // ratio, kernel_size=1)
        self.expand = nn.Conv2d(channels // ratio, channels, kernel_size=1)
        self.gate = SE_GATES[gate]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(F.relu(self.reduce(s))))


class FeatureReconstruction(nn.Module):
    """
    FR for one backbone stage (Eqs. 1-2; see the module docstring).

    forward: ``F_i`` (B, C_i, H, W) -> (``Y`` (B, C_i, H, W), ``Y''`` (B, C_i // 2, H, W)); the
    second output, the diverse branch, is what :func:`diversity_loss` is computed on.
    """

    def __init__(self, in_channels: int, *, se_ratio: int = 4, se_gate: str = "sigmoid", norm: str = "BN"):
        super().__init__()
        half = in_channels // 2
        if half < 1:
            raise ValueError(f"FeatureReconstruction needs at least 2 input channels, got {in_channels}")
        self.intrinsic = conv_norm_act(in_channels, half, 1, norm, act=False)
        self.cheap = cheap_operation(half, norm)
        self.se = SqueezeExcitation(half, se_ratio, se_gate)
        self.fuse = conv_norm_act(2 * half, in_channels, 1, norm, act=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        intrinsic = self.intrinsic(x)  # Eq. 1
        diverse = self.se(self.cheap(intrinsic))  # Eq. 2
        return self.fuse(torch.cat([intrinsic, diverse], dim=1)), diverse


def diversity_loss(diverse: torch.Tensor) -> torch.Tensor:
    """
    Eq. 3 taken literally, batch mean: for each image, softmax of every channel ``j`` over its
    ``H*W`` positions, ``S = sum_k max_j softmax_j[k]``, ``L_div = 1 - S / C'``.

    ``diverse``: (B, C', H, W). Returns a scalar. Range: ``(max(0, 1 - HW / C'), 1 - 1 / C']``
    (``S >= 1`` since one channel's softmax sums to 1; ``S <= min(HW, C')``); a constant map gives
    exactly ``1 - 1 / C'``, one sharp peak per channel at distinct positions tends to
    ``max(0, 1 - HW / C')`` (0 only when ``HW >= C'``).
    """
    b, c = diverse.shape[:2]
    prob = diverse.reshape(b, c, -1).softmax(dim=-1)
    covered = prob.max(dim=1).values.sum(dim=-1)  # (B,)
    return (1 - covered / c).mean()
