"""
ECENet's loss (Sec. 3.5, Eqs. 11-12): ``L = L_cls + L_mask + lambda_div L_div`` with
``L_mask = lambda_mask L_mask' + lambda_dice L_dice``. Class embedding ``n`` is matched to the
ground-truth mask of class ``n`` (``labels == n``; no Hungarian matching); class ``n`` is
*present* in an image when any of its pixels has label ``n``.

Terms (weights: the config defaults, the authors' released head, ``MODEL.ECENET.LOSS.*``):

- ``L_cls`` (``CLASS_WEIGHT``; released 0 = not computed: the released head returns no class
  logits; paper-literal 1, SegViT-style, needs the ``"no_object"`` class head): cross-entropy of
  the (B, N, N+1) class logits against ``n`` for present classes and the no-object class ``N``
  for absent ones, with class weights 1 and 0.1 for no-object, weighted mean over all B*N
  embeddings (DETR's ``empty_weight``);
- the mask term on summed mask logits, bilinearly resized to the label size, for present classes
  only: ``MASK_LOSS "bce"`` (sigmoid binary cross-entropy, mean over pixels per mask; released
  weight 5) or ``"focal"`` (DETR's ``sigmoid_focal_loss``, alpha 0.25, gamma 2; paper-literal
  weight 20), and DETR's ``dice_loss`` (+1 smoothing; released weight 2, paper-literal 1), each
  summed over the present masks of the batch and divided by their number (at least 1). Ignored
  (and padded) pixels count as negatives of every mask. Which sum (``MASK_SUM``): released
  ``"without_finest"``, ``M_4 + S_3 + S_2`` (the finest stage's ``S_1`` excluded, though it is in
  the prediction); paper-literal ``"all"``, the whole sum ``M_sum``;
- deep supervision (``DEEP_SUPERVISION``, released off): the same terms for every earlier class
  embedding and the cumulative mask sum at that point, named ``loss_<term>_<k>``;
- ``lambda_div`` (0.2, Table 5) times the sum over stages of the batch-mean diversity loss (Eq. 3),
  ``loss_div``; not computed when ``lambda_div`` is 0.

Mixed precision: every term is computed in float32 with autocast off (``forward`` is wrapped by
:func:`segcls.modeling.precision.float32`; the list inputs cast with
``.float()``; float64 inputs stay float64), so the class-to-mask assignment, the sigmoid / softmax
losses and ``L_div`` do not run in half precision.

The meta-architecture adds the pixel cross-entropy on the fused prediction (it is the only loss
that reaches the aggregation's 1x1 classifier).
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from ..precision import float32
from .fr import diversity_loss

# MASK_LOSS -> the loss name of the mask term ("loss_focal" as before the switch, or "loss_mask").
MASK_LOSSES = {"bce": "mask", "focal": "focal"}
MASK_SUMS = ("without_finest", "all")


def present_classes(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, N) bool, class n has at least one pixel (ignored labels are >= N)."""
    flat = targets.flatten(1)
    index = torch.where(flat < num_classes, flat, torch.full_like(flat, num_classes))
    present = torch.zeros(flat.shape[0], num_classes + 1, dtype=torch.bool, device=flat.device)
    return present.scatter_(1, index, True)[:, :num_classes]


