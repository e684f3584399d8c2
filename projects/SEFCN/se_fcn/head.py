from typing import Dict

import torch
from detectron2.config import configurable
from torch import nn

from segcls.utils.config import get_config_node
from segcls.modeling import DECODE_HEAD_REGISTRY
from segcls.modeling.outputs import SegOutputs


@DECODE_HEAD_REGISTRY.register()
class SEHead(nn.Module):
    """
    Gate the channels of the head's input feature with squeeze-and-excitation
    (``x * sigmoid(W2 relu(W1 avgpool(x)))``, x: (N, C, h, w)), then run any registered decode head
    (``MODEL.SE_FCN.BASE_HEAD``) on it; returns that head's :class:`SegOutputs` (pixel feature,
    regularizer features, predictions with their loss specs, ready-made losses) unchanged.
    """

    @configurable
    def __init__(self, *, base_head: nn.Module, in_feature: str, in_channels: int, reduction: int):
        super().__init__()
        self.base_head = base_head
        self.in_feature = in_feature
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, in_channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels // reduction, in_channels, 1),
            nn.Sigmoid(),
        )
        self.out_channels = base_head.out_channels
        self.out_stride = base_head.out_stride

    @classmethod
    def from_config(cls, cfg, input_shape, prefix="MODEL.DECODE_HEAD"):
        in_feature = get_config_node(cfg, prefix).IN_FEATURES[-1]
        return {
            "base_head": DECODE_HEAD_REGISTRY.get(cfg.MODEL.SE_FCN.BASE_HEAD)(cfg, input_shape, prefix=prefix),
            "in_feature": in_feature,
            "in_channels": input_shape[in_feature].channels,
            "reduction": cfg.MODEL.SE_FCN.REDUCTION,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        x = features[self.in_feature]
        features = dict(features, **{self.in_feature: x * self.gate(x)})
        return self.base_head(features, targets)
