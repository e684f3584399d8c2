"""
ECENet as a detectron2 meta-architecture (``MODEL.META_ARCHITECTURE: ECENet``):
backbone -> :class:`~segcls.modeling.ecenet.decoder.ECENetDecoder` -> (B, N, H/4, W/4) logits,
trained with :class:`~segcls.modeling.ecenet.criterion.ECENetCriterion` plus pixel losses on the
fused prediction.
"""
import math
from typing import List, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import nn

from ..ecenet.criterion import ECENetCriterion
from ..ecenet.decoder import ECENetDecoder
from ..registry import build_pixel_losses
from .utils import InferenceOptions, SemSegIOMixin


@META_ARCH_REGISTRY.register()
class ECENet(SemSegIOMixin, nn.Module):
    """
    Same input/output contract as :class:`~segcls.modeling.meta_arch.per_pixel.PerPixelSegmentor`
    (:class:`~segcls.modeling.meta_arch.utils.SemSegIOMixin`): ``list[dict]`` with ``"image"``,
    ``"sem_seg"`` (training), optional ``"height"``/``"width"``; training returns the criterion's
    losses plus ``loss_<pixel loss>`` (default ``loss_ce``) on ``"pred"``; inference returns
    ``[{"sem_seg": (N, height, width)}]``.

    Images are padded to a multiple of the coarsest input stride (so that every pixel-shuffled
    stage matches the finest one); ``size_divisibility`` < 0 picks it (combined with the
    backbone's own), an explicit value must be a multiple of it.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        decoder: ECENetDecoder,
        criterion: nn.Module,
        pixel_losses: Sequence[nn.Module],
        pixel_loss_weights: Sequence[float],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_value: int = 255,
        size_divisibility: int = -1,
        align_corners: bool = False,
        inference: InferenceOptions = InferenceOptions(),
    ):
        super().__init__()
        if len(pixel_losses) != len(pixel_loss_weights):
            raise ValueError(
                "MODEL.ECENET.LOSS.PIXEL_LOSSES and MODEL.ECENET.LOSS.PIXEL_LOSS_WEIGHTS differ in length "
                f"({len(pixel_losses)} vs {len(pixel_loss_weights)})"
            )
        shapes = backbone.output_shape()
        coarsest = max(shapes[f].stride for f in decoder.in_features)
        if size_divisibility < 0:
            size_divisibility = math.lcm(max(backbone.size_divisibility, 1), coarsest)
        elif size_divisibility % coarsest:
            raise ValueError(
                f"INPUT.SIZE_DIVISIBILITY={size_divisibility}: ECENet needs a multiple of its coarsest feature "
                f"stride {coarsest} (or -1)"
            )
        self.backbone = backbone
        self.decoder = decoder
        self.criterion = criterion
        self.losses = nn.ModuleList(pixel_losses)
        self.loss_weights = list(pixel_loss_weights)
        self.init_io(
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            ignore_value=ignore_value,
            size_divisibility=size_divisibility,
            align_corners=align_corners,
            inference=inference,
        )

    @classmethod
    def from_config(cls, cfg):
        e = cfg.MODEL.ECENET
        if not e.FR.ENABLED and e.LOSS.DIV_WEIGHT > 0:
            raise ValueError(
                f"MODEL.ECENET.LOSS.DIV_WEIGHT={e.LOSS.DIV_WEIGHT} needs MODEL.ECENET.FR.ENABLED True "
                "(the diversity loss is computed on FR's diverse branch); set it to 0 without FR"
            )
        backbone = build_backbone(cfg)
        ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        return {
            "backbone": backbone,
            "decoder": ECENetDecoder(cfg, backbone.output_shape()),
            "criterion": ECENetCriterion(cfg),
            "pixel_losses": build_pixel_losses(cfg, e.LOSS.PIXEL_LOSSES, ignore_value),
            "pixel_loss_weights": e.LOSS.PIXEL_LOSS_WEIGHTS,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_value": ignore_value,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
            "inference": InferenceOptions.from_config(cfg),
        }

    def inference_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(images))["pred"]

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images, targets = self.preprocess(batched_inputs)
        outputs = self.decoder(self.backbone(images.tensor))
        losses = self.criterion(outputs, targets)
        losses.update(self.pixel_losses(outputs["pred"], targets, self.losses, self.loss_weights, "loss_"))
        return losses
