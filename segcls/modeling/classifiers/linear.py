"""The standard per-pixel classifier: dropout, then a 1x1 convolution with bias."""
from typing import Optional

import torch
from detectron2.config import configurable
from torch import nn

from ..outputs import MAIN, Prediction, SegOutputs
from ..registry import CLASSIFIER_REGISTRY


@CLASSIFIER_REGISTRY.register()
class LinearClassifier(nn.Module):
    """
    ``logits = conv1x1(dropout(x))``: (N, C, h, w) -> :class:`SegOutputs` with the main prediction
    (N, K, h, w) (scored with the owner's default loss spec).
    Weights ~ N(0, 0.01^2), bias 0 (mmsegmentation's ``conv_seg`` initialisation).
    """

    @configurable
    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    @classmethod
    def from_config(cls, cfg, in_channels, num_classes, dropout=None):
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "dropout": cfg.MODEL.CLASSIFIER.DROPOUT if dropout is None else dropout,
        }

    def forward(self, x: torch.Tensor, targets: Optional[torch.Tensor] = None) -> SegOutputs:
        return SegOutputs(predictions={MAIN: Prediction(self.conv(self.dropout(x)))})
