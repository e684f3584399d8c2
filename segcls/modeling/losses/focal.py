"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017): softmax or sigmoid one-vs-all."""
import torch
from detectron2.config import configurable
from torch.nn import functional as F

from ..registry import PIXEL_LOSS_REGISTRY
from .cross_entropy import CrossEntropyLoss


@PIXEL_LOSS_REGISTRY.register()
class FocalLoss(CrossEntropyLoss):
    """
    Focal loss, focal-loss paper Eq. 4-5, in one of two forms (``variant``,
    ``MODEL.LOSS.FOCAL_VARIANT``):

    - ``"softmax"`` (default; equal to kornia's ``focal_loss`` with alpha = class weights):
      ``p_t`` the softmax probability of the ground-truth class, ``FL_i = -(1 - p_{y_i})^gamma
      log p_{y_i}``, reduced like :class:`CrossEntropyLoss` (mean over valid pixels; with
      ``MODEL.LOSS.CLASS_WEIGHTS`` the ``w_{y_i}``-weighted mean, the class weights playing the
      role of alpha_t). ``gamma = 0`` is the cross-entropy.
    - ``"sigmoid"`` (mmsegmentation's ``FocalLoss(use_sigmoid=True)``, as computed by mmcv's
      ``sigmoid_focal_loss``; one-vs-all as in the paper's RetinaNet): for every pixel and class,
      ``s = sigmoid(z_ik)``, ``t = [y_i = k]``, ``p_t = s if t else 1 - s``, ``FL_ik = -alpha_t (1 -
      p_t)^gamma log p_t`` with ``alpha_t = alpha`` if ``t`` else ``1 - alpha``
      (``MODEL.LOSS.FOCAL_ALPHA``, mmseg's 0.5), times the class weight of ``k``; the mean over
      all N*H*W*K entries, ignored pixels counting 0 (mmseg's ``reduction='mean'``). (mmseg
      1.2.2's CPU fallback indexes its one-hot target wrongly; this is its GPU formula.)

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "focal"

    @configurable
    def __init__(
        self,
        *,
        ignore_value: int = 255,
        class_weights=None,
        normalization: str = "valid",
        gamma: float = 2.0,
        variant: str = "softmax",
        alpha: float = 0.5,
    ):
        super().__init__(ignore_value=ignore_value, class_weights=class_weights, normalization=normalization)
        if gamma < 0:
            raise ValueError(f"MODEL.LOSS.FOCAL_GAMMA={gamma}: must be >= 0")
        if variant not in ("softmax", "sigmoid"):
            raise ValueError(f"MODEL.LOSS.FOCAL_VARIANT={variant!r}: expected 'softmax' or 'sigmoid'")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"MODEL.LOSS.FOCAL_ALPHA={alpha}: must be in [0, 1]")
        self.gamma = gamma
        self.variant = variant
        self.alpha = alpha

    @classmethod
    def from_config(cls, cfg, ignore_value):
        loss = cfg.MODEL.LOSS
        return {
            **super().from_config(cfg, ignore_value),
            "gamma": loss.FOCAL_GAMMA,
            "variant": loss.FOCAL_VARIANT,
            "alpha": loss.FOCAL_ALPHA,
        }

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.variant == "softmax":
            return super().forward(logits, targets)
        valid = targets != self.ignore_value
        onehot = F.one_hot(targets.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        s = logits.sigmoid()
        one_minus_pt = (1 - s) * onehot + s * (1 - onehot)
        alpha_t = self.alpha * onehot + (1 - self.alpha) * (1 - onehot)
        losses = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none") * alpha_t * one_minus_pt**self.gamma
        weights = valid.unsqueeze(1).to(logits.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights.to(logits.dtype).view(1, -1, 1, 1)
        return (losses * weights).mean()

    def pixel_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != self.ignore_value
        log_p = F.log_softmax(logits, dim=1).gather(1, targets.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
        losses = -((1 - log_p.exp()) ** self.gamma) * log_p
        return losses.masked_fill(~valid, 0.0)
