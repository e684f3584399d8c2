"""Soft multi-class dice loss: per image and class (V-Net / mmsegmentation 0.x), or mmsegmentation 1.x's."""
import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from ..registry import PIXEL_LOSS_REGISTRY


@PIXEL_LOSS_REGISTRY.register()
class DiceLoss(nn.Module):
    """
    Soft dice loss (V-Net, Milletari et al. 2016, Eq. 1), in one of two variants
    (``variant``, ``MODEL.LOSS.DICE_VARIANT``), ``p`` = ``activation(logits)`` (``softmax`` over
    classes or elementwise ``sigmoid``, ``MODEL.LOSS.DICE_ACTIVATION``), ``g`` the one-hot labels:

    - ``"per_class"`` (default; mmsegmentation 0.x's ``DiceLoss`` formula): for image ``n`` and
      class ``k``, over the image's valid pixels ``i``,

          D_nk = 1 - (2 sum_i p_ik g_ik + s) / (sum_i p_ik^e + sum_i g_ik^e + s)

      with ``s = smooth`` and ``e = exponent`` (1 and 2); the loss is the mean of ``D_nk`` over
      all K classes and over the images with at least one valid pixel. Ignored pixels take no
      part (mmsegmentation 0.x equals this only without ignored pixels).
    - ``"mmseg"`` (mmsegmentation 1.2.2's ``DiceLoss``, whose default activation is sigmoid: set
      ``DICE_ACTIVATION "sigmoid"`` for it): classes and pixels pooled per image,

          D_n = 1 - 2 sum_ik p_ik g_ik / ((sum_ik p_ik^2 + eps) + (sum_ik g_ik^2 + eps))

      with ``eps`` (``MODEL.LOSS.DICE_EPS``, 1e-3), the mean over all N images; an ignored pixel
      has ``g = 0`` but keeps its ``p`` in the denominator, as there.

    Class weights are not used.

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "dice"

    @configurable
    def __init__(
        self,
        *,
        ignore_value: int = 255,
        smooth: float = 1.0,
        exponent: float = 2.0,
        variant: str = "per_class",
        activation: str = "softmax",
        eps: float = 1e-3,
    ):
        super().__init__()
        if variant not in ("per_class", "mmseg"):
            raise ValueError(f"MODEL.LOSS.DICE_VARIANT={variant!r}: expected 'per_class' or 'mmseg'")
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"MODEL.LOSS.DICE_ACTIVATION={activation!r}: expected 'softmax' or 'sigmoid'")
        if smooth < 0:
            raise ValueError(f"MODEL.LOSS.DICE_SMOOTH={smooth}: must be >= 0")
        if exponent <= 0:
            raise ValueError(f"MODEL.LOSS.DICE_EXPONENT={exponent}: must be > 0")
        self.ignore_value = ignore_value
        self.smooth = smooth
        self.exponent = exponent
        self.variant = variant
        self.activation = activation
        self.eps = eps

    @classmethod
    def from_config(cls, cfg, ignore_value):
        loss = cfg.MODEL.LOSS
        return {
            "ignore_value": ignore_value,
            "smooth": loss.DICE_SMOOTH,
            "exponent": loss.DICE_EXPONENT,
            "variant": loss.DICE_VARIANT,
            "activation": loss.DICE_ACTIVATION,
            "eps": loss.DICE_EPS,
        }

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != self.ignore_value
        mask = valid.unsqueeze(1).to(logits.dtype)
        probs = logits.softmax(dim=1) if self.activation == "softmax" else logits.sigmoid()
        if self.variant == "mmseg":
            onehot = F.one_hot(targets.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2) * mask
            a = (probs * onehot).flatten(1).sum(1)
            b, c = (probs * probs).flatten(1).sum(1) + self.eps, (onehot * onehot).flatten(1).sum(1) + self.eps
            return (1 - 2 * a / (b + c)).mean()
        probs = probs * mask
        onehot = F.one_hot(targets.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype) * mask
        intersection = (probs * onehot).sum(dim=(2, 3))
        denominator = (probs**self.exponent).sum(dim=(2, 3)) + (onehot**self.exponent).sum(dim=(2, 3))
        dice = 1 - (2 * intersection + self.smooth) / (denominator + self.smooth)  # (N, K)
        images = valid.flatten(1).any(dim=1)
        if not images.any():
            return logits.sum() * 0.0
        return dice[images].mean()
