"""Small layers and functions shared by segcls's modules (one place each)."""
from typing import Sequence

import torch
from torch.nn import functional as F


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) ``x`` to ``size`` (H, W); returned unchanged if already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
