"""
OCR decode head (Yuan, Chen, Wang, "Object-Contextual Representations for Semantic
Segmentation", ECCV 2020; the paper is not in /work/shared/papers, so its formulas are written out
below with the paper's section and symbols).
"""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...utils.config import get_config_node
from ..classifiers import LinearClassifier
from ..layers import conv_norm_act, resize
from ..losses import PixelLossSet
from ..outputs import Prediction, SegOutputs
from ..registry import DECODE_HEAD_REGISTRY
from .attention import attend
from .base import DecodeHead, input_feature
from .config import head_keys
from .tail import HeadTail


@head_keys("OCR", used_by=("OCRHead",))
def declare_ocr_keys(ocr):
    """``OCR.*``. The coarse (soft object region) prediction is made from IN_FEATURES[0] (res4 for
    ResNets; the same feature as the OCR block when IN_FEATURES has one entry, as HRNet-OCR) by
    conv3x3(COARSE_CHANNELS)-norm-ReLU -> dropout (MODEL.CLASSIFIER.DROPOUT) -> 1x1 conv. Its
    pixel losses are computed with the head's LOSSES times COARSE_LOSS_WEIGHT (0.4 in the OCR
    paper), keys "loss_ocr_coarse_<loss>". KEY_CHANNELS: channels of the pixel/object transforms
    phi, psi, delta (256 in the paper)."""
    ocr.KEY_CHANNELS = 256
    ocr.COARSE_CHANNELS = 512
    ocr.COARSE_LOSS_WEIGHT = 0.4


def object_region_representations(features: torch.Tensor, coarse_logits: torch.Tensor) -> torch.Tensor:
    """
    OCR, "Object region representations": ``f_k = sum_i m~_ki x_i`` with ``m~_k`` the
    spatial softmax of the coarse logits of class k (the soft object region).
    features (N, C, h, w), coarse_logits (N, K, h, w) -> (N, C, K).
    """
    regions = coarse_logits.flatten(2).softmax(dim=2)
    return torch.einsum("bkn,bcn->bck", regions, features.flatten(2))


class ObjectContext(nn.Module):
    """
    OCR, "Object contextual representations": the pixel-region relation
    ``w_ik = softmax_k(kappa(x_i, f_k))``, ``kappa(x, f) = phi(x)^T psi(f) / sqrt(d)``, and
    ``y_i = rho(sum_k w_ik delta(f_k))``; ``phi``, ``psi``: two 1x1 conv-norm-ReLU (C -> d -> d),
    ``delta``: one (C -> d), ``rho``: one (d -> C), d = ``key_channels``. The 1/sqrt(d) scaling is
    the released code's (``_ObjectAttentionBlock``).
    x (N, C, h, w), regions f (N, C, K) -> y (N, C, h, w).
    """

    def __init__(self, channels, key_channels, norm="BN"):
        super().__init__()
        self.phi = nn.Sequential(
            conv_norm_act(channels, key_channels, 1, norm), conv_norm_act(key_channels, key_channels, 1, norm)
        )
        self.psi = nn.Sequential(
            conv_norm_act(channels, key_channels, 1, norm), conv_norm_act(key_channels, key_channels, 1, norm)
        )
        self.delta = conv_norm_act(channels, key_channels, 1, norm)
        self.rho = conv_norm_act(key_channels, channels, 1, norm)
        self.scale = key_channels**-0.5

    def forward(self, x, regions):
        n, _, h, w = x.shape
        regions = regions.unsqueeze(-1)  # (N, C, K, 1): the K regions as a 1-pixel-wide image
        context = attend(
            self.phi(x).flatten(2), self.psi(regions).flatten(2), self.delta(regions).flatten(2), scale=self.scale
        )
        return self.rho(context.view(n, -1, h, w))


@DECODE_HEAD_REGISTRY.register()
class OCRHead(DecodeHead):
    """
    OCR head, as the released ResNet OCRNet:

    - coarse prediction (soft object regions) from ``IN_FEATURES[0]`` (res4; the same feature as
      below when IN_FEATURES has one entry, as HRNet-OCR): 3x3 conv-norm-ReLU (->
      ``OCR.COARSE_CHANNELS``) -> dropout -> 1x1 conv -> K logits, resized to the OCR feature;
    - ``IN_FEATURES[-1]`` (res5) -> 3x3 conv-norm-ReLU (C_in -> C) = x -> object region
      representations f (:func:`object_region_representations`) -> :class:`ObjectContext` y;
    - augmented representation ``z = g([y, x])`` (OCR, "Augmented representations"), g the :class:`HeadTail`
      (2C -> C). The paper's g is a 1x1 conv: set ``LAST_CONV_KERNEL: 1`` for the original (the
      Pascal Context yaml does), which makes CAR's change "A" a no-op for OCR.

    Output: pixel feature z (N, C, h, w) (+ ``"reg_feature"`` with the projection). In training,
    the coarse prediction ``"ocr_coarse"`` carries the head's pixel losses times
    ``OCR.COARSE_LOSS_WEIGHT`` (0.4, the OCR paper's weight of the coarse-prediction loss) as its
    loss spec: ``"loss_ocr_coarse_<loss>"``.
    """

    @configurable
    def __init__(
        self,
        *,
        coarse_feature: str,
        coarse_in_channels: int,
        in_feature: str,
        in_channels: int,
        in_stride: int,
        channels: int,
        num_classes: int,
        tail: HeadTail,
        coarse_loss: PixelLossSet,
        key_channels: int = 256,
        coarse_channels: int = 512,
        norm: str = "BN",
        dropout: float = 0.1,
        align_corners: bool = False,
    ):
        super().__init__(in_feature=in_feature, out_channels=channels, out_stride=in_stride)
        self.coarse_feature = coarse_feature
        self.align_corners = align_corners
        self.coarse_conv = conv_norm_act(coarse_in_channels, coarse_channels, 3, norm)
        self.coarse_classifier = LinearClassifier(in_channels=coarse_channels, num_classes=num_classes, dropout=dropout)
        self.conv_in = conv_norm_act(in_channels, channels, 3, norm)
        self.object_context = ObjectContext(channels, key_channels, norm)
        self.tail = tail
        self.coarse_loss = coarse_loss

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        coarse = input_feature(node, input_shape, 0)
        return {
            "coarse_feature": coarse["in_feature"],
            "coarse_in_channels": coarse["in_channels"],
            **input_feature(node, input_shape),
            "channels": node.CHANNELS,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "tail": HeadTail.from_node(node, 2 * node.CHANNELS),
            "coarse_loss": PixelLossSet.from_node(cfg, node, scale=node.OCR.COARSE_LOSS_WEIGHT),
            "key_channels": node.OCR.KEY_CHANNELS,
            "coarse_channels": node.OCR.COARSE_CHANNELS,
            "norm": node.NORM,
            "dropout": cfg.MODEL.CLASSIFIER.DROPOUT,
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        coarse = self.coarse_classifier(self.coarse_conv(features[self.coarse_feature])).logits
        x = self.conv_in(features[self.in_feature])
        regions_logits = resize(coarse, x.shape[-2:], self.align_corners)
        y = self.object_context(x, object_region_representations(x, regions_logits))
        out = self.tail(torch.cat([y, x], dim=1))
        if self.training and targets is not None:
            out.predictions["ocr_coarse"] = Prediction(coarse, self.coarse_loss)
        return out
