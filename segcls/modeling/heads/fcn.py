"""FCN decode head (Long et al.; torchvision's ``FCNHead`` and mmsegmentation's ``FCNHead``)."""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...utils.config import get_config_node
from ..layers import conv_norm_act
from ..outputs import SegOutputs
from ..registry import DECODE_HEAD_REGISTRY
from .base import DecodeHead, input_feature
from .config import head_keys
from .tail import HeadTail


@head_keys(None, used_by=("FCNHead",))
def declare_fcn_keys(node):
    """FCNHead: NUM_CONVS x (conv KERNEL_SIZE -> norm -> ReLU) on IN_FEATURES[-1], as
    torchvision's and mmsegmentation's FCN heads (the last conv is the HeadTail)."""
    node.NUM_CONVS = 1


@head_keys(None, used_by=("FCNHead", "NonLocalHead", "CCHead"))
def declare_fcn_conv_keys(node):
    """Kernel size of the FCN-style convs and, with CONCAT_INPUT, the head input concatenated with
    the conv output before the last block (mmsegmentation's concat_input); read by FCNHead and the
    attention FCN heads (NonLocalHead, CCHead)."""
    node.KERNEL_SIZE = 3
    node.CONCAT_INPUT = False


@DECODE_HEAD_REGISTRY.register()
class FCNHead(DecodeHead):
    """
    ``num_convs`` x (conv k x k -> norm -> ReLU) on one backbone feature; with ``concat_input`` the
    input is concatenated to the result and fused by one more conv (mmsegmentation's option).
    The last of these convs is the :class:`HeadTail` (CAR's projection / change "A" attach there).

    Input ``features[in_feature]``: (N, C_in, h, w). Output: the pixel feature ``(N, channels, h, w)``
    (+ ``"reg_feature"`` with the regularization projection).
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        in_stride: int,
        channels: int,
        tail: HeadTail,
        num_convs: int = 1,
        kernel_size: int = 3,
        norm: str = "BN",
        concat_input: bool = False,
    ):
        super().__init__(in_feature=in_feature, out_channels=channels, out_stride=in_stride)
        if num_convs < 1:
            raise ValueError(f"FCNHead needs num_convs >= 1, got {num_convs}")
        self.concat_input = concat_input
        num_body = num_convs if concat_input else num_convs - 1
        self.convs = nn.Sequential(
            *[conv_norm_act(in_channels if i == 0 else channels, channels, kernel_size, norm) for i in range(num_body)]
        )
        self.tail = tail

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        inputs = input_feature(node, input_shape)
        in_channels = inputs["in_channels"]
        if node.CONCAT_INPUT:
            tail_in = in_channels + node.CHANNELS
        else:
            tail_in = in_channels if node.NUM_CONVS == 1 else node.CHANNELS
        return {
            **inputs,
            "channels": node.CHANNELS,
            "tail": HeadTail.from_node(node, tail_in),
            "num_convs": node.NUM_CONVS,
            "kernel_size": node.KERNEL_SIZE,
            "norm": node.NORM,
            "concat_input": node.CONCAT_INPUT,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        x = features[self.in_feature]
        out = self.convs(x)
        if self.concat_input:
            out = torch.cat([x, out], dim=1)
        return self.tail(out)
