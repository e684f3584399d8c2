"""FCN decode head (Long et al.; torchvision's ``FCNHead`` and mmsegmentation's ``FCNHead``)."""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from ..registry import DECODE_HEAD_REGISTRY
from ...config import get_config_node


@DECODE_HEAD_REGISTRY.register()
class FCNHead(nn.Module):
    """
    ``num_convs`` x (conv k x k -> norm -> ReLU) on one backbone feature; optionally the input is
    concatenated to the result and fused by one more conv (mmsegmentation's ``concat_input``).

    Input ``features[in_feature]``: (N, C_in, h, w). Output ``{"pixel_feature": (N, channels, h, w)}``.
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        in_stride: int,
        channels: int,
        num_convs: int = 1,
        kernel_size: int = 3,
        norm: str = "BN",
        concat_input: bool = False,
    ):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"FCNHead needs num_convs >= 1, got {num_convs}")
        self.in_feature = in_feature
        self.out_channels = channels
        self.out_stride = in_stride
        convs = []
        for i in range(num_convs):
            convs.append(self._conv(in_channels if i == 0 else channels, channels, kernel_size, norm))
        self.convs = nn.Sequential(*convs)
        self.fuse = self._conv(in_channels + channels, channels, kernel_size, norm) if concat_input else None

    @staticmethod
    def _conv(in_channels, out_channels, kernel_size, norm):
        conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            padding=kernel_size // 2,
            bias=not norm,
            norm=get_norm(norm, out_channels),
            activation=F.relu,
        )
        weight_init.c2_msra_fill(conv)
        return conv

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        in_feature = node.IN_FEATURES[-1]
        return {
            "in_feature": in_feature,
            "in_channels": input_shape[in_feature].channels,
            "in_stride": input_shape[in_feature].stride,
            "channels": node.CHANNELS,
            "num_convs": node.NUM_CONVS,
            "kernel_size": node.KERNEL_SIZE,
            "norm": node.NORM,
            "concat_input": node.CONCAT_INPUT,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> Dict[str, torch.Tensor]:
        x = features[self.in_feature]
        out = self.convs(x)
        if self.fuse is not None:
            out = self.fuse(torch.cat([x, out], dim=1))
        return {"pixel_feature": out}
