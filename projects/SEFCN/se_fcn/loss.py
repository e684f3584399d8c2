import torch
from detectron2.config import configurable
from torch.nn import functional as F

from segcls.modeling import PIXEL_LOSS_REGISTRY
from segcls.modeling.losses import CrossEntropyLoss


@PIXEL_LOSS_REGISTRY.register()
class LabelSmoothingCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy against ``(1 - eps) * onehot(y) + eps / K``, averaged like segcls's
    ``CrossEntropyLoss`` (ignore label, class weights, all-ignored batch -> 0)."""

    name = "ce_ls"

    @configurable
    def __init__(self, *, label_smoothing: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return dict(super().from_config(cfg, ignore_value), label_smoothing=cfg.MODEL.SE_FCN.LABEL_SMOOTHING)

    def pixel_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, targets, ignore_index=self.ignore_value, reduction="none", label_smoothing=self.label_smoothing
        )
