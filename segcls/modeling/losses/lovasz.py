"""Lovasz-softmax loss (Berman, Triki, Blaschko, "The Lovasz-Softmax loss", CVPR 2018)."""
import torch
from detectron2.config import configurable
from torch import nn

from ..registry import PIXEL_LOSS_REGISTRY


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """
    Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order
    (Berman et al. Sec. 3.1, Algorithm 1): ``g_i = J(S_i) - J(S_{i-1})`` with
    ``J(S) = |S| / |F u S|``, ``S_i`` the first ``i`` sorted pixels and ``F`` the foreground.
    fg_sorted: (P,) 0/1 foreground indicator in sorted order -> (P,).
    """
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)  # |F \ S_i|
    union = total + (1 - fg_sorted).cumsum(0)  # |F u S_i|
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


@PIXEL_LOSS_REGISTRY.register()
class LovaszSoftmaxLoss(nn.Module):
    """
    Lovasz-softmax (Berman et al. Sec. 3): for each class c, the pixel errors
    ``m_i(c) = |[y_i = c] - p_i(c)|`` (``p = softmax(logits)``, valid pixels only) are sorted in
    decreasing order and ``loss_c = sum_i m_(i)(c) g_i(c)`` (:func:`lovasz_grad`) is the Lovasz
    extension of the Jaccard loss of class c; the loss is the mean of ``loss_c`` over the classes
    present in the labels (``classes="present"``, the paper's default) or over all K classes
    (``"all"``). ``per_image=False`` (default, as the reference code) pools the pixels of the whole
    batch; ``True`` computes the loss per image and averages over images that have a valid pixel.

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "lovasz"
    CLASSES = ("present", "all")

    @configurable
    def __init__(self, *, ignore_value: int = 255, classes: str = "present", per_image: bool = False):
        super().__init__()
        if classes not in self.CLASSES:
            raise ValueError(f"MODEL.LOSS.LOVASZ_CLASSES={classes!r}: expected one of {self.CLASSES}")
        self.ignore_value = ignore_value
        self.classes = classes
        self.per_image = per_image

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return {
            "ignore_value": ignore_value,
            "classes": cfg.MODEL.LOSS.LOVASZ_CLASSES,
            "per_image": cfg.MODEL.LOSS.LOVASZ_PER_IMAGE,
        }

    def flat_loss(self, probs: torch.Tensor, labels: torch.Tensor):
        """probs (P, K), labels (P,) of valid pixels -> scalar, or None if no class counts."""
        losses = []
        for c in range(probs.shape[1]):
            fg = (labels == c).to(probs.dtype)
            if self.classes == "present" and not fg.any():
                continue
            errors, order = (fg - probs[:, c]).abs().sort(descending=True)
            losses.append(torch.dot(errors, lovasz_grad(fg[order])))
        return torch.stack(losses).mean() if losses else None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=1).permute(0, 2, 3, 1)  # (N, H, W, K)
        valid = targets != self.ignore_value
        groups = zip(probs, targets, valid) if self.per_image else [(probs, targets, valid)]
        losses = [self.flat_loss(p[v], t[v]) for p, t, v in groups if v.any()]
        losses = [loss for loss in losses if loss is not None]
        if not losses:
            return logits.sum() * 0.0
        return torch.stack(losses).mean()