def sigmoid_focal_loss(logits, targets, num_masks, alpha: float = 0.25, gamma: float = 2.0):
    """DETR's focal loss: (M, P) logits and {0, 1} targets -> sum_m mean_p focal / num_masks."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_masks


def sigmoid_bce_loss(logits, targets, num_masks):
    """Mask2Former's mask loss: (M, P) logits and {0, 1} targets -> sum_m mean_p BCE / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits, targets, num_masks):
    """DETR's dice loss: (M, P) logits and {0, 1} targets ->
    sum_m [1 - (2 sum p t + 1) / (sum p + sum t + 1)] / num_masks."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def _float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


class ECENetCriterion(nn.Module):
    """
    forward(outputs, targets (B, H, W) long) -> dict of scalar losses (see the module docstring).

    ``outputs``: ``"pred_logits"``: list of (B, N, N+1) class logits, ``"pred_masks"``: list of the
    matching (B, N, h, w) cumulative mask sums (the last pair is the final prediction, the others
    deep supervision), ``"diverse"``: list of (B, C'_i, H_i, W_i) diverse-branch features. The
    keyword defaults are the paper-literal reading, the config defaults the released one.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        ignore_value: int = 255,
        class_weight: float = 1.0,
        no_object_weight: float = 0.1,
        mask_loss: str = "focal",
        mask_weight: float = 20.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        dice_weight: float = 1.0,
        mask_sum: str = "all",
        div_weight: float = 0.2,
        deep_supervision: bool = True,
        align_corners: bool = False,
    ):
        super().__init__()
        if 0 <= ignore_value < num_classes:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={ignore_value} is a class index (NUM_CLASSES={num_classes})"
            )
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"MODEL.ECENET.LOSS.MASK_LOSS={mask_loss!r}: expected one of {list(MASK_LOSSES)}")
        if mask_sum not in MASK_SUMS:
            raise ValueError(f"MODEL.ECENET.LOSS.MASK_SUM={mask_sum!r}: expected one of {list(MASK_SUMS)}")
        self.num_classes = num_classes
        self.weights = {"cls": class_weight, "mask": mask_weight, "dice": dice_weight}
        self.mask_loss = mask_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.exclude_finest = mask_sum == "without_finest"
        self.div_weight = div_weight
        self.deep_supervision = deep_supervision
        self.align_corners = align_corners
        self.no_object_weight = no_object_weight

    @classmethod
    def from_config(cls, cfg):
        loss = cfg.MODEL.ECENET.LOSS
        if loss.CLASS_WEIGHT > 0 and cfg.MODEL.ECENET.CLASS_HEAD != "no_object":
            raise ValueError(
                f"MODEL.ECENET.LOSS.CLASS_WEIGHT={loss.CLASS_WEIGHT} needs MODEL.ECENET.CLASS_HEAD 'no_object' "
                f"(the class cross-entropy has a no-object class), got {cfg.MODEL.ECENET.CLASS_HEAD!r}; set it to 0"
            )
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "class_weight": loss.CLASS_WEIGHT,
            "no_object_weight": loss.NO_OBJECT_WEIGHT,
            "mask_loss": loss.MASK_LOSS,
            "mask_weight": loss.MASK_WEIGHT,
            "focal_alpha": loss.FOCAL_ALPHA,
            "focal_gamma": loss.FOCAL_GAMMA,
            "dice_weight": loss.DICE_WEIGHT,
            "mask_sum": loss.MASK_SUM,
            "div_weight": loss.DIV_WEIGHT,
            "deep_supervision": loss.DEEP_SUPERVISION,
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
        }

    def class_loss(self, cls_logits, present) -> torch.Tensor:
        """Unweighted ``L_cls`` of (B, N, N+1) logits (see the module docstring)."""
        n = self.num_classes
        classes = torch.arange(n, device=present.device).expand_as(present)
        target_classes = torch.where(present, classes, torch.full_like(classes, n))
        class_weights = torch.ones(n + 1, dtype=cls_logits.dtype, device=cls_logits.device)
        class_weights[n] = self.no_object_weight
        return F.cross_entropy(cls_logits.transpose(1, 2), target_classes, weight=class_weights)

    def mask_losses(self, mask_logits, targets, present) -> Dict[str, torch.Tensor]:
        """Unweighted ``{"mask", "dice"}`` of (B, N, h, w) mask logits."""
        batch_idx, class_idx = present.nonzero(as_tuple=True)
        num_masks = max(len(batch_idx), 1)
        src = F.interpolate(
            mask_logits[batch_idx, class_idx][:, None],
            size=targets.shape[-2:],
            mode="bilinear",
            align_corners=self.align_corners,
        ).flatten(1)
        tgt = (targets[batch_idx] == class_idx[:, None, None]).flatten(1).to(src.dtype)
        if self.mask_loss == "focal":
            mask = sigmoid_focal_loss(src, tgt, num_masks, self.focal_alpha, self.focal_gamma)
        else:
            mask = sigmoid_bce_loss(src, tgt, num_masks)
        return {"mask": mask, "dice": dice_loss(src, tgt, num_masks)}

    @float32
    def forward(self, outputs: Dict[str, List[torch.Tensor]], targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        present = present_classes(targets, self.num_classes)
        pairs = list(zip(outputs["pred_logits"], outputs["pred_masks"]))
        if self.exclude_finest:
            pairs = pairs[:-1]
        if not self.deep_supervision:
            pairs = pairs[-1:]
        losses = {}
        for k, (cls_logits, mask_logits) in enumerate(pairs):
            suffix = "" if k == len(pairs) - 1 else f"_{k}"
            terms = self.mask_losses(_float(mask_logits), targets, present)
            if self.weights["cls"] > 0:
                terms["cls"] = self.class_loss(_float(cls_logits), present)
            for name, value in terms.items():
                label = MASK_LOSSES[self.mask_loss] if name == "mask" else name
                losses[f"loss_{label}{suffix}"] = self.weights[name] * value
        if self.div_weight > 0:
            losses["loss_div"] = self.div_weight * sum(diversity_loss(d) for d in outputs["diverse"])
        return losses

