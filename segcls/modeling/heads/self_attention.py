"""
FCN heads with a self-attention block: Non-local (CAR's "ResNet + Self-Attention" baseline) and
CCNet's recurrent criss-cross attention.
"""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...utils.config import get_config_node
from ..layers import conv_norm_act
from ..outputs import SegOutputs
from ..registry import DECODE_HEAD_REGISTRY
from .attention import CrissCrossAttention, NonLocal2d
from .base import DecodeHead, input_feature
from .config import head_keys
from .tail import HeadTail


@head_keys("NONLOCAL", used_by=("NonLocalHead",))
def declare_nonlocal_keys(nonlocal_):
    """``NONLOCAL.*``: the non-local block (Wang et al. 2018, Eqs. 1-4 and 6). MODE:
    "embedded_gaussian" = softmax_j(theta_i . phi_j) (Eq. 3 with the normaliser C(x) = sum_j f),
    "dot_product" = theta_i . phi_j / N (Eq. 4, C(x) = number of positions N). REDUCTION:
    theta/phi/g have C / REDUCTION channels (2 in the paper). USE_SCALE: divide the
    embedded-Gaussian logits by sqrt(C / REDUCTION) (Transformer scaling; mmsegmentation's NLHead
    default; the Non-local paper has no scaling)."""
    nonlocal_.MODE = "embedded_gaussian"
    nonlocal_.REDUCTION = 2
    nonlocal_.USE_SCALE = True


@head_keys("CCNET", used_by=("CCHead",))
def declare_ccnet_keys(ccnet):
    """``CCNET.RECURRENCE``: number of criss-cross attention passes with shared weights (2 =
    full-image context, CCNet "Recurrent Criss-Cross Attention")."""
    ccnet.RECURRENCE = 2


class AttentionFCNHead(DecodeHead):
    """
    ``conv_in`` (k x k conv-norm-ReLU, C_in -> C) -> attention ``block`` (C -> C) -> tail, where
    the tail is the :class:`HeadTail` (C -> C) or, with ``concat_input`` (mmsegmentation's
    FCN-based NLHead/CCHead and the released CCNet), ``conv_out`` (k x k conv-norm-ReLU) ->
    concatenation with the head input -> :class:`HeadTail` (C_in + C -> C).

    Input ``features[in_feature]``: (N, C_in, h, w). Output: the pixel feature ``(N, C, h, w)``
    (+ ``"reg_feature"`` with the regularization projection). Subclasses define
    :meth:`build_block` from the config node.
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        in_stride: int,
        channels: int,
        block: nn.Module,
        tail: HeadTail,
        kernel_size: int = 3,
        norm: str = "BN",
        concat_input: bool = False,
    ):
        super().__init__(in_feature=in_feature, out_channels=channels, out_stride=in_stride)
        self.conv_in = conv_norm_act(in_channels, channels, kernel_size, norm)
        self.block = block
        self.conv_out = conv_norm_act(channels, channels, kernel_size, norm) if concat_input else None
        self.tail = tail

    @classmethod
    def build_block(cls, node, channels: int) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        inputs = input_feature(node, input_shape)
        tail_in = inputs["in_channels"] + node.CHANNELS if node.CONCAT_INPUT else node.CHANNELS
        return {
            **inputs,
            "channels": node.CHANNELS,
            "block": cls.build_block(node, node.CHANNELS),
            "tail": HeadTail.from_node(node, tail_in),
            "kernel_size": node.KERNEL_SIZE,
            "norm": node.NORM,
            "concat_input": node.CONCAT_INPUT,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        x = features[self.in_feature]
        out = self.block(self.conv_in(x))
        if self.conv_out is not None:
            out = torch.cat([x, self.conv_out(out)], dim=1)
        return self.tail(out)


@DECODE_HEAD_REGISTRY.register()
class NonLocalHead(AttentionFCNHead):
    """
    Self-attention / Non-local head (Wang et al. 2018; CAR's "ResNet + Self-Attention" baseline,
    CAR Table 1): conv -> :class:`NonLocal2d` (``NONLOCAL.MODE`` embedded Gaussian or dot
    product) -> conv (the :class:`HeadTail`). See :class:`AttentionFCNHead` for shapes and
    ``CONCAT_INPUT``.
    """

    @classmethod
    def build_block(cls, node, channels):
        return NonLocal2d(
            channels,
            reduction=node.NONLOCAL.REDUCTION,
            mode=node.NONLOCAL.MODE,
            use_scale=node.NONLOCAL.USE_SCALE,
            norm=node.NORM,
        )


@DECODE_HEAD_REGISTRY.register()
class CCHead(AttentionFCNHead):
    """
    CCNet head (Huang et al. 2019, Fig. 2): conv -> :class:`CrissCrossAttention` applied
    ``CCNET.RECURRENCE`` times with shared weights -> conv; the released model concatenates the
    head input before the last conv (``CONCAT_INPUT: True``). See :class:`AttentionFCNHead`.
    """

    @classmethod
    def build_block(cls, node, channels):
        return CrissCrossAttention(channels, recurrence=node.CCNET.RECURRENCE)
