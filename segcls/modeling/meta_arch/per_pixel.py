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
from ..registry import build_classifier, build_decode_head, build_pixel_losses, build_regularizers
from .utils import InferenceOptions, SemSegIOMixin


@META_ARCH_REGISTRY.register()
class PerPixelSegmentor(SemSegIOMixin, nn.Module):
    """
    Keeps detectron2's ``SemanticSegmentor`` contract, so detectron2's evaluators and tools work:

    - input: ``list[dict]`` with ``"image"`` (3, H, W) uint8/float in ``INPUT.FORMAT``, optional
      ``"sem_seg"`` (H, W) long (required in training) and optional ``"height"``/``"width"``
      (output size, default the image size);
    - images are normalised inside the model and padded to a multiple of ``size_divisibility``
      (labels with ``ignore_value``) with ``ImageList.from_tensors``;
    - training returns a dict of scalar losses; inference returns ``[{"sem_seg": (K, height, width)}]``
      logits resized to each image's output size.

    Pre- and postprocessing are :class:`~segcls.modeling.meta_arch.utils.SemSegIOMixin`'s,
    including the inference modes (``inference``: whole image, sliding window, multi-scale + flip
    test-time augmentation; see :class:`~segcls.modeling.meta_arch.utils.InferenceOptions`).

    Losses: every ``"pred*"`` output of the decode head and the classifier is resized (bilinear)
    to the padded label size and scored with the head's pixel losses; ``"loss_*"`` outputs are
    added as they are; the auxiliary head (if any) and the regularizers add theirs.
    Loss names: ``loss_<loss>`` for ``"pred"``, ``loss_<name>_<loss>`` for ``"pred_<name>"``,
    ``loss_aux_<loss>`` for the auxiliary head's prediction and ``loss_aux_<name>`` for its own
    ``"loss_<name>"`` outputs.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        decode_head: nn.Module,
        classifier: nn.Module,
        losses: Sequence[nn.Module],
        loss_weights: Sequence[float],
        aux_head: Optional[nn.Module] = None,
        aux_classifier: Optional[nn.Module] = None,
        aux_losses: Sequence[nn.Module] = (),
        aux_loss_weights: Sequence[float] = (),
        regularizers: Sequence[nn.Module] = (),
        num_classes: int,
        ignore_value: int = 255,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = -1,
        align_corners: bool = False,
        inference: InferenceOptions = InferenceOptions(),
    ):
        super().__init__()
        if len(losses) != len(loss_weights) or len(aux_losses) != len(aux_loss_weights):
            raise ValueError("each pixel loss needs exactly one weight (LOSSES and LOSS_WEIGHTS differ in length)")
        if (aux_head is None) != (aux_classifier is None):
            raise ValueError("aux_head and aux_classifier must be given together")
        self.backbone = backbone
        self.decode_head = decode_head
        self.classifier = classifier
        self.losses = nn.ModuleList(losses)
        self.loss_weights = list(loss_weights)
        self.aux_head = aux_head
        self.aux_classifier = aux_classifier
        self.aux_losses = nn.ModuleList(aux_losses)
        self.aux_loss_weights = list(aux_loss_weights)
        self.regularizers = nn.ModuleList(regularizers)
        self.num_classes = num_classes
        self.init_io(
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            ignore_value=ignore_value,
            size_divisibility=backbone.size_divisibility if size_divisibility < 0 else size_divisibility,
            align_corners=align_corners,
            inference=inference,
        )

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes: Dict[str, ShapeSpec] = backbone.output_shape()
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        head = build_decode_head(cfg, shapes, "MODEL.DECODE_HEAD")
        ret = {
            "backbone": backbone,
            "decode_head": head,
            "classifier": build_classifier(cfg, head.out_channels, num_classes),
            "losses": build_pixel_losses(cfg, cfg.MODEL.DECODE_HEAD.LOSSES, ignore_value),
            "loss_weights": cfg.MODEL.DECODE_HEAD.LOSS_WEIGHTS,
            "regularizers": build_regularizers(cfg, head.out_channels, num_classes),
            "num_classes": num_classes,
            "ignore_value": ignore_value,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
            "inference": InferenceOptions.from_config(cfg),
        }
        if cfg.MODEL.AUX_HEAD.ENABLED:
            aux = build_decode_head(cfg, shapes, "MODEL.AUX_HEAD")
            ret.update(
                aux_head=aux,
                aux_classifier=LinearClassifier(
                    in_channels=aux.out_channels, num_classes=num_classes, dropout=cfg.MODEL.AUX_HEAD.DROPOUT
                ),
                aux_losses=build_pixel_losses(cfg, cfg.MODEL.AUX_HEAD.LOSSES, ignore_value),
                aux_loss_weights=cfg.MODEL.AUX_HEAD.LOSS_WEIGHTS,
            )
        return ret

    def predict(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Run backbone, head and classifier on a normalised (N, 3, H, W) batch; returns their outputs
        merged into one dict (``"pred"``: (N, K, h, w) logits at the head's resolution)."""
        features = self.backbone(images)
        outputs = self.decode_head(features, targets)
        outputs.update(self.classifier(outputs["pixel_feature"], targets))
        if self.training and self.aux_head is not None:
            aux = self.aux_head(features, targets)
            outputs["aux_pred"] = self.aux_classifier(aux["pixel_feature"])["pred"]
            # The auxiliary head's own losses (e.g. DANet's branch losses) as "loss_aux_<name>".
            outputs.update({"loss_aux_" + k[len("loss_") :]: v for k, v in aux.items() if k.startswith("loss_")})
        return outputs

    def inference_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images)["pred"]

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images, targets = self.preprocess(batched_inputs)
        return self.compute_losses(self.predict(images.tensor, targets), targets)

    def compute_losses(self, outputs: Dict[str, torch.Tensor], targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        losses = {}
        for key, value in outputs.items():
            if key == "pred" or key.startswith("pred_"):
                prefix = "loss_" if key == "pred" else "loss_" + key[len("pred_") :] + "_"
                losses.update(self.pixel_losses(value, targets, self.losses, self.loss_weights, prefix))
            elif key.startswith("loss_"):
                losses[key] = value
        if "aux_pred" in outputs:
            losses.update(
                self.pixel_losses(outputs["aux_pred"], targets, self.aux_losses, self.aux_loss_weights, "loss_aux_")
            )
        for regularizer in self.regularizers:
            losses.update(regularizer(outputs, targets))
        return losses
