"""Small layers and functions shared by segcls's modules (one place each)."""
from typing import Sequence

import torch
from detectron2.layers import Conv2d, get_norm
from fvcore.nn import weight_init
from torch.nn import functional as F


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) ``x`` to ``size`` (H, W); returned unchanged if already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def conv_norm_act(in_channels, out_channels, kernel_size, norm="BN", dilation=1, act=True, groups=1):
    """conv (k x k, 'same' padding, bias only without norm, ``groups`` groups) -> norm -> ReLU,
    MSRA-initialised. A detectron2 ``Conv2d`` (parameters ``weight``, ``bias``, ``norm.*``)."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        groups=groups,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu if act else None,
    )
    weight_init.c2_msra_fill(conv)
    return conv
