"""
Building blocks shared by several decode heads:

- :class:`ImagePooling`: the image-level branch (global average pooling -> 1x1 conv-norm-ReLU ->
  broadcast back to the feature size) of ASPP (DeepLabV3 Sec. 3.3), KSAC (thesis Fig. 2.3) and
  the CAA head (thesis ch. 3);
- :class:`PyramidPooling`: PSPNet's pyramid pooling module (PSPNet Sec. 3.2), used by
  :class:`~segcls.modeling.heads.psp.PSPHead` and :class:`~segcls.modeling.heads.psp.UPerHead`;
- :func:`separable_conv_norm_act`: depthwise-separable conv (DeepLabV3+ Sec. 3.2).

(``conv_norm_act`` and ``resize`` are in :mod:`segcls.modeling.layers`.)
"""
from typing import Sequence

import torch
from torch import nn

from ..layers import adaptive_avg_pool2d, conv_norm_act, match_memory_format, resize


def separable_conv_norm_act(in_channels, out_channels, kernel_size=3, norm="BN", dilation=1):
    """
    Depthwise-separable conv as in DeepLabV3+ (Sec. 3.2) and mmsegmentation's
    ``DepthwiseSeparableConvModule``: depthwise k x k conv (dilated) -> norm -> ReLU, then
    pointwise 1x1 conv -> norm -> ReLU. (N, in_channels, h, w) -> (N, out_channels, h, w).
    """
    depthwise = conv_norm_act(in_channels, in_channels, kernel_size, norm, dilation=dilation, groups=in_channels)
    return nn.Sequential(depthwise, conv_norm_act(in_channels, out_channels, 1, norm))


class ImagePooling(nn.Module):
    """
    Image-level feature: global average pooling -> 1x1 conv -> norm -> ReLU, broadcast to the input
    size (bilinear upsampling of a 1x1 map, as torchvision's ``ASPPPooling`` does, is exactly this
    broadcast). (N, in_channels, h, w) -> (N, out_channels, h, w).

    The norm sees one value per image and channel: with BN, training needs more than one image
    per process (as torchvision's); with SyncBN (mmsegmentation's choice and the shipped
    configs'; on CPU through :func:`~segcls.modeling.layers.cpu_sync_batch_norm`) more than one
    image over all processes, so one image per process works.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN"):
        super().__init__()
        self.conv = conv_norm_act(in_channels, out_channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(adaptive_avg_pool2d(x, 1))
        return match_memory_format(pooled.expand(-1, -1, x.shape[2], x.shape[3]), x)


class PyramidPooling(nn.Module):
    """
    PSPNet's pyramid pooling module (Zhao et al., CVPR 2017, Sec. 3.2): for each bin size b,
    adaptive average pooling to b x b -> 1x1 conv -> norm -> ReLU -> bilinear upsampling to the input
    size; the input and all branches are concatenated.

    (N, in_channels, h, w) -> (N, in_channels + len(bins) * channels, h, w).
    """

    def __init__(
        self, in_channels: int, channels: int, bins: Sequence[int], norm: str = "BN", align_corners: bool = False
    ):
        super().__init__()
        if not bins or any(b < 1 for b in bins):
            raise ValueError(f"PPM.BINS={list(bins)}: expected a non-empty list of positive bin sizes")
        self.bins = list(bins)
        self.align_corners = align_corners
        self.branches = nn.ModuleList([conv_norm_act(in_channels, channels, 1, norm) for _ in self.bins])
        self.out_channels = in_channels + len(self.bins) * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for b, branch in zip(self.bins, self.branches):
            outs.append(match_memory_format(resize(branch(adaptive_avg_pool2d(x, b)), size, self.align_corners), x))
        return torch.cat(outs, dim=1)
