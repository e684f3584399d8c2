"""Pixel-wise cross-entropy with an ignore label and optional class weights."""
from typing import Optional

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from ..registry import PIXEL_LOSS_REGISTRY


NORMALIZATIONS = ("valid", "all")


@PIXEL_LOSS_REGISTRY.register()
class CrossEntropyLoss(nn.Module):
    """
    ``sum_i w_{y_i} * -log softmax(logits_i)[y_i] / Z`` over pixels ``i`` whose label is not
    ``ignore_value`` (``w = 1`` without class weights), with the normalisation
    (``MODEL.LOSS.CE_NORMALIZATION``):

    - ``"valid"`` (default): ``Z = sum_i w_{y_i}`` over the valid pixels, PyTorch's
      ``F.cross_entropy`` mean, except that a batch with no valid pixel gives 0 (with a gradient
      path), not NaN;
    - ``"all"``: ``Z`` = the number of label pixels N*H*W, ignored (and padded) ones included:
      mmsegmentation's ``CrossEntropyLoss`` with ``avg_non_ignore=False`` (its default), i.e. the
      mean of the per-pixel losses with 0 at ignored pixels.

    logits: (N, K, H, W) float; targets: (N, H, W) long. Returns a scalar.

    Subclasses (OHEM, focal) reuse the two steps: :meth:`pixel_losses` (the per-pixel loss) and
    :meth:`reduce` (the class-weighted mean over the valid, optionally selected, pixels).
    """

    name = "ce"

    @configurable
    def __init__(self, *, ignore_value: int = 255, class_weights=None, normalization: str = "valid"):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"MODEL.LOSS.CE_NORMALIZATION={normalization!r}: expected one of {list(NORMALIZATIONS)}")
        self.ignore_value = ignore_value
        self.normalization = normalization
        if class_weights:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        else:
            self.class_weights = None

    @classmethod
    def from_config(cls, cfg, ignore_value):
        weights = list(cfg.MODEL.LOSS.CLASS_WEIGHTS)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if weights and len(weights) != num_classes:
            raise ValueError(
                f"MODEL.LOSS.CLASS_WEIGHTS has {len(weights)} values, expected one per class "
                f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes})"
            )
        return {"ignore_value": ignore_value, "class_weights": weights, "normalization": cfg.MODEL.LOSS.CE_NORMALIZATION}

    def pixel_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Unweighted per-pixel loss (N, H, W), 0 at ignored pixels: here ``-log p_{y_i}``."""
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_value, reduction="none")

    def reduce(self, losses: torch.Tensor, targets: torch.Tensor, keep: Optional[torch.Tensor] = None):
        """``sum_i w_{y_i} l_i / Z`` over valid pixels (and ``keep``, a (N, H, W) bool mask, if
        given), ``Z`` by the normalisation (``"valid"``: ``sum_i w_{y_i}`` over those pixels, 0
        with a gradient path when none is left; ``"all"``: the number of label pixels)."""
        valid = targets != self.ignore_value
        if keep is not None:
            valid = valid & keep
        weights = valid.to(losses.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights.to(losses.dtype)[targets.masked_fill(~valid, 0)]
        if self.normalization == "all":
            return (losses * weights).sum() / max(targets.numel(), 1)
        return (losses * weights).sum() / weights.sum().clamp(min=1e-12)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.pixel_losses(logits, targets), targets)
