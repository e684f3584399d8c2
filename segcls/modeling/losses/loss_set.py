"""
How predictions become losses: :class:`PixelLossSet` (the loss spec of one prediction) and
:class:`SegmentationLoss` (the one loss path that scores every prediction of a
:class:`~segcls.modeling.outputs.SegOutputs`).
"""
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..layers import resize
from ..precision import float32
from ..outputs import MAIN, SegOutputs
from ..registry import build_pixel_losses


class PixelLossSet(nn.Module):
    """
    The loss spec of one prediction: logits (N, K, h, w) are resized bilinearly (with
    ``align_corners``) to the label size (N, H, W) and scored by each pixel loss;
    returns ``{loss.name: scale * weight_l * loss_l(resized logits, labels)}``.
    The normalisation of each loss (e.g. ``CrossEntropyLoss``'s ``normalization``) is the loss's own.
    Under autocast the resize and every pixel loss (their softmax/log-softmax, sorting, exp) run in
    float32 (:func:`~segcls.modeling.precision.float32`).
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float], *, align_corners: bool = False, scale: float = 1.0):
        super().__init__()
        if len(losses) != len(weights):
            raise ValueError(
                f"each pixel loss needs exactly one weight: {len(losses)} losses, {len(weights)} weights "
                "(LOSSES and LOSS_WEIGHTS differ in length)"
            )
        names = [loss.name for loss in losses]
        if len(set(names)) != len(names):
            raise ValueError(f"two pixel losses of one prediction share a name: {names}")
        self.losses = nn.ModuleList(losses)
        self.weights = [scale * float(w) for w in weights]
        self.align_corners = align_corners

    @classmethod
    def from_node(cls, cfg, node, *, scale: float = 1.0, align_corners: Optional[bool] = None) -> "PixelLossSet":
        """From a head config node's ``LOSSES`` / ``LOSS_WEIGHTS`` (``MODEL.DECODE_HEAD`` or
        ``MODEL.AUX_HEAD``); ``align_corners`` defaults to ``MODEL.ALIGN_CORNERS``."""
        return cls.from_names(cfg, node.LOSSES, node.LOSS_WEIGHTS, scale=scale, align_corners=align_corners)

    @classmethod
    def from_names(cls, cfg, names, weights, *, scale: float = 1.0, align_corners: Optional[bool] = None):
        """PIXEL_LOSS_REGISTRY losses by name, built with ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``."""
        return cls(
            build_pixel_losses(cfg, names, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
            weights,
            align_corners=cfg.MODEL.ALIGN_CORNERS if align_corners is None else align_corners,
            scale=scale,
        )

    def extra_repr(self):
        return f"weights={self.weights}, align_corners={self.align_corners}"

    @float32
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = resize(logits, targets.shape[-2:], self.align_corners)
        return {loss.name: w * loss(logits, targets) for loss, w in zip(self.losses, self.weights)}


def loss_key(prediction: str, loss: str) -> str:
    """``loss_<loss>`` for the main prediction, ``loss_<prediction>_<loss>`` for the others."""
    return f"loss_{loss}" if prediction == MAIN else f"loss_{prediction}_{loss}"


class SegmentationLoss(nn.Module):
    """
    The one loss path: every prediction of a :class:`SegOutputs` is scored with its own
    :class:`PixelLossSet` (``default`` where it has none), named by :func:`loss_key`, and the
    ready-made ``losses`` are added as they are. Returns a dict of scalar losses.
    """

    def __init__(self, default: PixelLossSet):
        super().__init__()
        self.default = default

    def forward(self, outputs: SegOutputs, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        losses = {}
        for name, prediction in outputs.predictions.items():
            spec = prediction.loss if prediction.loss is not None else self.default
            for loss_name, value in spec(prediction.logits, targets).items():
                losses[loss_key(name, loss_name)] = value
        for name, value in outputs.losses.items():
            if name in losses:
                raise ValueError(f"the loss {name!r} is returned twice")
            losses[name] = value
        return losses
