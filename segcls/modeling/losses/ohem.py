"""
Online hard example mining (OHEM) cross-entropy, in its two common forms. Both select pixels
without gradient, then take :class:`CrossEntropyLoss`'s class-weighted mean over the selection.
"""
import torch
from detectron2.config import configurable

from ..registry import PIXEL_LOSS_REGISTRY
from .cross_entropy import CrossEntropyLoss


@PIXEL_LOSS_REGISTRY.register()
class OhemTopKCrossEntropyLoss(CrossEntropyLoss):
    """
    The top-k-percent form of detectron2's DeepLab project (``DeepLabCE`` with
    ``top_k_percent_pixels``, from DeepLab's TF code): the cross-entropy averaged over the
    ``k = max(1, int(top_k_percent * n_valid))`` valid pixels with the largest cross-entropy.
    ``top_k_percent = 1`` is the plain cross-entropy.

    Difference from ``DeepLabCE``: ``n_valid`` counts non-ignored pixels only (``DeepLabCE`` counts
    ignored pixels, whose loss is 0, in both ``k`` and the mean); with class weights the mean is
    :class:`CrossEntropyLoss`'s weighted mean of the selected pixels (ranked by unweighted loss).

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "ohem_topk"

    @configurable
    def __init__(self, *, ignore_value: int = 255, class_weights=None, normalization: str = "valid", top_k_percent: float = 0.2):
        super().__init__(ignore_value=ignore_value, class_weights=class_weights, normalization=normalization)
        if not 0.0 < top_k_percent <= 1.0:
            raise ValueError(f"MODEL.LOSS.TOP_K_PERCENT={top_k_percent}: must be in (0, 1]")
        self.top_k_percent = top_k_percent

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return {**super().from_config(cfg, ignore_value), "top_k_percent": cfg.MODEL.LOSS.TOP_K_PERCENT}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.pixel_losses(logits, targets)
        valid = targets != self.ignore_value
        with torch.no_grad():
            valid_losses = losses[valid]
            k = max(1, int(self.top_k_percent * valid_losses.numel())) if valid_losses.numel() else 0
            selected = torch.zeros_like(valid_losses, dtype=torch.bool)
            selected[valid_losses.topk(k).indices] = True
            keep = torch.zeros_like(valid)
            keep[valid] = selected
        return self.reduce(losses, targets, keep)


@PIXEL_LOSS_REGISTRY.register()
class OhemCrossEntropyLoss(CrossEntropyLoss):
    """
    The threshold / min-kept form used by OCNet/OCR (``OhemCrossEntropy``), mmsegmentation's
    ``OHEMPixelSampler`` and CSFRN (Table 6): keep the valid pixels whose predicted probability of
    their ground-truth class is below ``thresh``; if fewer than ``min_kept * N`` (N = batch size,
    mmsegmentation's per-image count) are below it, keep the ``min_kept * N`` lowest-probability
    valid pixels instead (all of them if there are fewer). The loss is the cross-entropy averaged
    over the kept pixels (class-weighted as :class:`CrossEntropyLoss`).

    Equal to the released code (which keeps ``p < max(thresh, p_sorted[min_kept])``) except for
    ties at that boundary and when ``min_kept`` exceeds the valid-pixel count (the released code
    then drops the most confident pixel).

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "ohem"

    @configurable
    def __init__(self, *, ignore_value: int = 255, class_weights=None, normalization: str = "valid", thresh: float = 0.7, min_kept: int = 100000):
        super().__init__(ignore_value=ignore_value, class_weights=class_weights, normalization=normalization)
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"MODEL.LOSS.OHEM_THRESH={thresh}: must be in (0, 1]")
        if min_kept < 0:
            raise ValueError(f"MODEL.LOSS.OHEM_MIN_KEPT={min_kept}: must be >= 0")
        self.thresh = thresh
        self.min_kept = min_kept

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return {
            **super().from_config(cfg, ignore_value),
            "thresh": cfg.MODEL.LOSS.OHEM_THRESH,
            "min_kept": cfg.MODEL.LOSS.OHEM_MIN_KEPT,
        }

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.pixel_losses(logits, targets)
        valid = targets != self.ignore_value
        with torch.no_grad():
            # Probability of the ground-truth class: p_y = exp(-CE).
            prob = torch.exp(-losses[valid].float())
            num_keep = max(int((prob < self.thresh).sum()), min(self.min_kept * targets.shape[0], prob.numel()))
            selected = torch.zeros_like(prob, dtype=torch.bool)
            selected[prob.argsort()[:num_keep]] = True
            keep = torch.zeros_like(valid)
            keep[valid] = selected
        return self.reduce(losses, targets, keep)
