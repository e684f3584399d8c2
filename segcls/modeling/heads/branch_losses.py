"""Pixel losses of a head's extra prediction with their own weight, computed inside the head."""
from typing import Dict, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import build_pixel_losses


class BranchLosses(nn.Module):
    """
    The head's pixel losses (``<node>.LOSSES`` / ``LOSS_WEIGHTS``) applied to one extra prediction
    of the head, scaled by ``weight``:
    ``{"loss_<name>_<loss.name>": weight * w_l * loss_l(resize(logits), targets)}``, the logits
    bilinearly resized to the label size as the meta-architecture does for ``"pred"``.

    Heads return these as ``"loss_*"`` outputs (added to the loss dict as they are) instead of a
    ``"pred_<name>"`` output when the extra prediction needs a weight of its own (OCR's coarse
    prediction: 0.4), since the meta-architecture scores every ``"pred_<name>"`` with the main
    prediction's weights.
    """

    def __init__(self, losses: Sequence[nn.Module], loss_weights: Sequence[float], weight: float, align_corners=False):
        super().__init__()
        if len(losses) != len(loss_weights):
            raise ValueError("each pixel loss needs exactly one weight (LOSSES and LOSS_WEIGHTS differ in length)")
        self.losses = nn.ModuleList(losses)
        self.loss_weights = [weight * w for w in loss_weights]
        self.align_corners = align_corners

    @classmethod
    def from_node(cls, cfg, node, weight: float):
        """Build from a head config node (``MODEL.DECODE_HEAD`` or ``MODEL.AUX_HEAD``)."""
        return cls(
            build_pixel_losses(cfg, node.LOSSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
            node.LOSS_WEIGHTS,
            weight,
            align_corners=cfg.MODEL.ALIGN_CORNERS,
        )

    def forward(self, name: str, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """logits (N, K, h, w), targets (N, H, W) -> dict of scalar losses."""
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        pairs = zip(self.losses, self.loss_weights)
        return {f"loss_{name}_{loss.name}": w * loss(logits, targets) for loss, w in pairs}
