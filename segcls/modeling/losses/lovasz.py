"""Lovasz-softmax and Lovasz hinge losses (Berman, Triki, Blaschko, "The Lovasz-Softmax loss",
CVPR 2018; the hinge of Yu and Blaschko 2015), sharing one Jaccard-gradient helper
(:func:`lovasz_grad`)."""
from typing import Optional

import torch
from detectron2.config import configurable
from torch import nn

from ..precision import float32
from ..registry import PIXEL_LOSS_REGISTRY


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """
    Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order
    (Berman et al. Sec. 3.1, Algorithm 1): ``g_i = J(S_i) - J(S_{i-1})`` with
    ``J(S) = |S| / |F u S|``, ``S_i`` the first ``i`` sorted pixels and ``F`` the foreground.
    fg_sorted: (..., P) 0/1 foreground indicator in sorted order (each row sorted on its own; the
    leading dimensions are independent problems) -> (..., P). With no foreground g = (1, 0, ..., 0).
    """
    total = fg_sorted.sum(-1, keepdim=True)
    intersection = total - fg_sorted.cumsum(-1)  # |F \ S_i|
    union = total + (1 - fg_sorted).cumsum(-1)  # |F u S_i|
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


@float32
def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """
    Binary Lovasz hinge of one set of pixels (Berman et al.'s released ``lovasz_hinge_flat``):
    ``signs = 2y - 1``, ``errors = 1 - logits * signs`` sorted in decreasing order,
    ``loss = relu(errors_sorted) . lovasz_grad(y_sorted)``.
    logits: (..., P) real scores (positive = foreground); labels: (..., P) in {0, 1}. The leading
    dimensions are independent sets -> (...) losses. P = 0 gives 0 (kept in the graph). All-negative
    labels give ``relu(max error)``. The sort and the Jaccard gradient run in float32 under
    autocast (:func:`~segcls.modeling.precision.float32`).
    """
    if logits.shape[-1] == 0:
        return logits.sum(-1) * 0.0
    labels = labels.to(logits.dtype)
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, order = errors.sort(dim=-1, descending=True)
    grad = lovasz_grad(labels.gather(-1, order))
    return (errors_sorted.relu() * grad).sum(-1)


def lovasz_hinge(
    logits: torch.Tensor, labels: torch.Tensor, per_image: bool = True, ignore: Optional[int] = None
) -> torch.Tensor:
    """
    Binary Lovasz hinge (Berman et al.'s released ``lovasz_hinge``). logits: (B, H, W) real
    scores; labels: (B, H, W) in {0, 1} (and ``ignore``, whose pixels are dropped).
    ``per_image=True``: the mean over the B images of :func:`lovasz_hinge_flat` of each image (an
    image whose pixels are all ignored contributes 0 and still counts in the mean);
    ``per_image=False``: one flat set of all the batch's valid pixels. Returns a scalar.
    """
    if per_image:
        return torch.stack([lovasz_hinge(lg[None], lb[None], False, ignore) for lg, lb in zip(logits, labels)]).mean()
    logits, labels = logits.reshape(-1), labels.reshape(-1)
    if ignore is not None:
        valid = labels != ignore
        logits, labels = logits[valid], labels[valid]
    return lovasz_hinge_flat(logits, labels)


@PIXEL_LOSS_REGISTRY.register()
class LovaszHingeLoss(nn.Module):
    """
    Binary Lovasz hinge as a pixel loss (:func:`lovasz_hinge`) for binary tasks: ``logits``
    (N, 1, H, W) foreground scores, or (N, 2, H, W) whose score is ``logits[:, 1] - logits[:, 0]``;
    targets (N, H, W) in {0, 1, ignore_value}. ``MODEL.LOSS.LOVASZ_PER_IMAGE`` as for
    :class:`LovaszSoftmaxLoss` (False pools the batch).
    """

    name = "lovasz_hinge"

    @configurable
    def __init__(self, *, ignore_value: int = 255, per_image: bool = False):
        super().__init__()
        self.ignore_value = ignore_value
        self.per_image = per_image

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return {"ignore_value": ignore_value, "per_image": cfg.MODEL.LOSS.LOVASZ_PER_IMAGE}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            scores = logits[:, 0]
        elif logits.shape[1] == 2:
            scores = logits[:, 1] - logits[:, 0]
        else:
            raise ValueError(f"LovaszHingeLoss is binary: expected 1 or 2 logit channels, got {logits.shape[1]}")
        return lovasz_hinge(scores, targets, per_image=self.per_image, ignore=self.ignore_value)


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

    @float32
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
