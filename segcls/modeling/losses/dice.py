"""Soft multi-class dice loss on softmax probabilities."""
import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from ..registry import PIXEL_LOSS_REGISTRY


@PIXEL_LOSS_REGISTRY.register()
class DiceLoss(nn.Module):
    """
    Soft dice loss (V-Net, Milletari et al. 2016, Eq. 1, with mmsegmentation's smoothing): for
    image ``n`` and class ``k``, over the image's valid pixels ``i``,

        D_nk = 1 - (2 sum_i p_ik g_ik + s) / (sum_i p_ik^e + sum_i g_ik^e + s)

    with ``p = softmax(logits)``, ``g`` the one-hot labels, ``s = smooth`` and ``e = exponent``
    (mmsegmentation's ``DiceLoss`` defaults, 1 and 2). The loss is the mean of ``D_nk`` over all
    K classes and over the images that have at least one valid pixel (mmsegmentation averages over
    every image, counting an all-ignored image as 0). Class weights are not used.

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "dice"

    @configurable
    def __init__(self, *, ignore_value: int = 255, smooth: float = 1.0, exponent: float = 2.0):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"MODEL.LOSS.DICE_SMOOTH={smooth}: must be >= 0")
        if exponent <= 0:
            raise ValueError(f"MODEL.LOSS.DICE_EXPONENT={exponent}: must be > 0")
        self.ignore_value = ignore_value
        self.smooth = smooth
        self.exponent = exponent

    @classmethod
    def from_config(cls, cfg, ignore_value):
        loss = cfg.MODEL.LOSS
        return {"ignore_value": ignore_value, "smooth": loss.DICE_SMOOTH, "exponent": loss.DICE_EXPONENT}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != self.ignore_value
        mask = valid.unsqueeze(1).to(logits.dtype)
        probs = logits.softmax(dim=1) * mask
        onehot = F.one_hot(targets.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype) * mask
        intersection = (probs * onehot).sum(dim=(2, 3))
        denominator = (probs**self.exponent).sum(dim=(2, 3)) + (onehot**self.exponent).sum(dim=(2, 3))
        dice = 1 - (2 * intersection + self.smooth) / (denominator + self.smooth)  # (N, K)
        images = valid.flatten(1).any(dim=1)
        if not images.any():
            return logits.sum() * 0.0
        return dice[images].mean()
