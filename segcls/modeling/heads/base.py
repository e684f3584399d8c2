"""
What every decode head shares: the input feature(s) it reads from its config node and the
``in_feature`` / ``out_channels`` / ``out_stride`` attributes the meta-architectures use
(see :mod:`segcls.modeling.registry`).
"""
from typing import Dict, Optional

from detectron2.layers import ShapeSpec
from torch import nn


def input_feature(node, input_shape: Dict[str, ShapeSpec], index: int = -1) -> Dict[str, object]:
    """``{"in_feature", "in_channels", "in_stride"}`` of ``node.IN_FEATURES[index]`` (by default the
    last, deepest feature, the input of single-input heads), as keyword arguments of a head."""
    name = node.IN_FEATURES[index]
    return {"in_feature": name, "in_channels": input_shape[name].channels, "in_stride": input_shape[name].stride}


class DecodeHead(nn.Module):
    """
    Base of segcls's decode heads: sets ``in_feature`` (the feature a single-input head reads; None
    for multi-input heads, which keep their own names), ``out_channels`` (C of the pixel feature)
    and ``out_stride`` (input size / pixel-feature size). Holds no parameters, so deriving from it
    changes no state-dict key and no initialisation order.
    """

    def __init__(self, *, out_channels: int, out_stride: int, in_feature: Optional[str] = None):
        super().__init__()
        if in_feature is not None:
            self.in_feature = in_feature
        self.out_channels = out_channels
        self.out_stride = out_stride
