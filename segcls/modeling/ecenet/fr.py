"""
ECENet's Feature Reconstruction (FR, ECENet Sec. 3.2, Eqs. 1-3) and its diversity loss.

Two readings, switched by ``MODEL.ECENET.FR.*`` (defaults: the authors' released head,
``shared/specs/ecenet_released.md`` Sec. 1.1):

- intrinsic branch (Eq. 1), both: ``Y' = BN(conv1x1(F_i))`` (no bias) with ``C'_i = C_i // 2``
  channels;
- cheap operation (:func:`cheap_operation`): released ``BN(DW3x3(Y'))`` with a conv bias and no
  ReLU (``CHEAP_RELU False``); paper-literal GhostNet's ``ReLU(BN(DW3x3(Y')))`` without bias;
- squeeze-and-excitation (:class:`SqueezeExcitation`) of the diverse branch (Eq. 2),
  ``Y'' = Z * gate(W_2 ReLU(W_1 mean_HW(Z)))``: released ratio 2, no biases and *no* gate (the
  MLP output is multiplied on unbounded and signed, ``SE_GATE "none"``); paper-literal ratio 4,
  biases and a sigmoid gate;
- output: released ``LN_c(conv1x1(concat(Y'', Y')))`` (diverse channels first, no bias, no norm
  after the conv, then a LayerNorm over the channels of every pixel: ``OUT_NORM "LN"``,
  ``DIVERSE_FIRST True``); paper-literal ``BN(conv1x1(concat(Y', Y'')))``. No residual in either;
- diversity loss (Eq. 3) taken literally (max over channels inside the sum over pixels, the
  reading the released code confirms), see :func:`diversity_loss`.
"""
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import adaptive_avg_pool2d, conv_norm_act
from ..precision import float32

SE_GATES = {"sigmoid": torch.sigmoid, "hard_sigmoid": F.hardsigmoid, "none": lambda z: z}
OUT_NORMS = ("LN", "BN")


class ChannelLayerNorm(nn.LayerNorm):
    """Affine LayerNorm over the channels of every pixel (``LN_c``): (B, C, H, W) -> (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def cheap_operation(channels: int, norm: str = "BN", relu: bool = True) -> nn.Module:
    """GhostNet's cheap linear operation, (B, channels, H, W) -> (B, channels, H, W): depthwise 3x3
    conv -> norm, then ReLU with ``relu`` (the conv has no bias) or, without, a conv bias and no
    activation (the released FR's cheap op)."""
    if relu:
        return conv_norm_act(channels, channels, 3, norm, groups=channels)
    conv = conv_norm_act(channels, channels, 3, norm, groups=channels, act=False)
    conv.bias = nn.Parameter(torch.zeros(channels))
    return conv


class SqueezeExcitation(nn.Module):
    """
    SE block (Hu et al.): ``x * gate(W2 ReLU(W1 avgpool(x) + b1) + b2)``, ``W1``: C -> C // ratio,
    ``W2``: C // ratio -> C, biases with ``bias``, gate ``"sigmoid"``, ``"hard_sigmoid"`` or
    ``"none"`` (identity: the released FR). (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, ratio: int = 4, gate: str = "sigmoid", bias: bool = True):
        super().__init__()
        if gate not in SE_GATES:
            raise ValueError(f"MODEL.ECENET.FR.SE_GATE={gate!r}: expected one of {sorted(SE_GATES)}")
        if ratio < 1 or channels // ratio < 1:
            raise ValueError(
                f"MODEL.ECENET.FR.SE_RATIO={ratio}: must be >= 1 and at most the diverse-branch channels ({channels})"
            )
        self.reduce = nn.Conv2d(channels, channels // ratio, kernel_size=1, bias=bias)
        self.expand = nn.Conv2d(channels // ratio, channels, kernel_size=1, bias=bias)
        self.gate = SE_GATES[gate]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(F.relu(self.reduce(s))))


class FeatureReconstruction(nn.Module):
    """
    FR for one backbone stage (Eqs. 1-2; see the module docstring for the switches; the keyword
    defaults are the paper-literal reading, the config defaults the released one).

    forward: ``F_i`` (B, C_i, H, W) -> (``X~_i`` (B, C_i, H, W), ``Y''`` (B, C_i // 2, H, W)); the
    second output, the SE-scaled diverse branch, is what :func:`diversity_loss` is computed on.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        se_ratio: int = 4,
        se_gate: str = "sigmoid",
        se_bias: bool = True,
        cheap_relu: bool = True,
        out_norm: str = "BN",
        diverse_first: bool = False,
        norm: str = "BN",
    ):
        super().__init__()
        half = in_channels // 2
        if half < 1:
            raise ValueError(f"FeatureReconstruction needs at least 2 input channels, got {in_channels}")
        if out_norm not in OUT_NORMS:
            raise ValueError(f"MODEL.ECENET.FR.OUT_NORM={out_norm!r}: expected one of {list(OUT_NORMS)}")
        self.diverse_first = diverse_first
        self.intrinsic = conv_norm_act(in_channels, half, 1, norm, act=False)
        self.cheap = cheap_operation(half, norm, relu=cheap_relu)
        self.se = SqueezeExcitation(half, se_ratio, se_gate, bias=se_bias)
        if out_norm == "BN":
            self.fuse = conv_norm_act(2 * half, in_channels, 1, norm, act=False)
        else:
            self.fuse = nn.Sequential(
                nn.Conv2d(2 * half, in_channels, kernel_size=1, bias=False), ChannelLayerNorm(in_channels)
            )

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        intrinsic = self.intrinsic(x)  # Eq. 1
        diverse = self.se(self.cheap(intrinsic))  # Eq. 2
        branches = [diverse, intrinsic] if self.diverse_first else [intrinsic, diverse]
        return self.fuse(torch.cat(branches, dim=1)), diverse


@float32
def diversity_loss(diverse: torch.Tensor) -> torch.Tensor:
    """
    Eq. 3 taken literally, batch mean: for each image, softmax of every channel ``j`` over its
    ``H*W`` positions, ``S = sum_k max_j softmax_j[k]``, ``L_div = 1 - S / C'``. Computed in
    float32 (:func:`~segcls.modeling.precision.float32`: autocast off, half inputs cast) under
    mixed precision: the softmax over many
    positions is where half precision loses the loss (its values are ~1/HW).

    ``diverse``: (B, C', H, W). Returns a scalar. Range: ``(max(0, 1 - HW / C'), 1 - 1 / C']``
    (``S >= 1`` since one channel's softmax sums to 1; ``S <= min(HW, C')``); a constant map gives
    exactly ``1 - 1 / C'``, one sharp peak per channel at distinct positions tends to
    ``max(0, 1 - HW / C')`` (0 only when ``HW >= C'``).
    """
    b, c = diverse.shape[:2]
    prob = diverse.reshape(b, c, -1).softmax(dim=-1)
    covered = prob.max(dim=1).values.sum(dim=-1)  # (B,)
    return (1 - covered / c).mean()
