"""
The per-pixel meta-architecture: backbone -> decode head -> pixel feature -> classifier -> logits.
"""
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import nn

from ..classifiers import LinearClassifier
from ..losses import PixelLossSet, SegmentationLoss
from ..outputs import SegOutputs
from ..registry import build_classifier, build_decode_head, build_regularizers
from ..precision import FastPath, FastPathOptions, to_float32
from .inference import InferenceOptions, SemSegInference
from .preprocess import SemSegPreprocessor


@META_ARCH_REGISTRY.register()
class PerPixelSegmentor(nn.Module):
    """
    Keeps detectron2's ``SemanticSegmentor`` contract, so detectron2's evaluators and tools work:

    - input: ``list[dict]`` with ``"image"`` (3, H, W) uint8/float in ``INPUT.FORMAT``, optional
      ``"sem_seg"`` (H, W) long (required in training) and optional ``"height"``/``"width"``
      (output size, default the image size);
    - images are normalised inside the model and padded to a multiple of ``size_divisibility``
      (labels with ``ignore_value``) by its :class:`SemSegPreprocessor`;
    - training returns a dict of scalar losses; inference returns ``[{"sem_seg": (K, height, width)}]``
      logits resized to each image's output size, in the inference mode of its
      :class:`SemSegInference` (whole image, sliding window, multi-scale + flip TTA).

    Losses (:class:`~segcls.modeling.losses.SegmentationLoss`): the decode head and the classifier
    return :class:`~segcls.modeling.outputs.SegOutputs`; every prediction is scored with its own
    loss spec (``MODEL.DECODE_HEAD.LOSSES`` where it has none), the auxiliary head's (if any) with
    ``MODEL.AUX_HEAD.LOSSES`` under the prefix ``aux``; ready-made loss terms are added as they
    are, and the regularizers add theirs. Loss names: ``loss_<loss>`` for the main prediction,
    ``loss_<name>_<loss>`` for the prediction ``<name>`` (e.g. ``loss_aux_ce``, ``loss_pam_ce``).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        decode_head: nn.Module,
        classifier: nn.Module,
        loss: PixelLossSet,
        aux_head: Optional[nn.Module] = None,
        aux_classifier: Optional[nn.Module] = None,
        aux_loss: Optional[PixelLossSet] = None,
        regularizers: Sequence[nn.Module] = (),
        num_classes: int,
        ignore_value: int = 255,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = -1,
        align_corners: bool = False,
        inference: InferenceOptions = InferenceOptions(),
        fast_path: FastPathOptions = FastPathOptions(),
    ):
        super().__init__()
        if not (aux_head is None) == (aux_classifier is None) == (aux_loss is None):
            raise ValueError("aux_head, aux_classifier and aux_loss must be given together")
        self.backbone = backbone
        self.decode_head = decode_head
        self.classifier = classifier
        self.aux_head = aux_head
        self.aux_classifier = aux_classifier
        self.aux_loss = aux_loss
        self.regularizers = nn.ModuleList(regularizers)
        self.num_classes = num_classes
        size_divisibility = backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        self.preprocessor = SemSegPreprocessor(
            pixel_mean=pixel_mean, pixel_std=pixel_std, ignore_value=ignore_value, size_divisibility=size_divisibility
        )
        self.inferencer = SemSegInference(inference, size_divisibility=size_divisibility, align_corners=align_corners)
        self.criterion = SegmentationLoss(loss)
        self.fast_path = FastPath(fast_path)
        self.fast_path.prepare(self)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes: Dict[str, ShapeSpec] = backbone.output_shape()
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        head = build_decode_head(cfg, shapes, "MODEL.DECODE_HEAD")
        ret = {
            "backbone": backbone,
            "decode_head": head,
            "classifier": build_classifier(cfg, head.out_channels, num_classes),
            "loss": PixelLossSet.from_node(cfg, cfg.MODEL.DECODE_HEAD),
            "regularizers": build_regularizers(cfg, head.out_channels, num_classes),
            "num_classes": num_classes,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
            "inference": InferenceOptions.from_config(cfg),
            "fast_path": FastPathOptions.from_config(cfg),
        }
        if cfg.MODEL.AUX_HEAD.ENABLED:
            aux = build_decode_head(cfg, shapes, "MODEL.AUX_HEAD")
            ret.update(
                aux_head=aux,
                aux_classifier=LinearClassifier(
                    in_channels=aux.out_channels, num_classes=num_classes, dropout=cfg.MODEL.AUX_HEAD.DROPOUT
                ),
                aux_loss=PixelLossSet.from_node(cfg, cfg.MODEL.AUX_HEAD),
            )
        return ret

    @property
    def device(self) -> torch.device:
        return self.preprocessor.device

    def predict(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> SegOutputs:
        """Backbone, head and classifier (and, in training, the auxiliary head) on a normalised
        (N, 3, H, W) batch; ``targets`` (N, H, W) are the padded labels (training only).
        Returns their :class:`SegOutputs` merged (``.logits``: (N, K, h, w) at the head's resolution)."""
        features = self.backbone(images)
        outputs = self.decode_head(features, targets)
        outputs.merge(self.classifier(outputs.pixel_feature, targets))
        if self.training and self.aux_head is not None:
            aux = self.aux_head(features, targets)
            aux.merge(self.aux_classifier(aux.pixel_feature))
            outputs.merge(aux, prefix="aux", default_loss=self.aux_loss)
        return outputs

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised, padded (N, 3, H, W) images -> (N, K, h, w) logits of the main prediction."""
        return self.predict(images).logits

    def losses(self, outputs: SegOutputs, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every prediction's losses, the ready-made terms and the regularizers' losses."""
        losses = self.criterion(outputs, targets)
        for regularizer in self.regularizers:
            losses.update(regularizer(outputs, targets))
        return losses

    def fast_logits(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` on the fast path (:class:`~segcls.modeling.precision.FastPath`: memory
        format, inference autocast, compilation), returned in float32 (float64 stays float64)."""
        return to_float32(self.fast_path.run(self.logits, images, training=False))

    def forward(self, batched_inputs: List[dict]):
        """The contract of the class docstring, on the configured fast path: training runs the
        network and the losses under ``SOLVER.AMP`` autocast (float32 islands inside the losses),
        inference runs :meth:`fast_logits`."""
        if not self.training:
            images = [self.preprocessor.normalize(x["image"]) for x in batched_inputs]
            return self.inferencer(self.fast_logits, images, batched_inputs)
        images, targets = self.preprocessor(batched_inputs, require_targets=True)
        outputs = self.fast_path.run(self.predict, images.tensor, targets, training=True)
        with self.fast_path.autocast(images.tensor.device, training=True):
            return self.losses(outputs, targets)
