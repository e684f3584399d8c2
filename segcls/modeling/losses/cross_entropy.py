"""Pixel-wise cross-entropy with an ignore label and optional class weights."""
import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from ..registry import PIXEL_LOSS_REGISTRY


@PIXEL_LOSS_REGISTRY.register()
class CrossEntropyLoss(nn.Module):
    """
    ``sum_i w_{y_i} * -log softmax(logits_i)[y_i] / sum_i w_{y_i}`` over pixels ``i`` whose label is
    not ``ignore_value`` (``w = 1`` without class weights): PyTorch's ``F.cross_entropy`` mean,
    except that a batch with no valid pixel gives 0 (with a gradient path), not NaN.

    logits: (N, K, H, W) float; targets: (N, H, W) long. Returns a scalar.
    """

    name = "ce"

    @configurable
    def __init__(self, *, ignore_value: int = 255, class_weights=None):
        super().__init__()
        self.ignore_value = ignore_value
        if class_weights:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        else:
            self.class_weights = None

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return {"ignore_value": ignore_value, "class_weights": list(cfg.MODEL.LOSS.CLASS_WEIGHTS)}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        total = F.cross_entropy(logits, targets, weight=weight, ignore_index=self.ignore_value, reduction="sum")
        valid = targets != self.ignore_value
        if weight is None:
            denom = valid.sum()
        else:
            denom = weight[targets[valid]].sum()
        return total / denom.clamp(min=1e-12).to(logits.dtype)
