"""
ECENet as a detectron2 meta-architecture (``MODEL.META_ARCHITECTURE: ECENet``):
backbone -> :class:`~segcls.modeling.ecenet.decoder.ECENetDecoder` -> (B, N, H/4, W/4) logits,
trained with :class:`~segcls.modeling.ecenet.criterion.ECENetCriterion` plus pixel losses on the
fused prediction. The defaults (``MODEL.ECENET.*``) are the authors' released head, the
paper-literal reading is ``segcls.modeling.ecenet.config.PAPER_LITERAL``.
"""
import math
from typing import List, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import nn

from ..ecenet.criterion import ECENetCriterion
from ..ecenet.decoder import ECENetDecoder
from ..losses import PixelLossSet, SegmentationLoss
from ..outputs import MAIN, Prediction, SegOutputs
from ..precision import FastPath, FastPathOptions, to_float32
from .inference import InferenceOptions, SemSegInference
from .preprocess import SemSegPreprocessor


@META_ARCH_REGISTRY.register()
class ECENet(nn.Module):
    """
    Same input/output contract as :class:`~segcls.modeling.meta_arch.per_pixel.PerPixelSegmentor`,
    with the same pre-processing (:class:`SemSegPreprocessor`), inference modes
    (:class:`SemSegInference`) and loss path (:class:`~segcls.modeling.losses.SegmentationLoss`):
    ``list[dict]`` with ``"image"``, ``"sem_seg"`` (training), optional ``"height"``/``"width"``;
    training returns the criterion's losses (ready-made terms) plus ``loss_<pixel loss>``
    (default ``loss_ce``) of the fused prediction, scored with ``MODEL.ECENET.LOSS.PIXEL_LOSSES``;
    inference returns ``[{"sem_seg": (N, height, width)}]``.

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
        pixel_loss: PixelLossSet,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_value: int = 255,
        size_divisibility: int = -1,
        align_corners: bool = False,
        inference: InferenceOptions = InferenceOptions(),
        fast_path: FastPathOptions = FastPathOptions(),
    ):
        super().__init__()
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
        self.pixel_loss = SegmentationLoss(pixel_loss)
        self.preprocessor = SemSegPreprocessor(
            pixel_mean=pixel_mean, pixel_std=pixel_std, ignore_value=ignore_value, size_divisibility=size_divisibility
        )
        self.inferencer = SemSegInference(inference, size_divisibility=size_divisibility, align_corners=align_corners)
        self.fast_path = FastPath(fast_path)
        self.fast_path.prepare(self)

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
            "pixel_loss": _pixel_loss_set(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_value": ignore_value,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
            "inference": InferenceOptions.from_config(cfg),
            "fast_path": FastPathOptions.from_config(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.preprocessor.device

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised, padded (B, 3, H, W) images -> (B, N, H/4, W/4) logits of the fused prediction."""
        return self.decoder(self.backbone(images))["pred"]

    def network(self, images: torch.Tensor) -> dict:
        """Normalised, padded (B, 3, H, W) images -> the decoder's outputs (training)."""
        return self.decoder(self.backbone(images))

    def fast_logits(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` on the fast path (:class:`~segcls.modeling.precision.FastPath`), float32 (float64 stays float64)."""
        return to_float32(self.fast_path.run(self.logits, images, training=False))

    def forward(self, batched_inputs: List[dict]):
        """On the configured fast path: the network and the losses under ``SOLVER.AMP`` autocast
        in training (the criterion's float32 islands are its own), :meth:`fast_logits` at inference."""
        if not self.training:
            images = [self.preprocessor.normalize(x["image"]) for x in batched_inputs]
            return self.inferencer(self.fast_logits, images, batched_inputs)
        images, targets = self.preprocessor(batched_inputs, require_targets=True)
        outputs = self.fast_path.run(self.network, images.tensor, training=True)
        with self.fast_path.autocast(images.tensor.device, training=True):
            scored = SegOutputs(predictions={MAIN: Prediction(outputs["pred"])}, losses=self.criterion(outputs, targets))
            return self.pixel_loss(scored, targets)


def _pixel_loss_set(cfg) -> PixelLossSet:
    e = cfg.MODEL.ECENET.LOSS
    if len(e.PIXEL_LOSSES) != len(e.PIXEL_LOSS_WEIGHTS):
        raise ValueError(
            "MODEL.ECENET.LOSS.PIXEL_LOSSES and MODEL.ECENET.LOSS.PIXEL_LOSS_WEIGHTS differ in length "
            f"({len(e.PIXEL_LOSSES)} vs {len(e.PIXEL_LOSS_WEIGHTS)})"
        )
    return PixelLossSet.from_names(cfg, e.PIXEL_LOSSES, e.PIXEL_LOSS_WEIGHTS)
