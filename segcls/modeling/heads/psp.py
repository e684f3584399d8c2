"""
Pyramid-pooling decode heads: PSPNet (:class:`PSPHead`) and UperNet (:class:`UPerHead`), sharing
:class:`~segcls.modeling.heads.blocks.PyramidPooling`.
"""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...utils.config import get_config_node
from ..layers import conv_norm_act, resize
from ..outputs import SegOutputs
from ..registry import DECODE_HEAD_REGISTRY
from .base import DecodeHead, input_feature
from .blocks import PyramidPooling
from .config import head_keys
from .tail import HeadTail


@head_keys("PPM", used_by=("PSPHead", "UPerHead"))
def declare_ppm_keys(ppm):
    """
    ``PPM.BINS``: output sizes of the pyramid pooling module's adaptive average pooling, used by
    PSPHead and UPerHead. Default (1, 2, 3, 6) (PSPNet Sec. 3.2; UperNet Sec. 3.2). Each branch has
    CHANNELS channels (mmsegmentation's choice; PSPNet's C_in / len(BINS) is the same 512 for a
    2048-channel input and CHANNELS 512).
    """
    ppm.BINS = [1, 2, 3, 6]


@DECODE_HEAD_REGISTRY.register()
class PSPHead(DecodeHead):
    """
    PSPNet (Zhao et al., CVPR 2017, Fig. 3): :class:`PyramidPooling` on ``IN_FEATURES[-1]``, then
    the :class:`HeadTail` (3x3 conv-norm-ReLU from C_in + len(BINS) * CHANNELS to CHANNELS; the
    paper's "convolution layer" after the concatenation) before the classifier.

    Input (N, C_in, h, w) -> the pixel feature ``(N, CHANNELS, h, w)`` (+ ``"reg_feature"``).
    """

    @configurable
    def __init__(self, *, in_feature: str, in_stride: int, ppm: PyramidPooling, tail: HeadTail):
        super().__init__(in_feature=in_feature, out_channels=tail.out_channels, out_stride=in_stride)
        self.ppm = ppm
        self.tail = tail

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        inputs = input_feature(node, input_shape)
        ppm = PyramidPooling(inputs["in_channels"], node.CHANNELS, node.PPM.BINS, node.NORM, cfg.MODEL.ALIGN_CORNERS)
        return {
            "in_feature": inputs["in_feature"],
            "in_stride": inputs["in_stride"],
            "ppm": ppm,
            "tail": HeadTail.from_node(node, ppm.out_channels),
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        return self.tail(self.ppm(features[self.in_feature]))


@DECODE_HEAD_REGISTRY.register()
class UPerHead(DecodeHead):
    """
    UperNet (Xiao et al., ECCV 2018, Sec. 3.2, Fig. 3; mmsegmentation's ``UPerHead``): on
    ``IN_FEATURES`` (increasing stride, e.g. res2..res5) with L levels,

    - the deepest: :class:`PyramidPooling` -> 3x3 conv-norm-ReLU to CHANNELS;
    - the others: lateral 1x1 conv-norm-ReLU to CHANNELS;
    - top-down: level l += bilinear upsampling of level l+1 (deepest first);
    - each non-deepest level: 3x3 conv-norm-ReLU (FPN output conv);
    - all L levels upsampled to the first level's size and concatenated, then the
      :class:`HeadTail` (3x3 conv-norm-ReLU from L * CHANNELS to CHANNELS, the "fusion" conv).

    Output: the pixel feature ``(N, CHANNELS, h_0, w_0)`` at the first feature's stride.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features,
        out_stride: int,
        ppm: PyramidPooling,
        ppm_bottleneck: nn.Module,
        laterals: nn.ModuleList,
        fpn_convs: nn.ModuleList,
        tail: HeadTail,
        align_corners: bool = False,
    ):
        super().__init__(out_channels=tail.out_channels, out_stride=out_stride)
        self.in_features = list(in_features)
        self.ppm = ppm
        self.ppm_bottleneck = ppm_bottleneck
        self.laterals = laterals
        self.fpn_convs = fpn_convs
        self.tail = tail
        self.align_corners = align_corners

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        names = list(node.IN_FEATURES)
        strides = [input_shape[n].stride for n in names]
        if len(names) < 2 or strides != sorted(strides):
            raise ValueError(
                f"{prefix}.IN_FEATURES={names}: UPerHead needs >= 2 features in increasing stride order "
                f"(strides {strides}), e.g. ['res2', 'res3', 'res4', 'res5']"
            )
        ch, norm = node.CHANNELS, node.NORM
        ppm = PyramidPooling(input_shape[names[-1]].channels, ch, node.PPM.BINS, norm, cfg.MODEL.ALIGN_CORNERS)
        return {
            "in_features": names,
            "out_stride": strides[0],
            "ppm": ppm,
            "ppm_bottleneck": conv_norm_act(ppm.out_channels, ch, 3, norm),
            "laterals": nn.ModuleList([conv_norm_act(input_shape[n].channels, ch, 1, norm) for n in names[:-1]]),
            "fpn_convs": nn.ModuleList([conv_norm_act(ch, ch, 3, norm) for _ in names[:-1]]),
            "tail": HeadTail.from_node(node, len(names) * ch),
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        levels = [lateral(features[n]) for lateral, n in zip(self.laterals, self.in_features)]
        levels.append(self.ppm_bottleneck(self.ppm(features[self.in_features[-1]])))
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + resize(levels[i], levels[i - 1].shape[-2:], self.align_corners)
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels)] + [levels[-1]]
        size = outs[0].shape[-2:]
        return self.tail(torch.cat([resize(o, size, self.align_corners) for o in outs], dim=1))
