"""Softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017)."""
import torch
from detectron2.config import configurable
from torch.nn import functional as F

from ..registry import PIXEL_LOSS_REGISTRY
from .cross_entropy import CrossEntropyLoss


@PIXEL_LOSS_REGISTRY.register()
class FocalLoss(CrossEntropyLoss):
    """
    Multi-class (softmax) focal loss, focal-loss paper Eq. 4 with ``p_t`` the softmax probability
    of the ground-truth class: ``FL_i = -(1 - p_{y_i})^gamma log p_{y_i}``, reduced like
    :class:`CrossEntropyLoss` (mean over valid pixels; with ``MODEL.LOSS.CLASS_WEIGHTS`` the
    ``w_{y_i}``-weighted mean, the class weights playing the role of the paper's alpha_t, Eq. 5).
    ``gamma = 0`` is the cross-entropy.

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "focal"

    @configurable
    def __init__(self, *, ignore_value: int = 255, class_weights=None, normalization: str = "valid", gamma: float = 2.0):
        super().__init__(ignore_value=ignore_value, class_weights=class_weights, normalization=normalization)
        if gamma < 0:
            raise ValueError(f"MODEL.LOSS.FOCAL_GAMMA={gamma}: must be >= 0")
        self.gamma = gamma

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return {**super().from_config(cfg, ignore_value), "gamma": cfg.MODEL.LOSS.FOCAL_GAMMA}

    def pixel_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != self.ignore_value
        log_p = F.log_softmax(logits, dim=1).gather(1, targets.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
        losses = -((1 - log_p.exp()) ** self.gamma) * log_p
        return losses.masked_fill(~valid, 0.0)
