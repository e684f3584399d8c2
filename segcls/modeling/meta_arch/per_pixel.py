"""
The per-pixel meta-architecture: backbone -> decode head -> pixel feature -> classifier -> logits.
"""
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F

from ..classifiers import LinearClassifier
from ..registry import build_classifier, build_decode_head, build_pixel_losses, build_regularizers


@META_ARCH_REGISTRY.register()
class PerPixelSegmentor(nn.Module):
    """
    Keeps detectron2's ``SemanticSegmentor`` contract, so detectron2's evaluators and tools work:

    - input: ``list[dict]`` with ``"image"`` (3, H, W) uint8/float in ``INPUT.FORMAT``, optional
      ``"sem_seg"`` (H, W) long (required in training) and optional ``"height"``/``"width"``
      (output size, default the image size);
    - images are normalised inside the model and padded to a multiple of ``size_divisibility``
      (labels with ``ignore_value``) with ``ImageList.from_tensors``;
    - training returns a dict of scalar losses; inference returns ``[{"sem_seg": (K, height, width)}]``
      logits resized to each image's output size.

    Inference modes (see :meth:`inference`): ``test_mode="whole"`` (batched, the default) or
    ``"slide"`` (windows of ``test_crop_size`` every ``test_stride`` pixels, overlapping logits
    averaged, as mmsegmentation's ``mode='slide'``); either can be wrapped in multi-scale + flip
    test-time augmentation (``tta_scales``, ``tta_flip``), whose output is the mean of the softmax
    probabilities (mmsegmentation's ``aug_test``).

    Losses: every ``"pred*"`` output of the decode head and the classifier is resized (bilinear)
    to the padded label size and scored with the head's pixel losses; ``"loss_*"`` outputs are
    added as they are; the auxiliary head (if any) and the regularizers add theirs.
    Loss names: ``loss_<loss>`` for ``"pred"``, ``loss_<name>_<loss>`` for ``"pred_<name>"``,
    ``loss_aux_<loss>`` for the auxiliary head.
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
        test_mode: str = "whole",
        test_crop_size: Sequence[int] = (512, 512),
        test_stride: Sequence[int] = (341, 341),
        tta_scales: Sequence[float] = (),
        tta_flip: bool = False,
    ):
        """
        Args (inference only):
            test_mode: ``"whole"`` or ``"slide"``.
            test_crop_size, test_stride: (height, width) of the sliding windows and of their step.
            tta_scales: resize factors of test-time augmentation; empty = no augmentation.
            tta_flip: with ``tta_scales``, also predict the horizontally flipped images.
        """
        super().__init__()
        if test_mode not in ("whole", "slide"):
            raise ValueError(f"test_mode (TEST.MODE) must be 'whole' or 'slide', got {test_mode!r}")
        if test_mode == "slide" and not (
            len(test_crop_size) == 2 == len(test_stride) and all(0 < s <= c for s, c in zip(test_stride, test_crop_size))
        ):
            raise ValueError(
                f"sliding-window inference needs TEST.CROP_SIZE and TEST.STRIDE as [height, width] with "
                f"0 < stride <= crop size, got CROP_SIZE={list(test_crop_size)}, STRIDE={list(test_stride)}"
            )
        if any(scale <= 0 for scale in tta_scales):
            raise ValueError(f"test-time augmentation scales (TEST.AUG.SCALES) must be positive, got {list(tta_scales)}")
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
        self.ignore_value = ignore_value
        self.size_divisibility = backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        self.align_corners = align_corners
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.test_mode = test_mode
        self.test_crop_size = tuple(test_crop_size)
        self.test_stride = tuple(test_stride)
        self.tta_scales = tuple(tta_scales)
        self.tta_flip = tta_flip

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
            "test_mode": cfg.TEST.MODE,
            "test_crop_size": cfg.TEST.CROP_SIZE,
            "test_stride": cfg.TEST.STRIDE,
            "tta_scales": cfg.TEST.AUG.SCALES if cfg.TEST.AUG.ENABLED else (),
            "tta_flip": cfg.TEST.AUG.FLIP,
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

    @property
    def device(self):
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) image in ``INPUT.FORMAT`` -> normalised float tensor on the model's device."""
        return (image.to(self.device) - self.pixel_mean) / self.pixel_std

    def preprocess(self, batched_inputs: List[dict]):
        """Normalise and pad images; pad labels with the ignore value. Returns (ImageList, targets or None)."""
        images = ImageList.from_tensors([self.normalize(x["image"]) for x in batched_inputs], self.size_divisibility)
        targets = None
        if "sem_seg" in batched_inputs[0]:
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor
        return images, targets

    def predict(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Run backbone, head and classifier on a normalised (N, 3, H, W) batch; returns their outputs
        merged into one dict (``"pred"``: (N, K, h, w) logits at the head's resolution)."""
        features = self.backbone(images)
        outputs = self.decode_head(features, targets)
        outputs.update(self.classifier(outputs["pixel_feature"], targets))
        if self.training and self.aux_head is not None:
            outputs["aux_pred"] = self.aux_classifier(self.aux_head(features, targets)["pixel_feature"])["pred"]
        return outputs

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images, targets = self.preprocess(batched_inputs)
        if targets is None:
            raise ValueError("PerPixelSegmentor in training mode needs 'sem_seg' in every input dict")
        return self.compute_losses(self.predict(images.tensor, targets), targets)

    def inference(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        """
        ``[{"sem_seg": (K, height, width)}]``: per image, the scores of :meth:`whole_inference`
        (all images in one padded batch), :meth:`slide_inference` or, with ``tta_scales``,
        :meth:`augmented_inference`, resized (bilinear) to the input's ``"height"``/``"width"``.
        """
        images = [self.normalize(x["image"]) for x in batched_inputs]
        if self.tta_scales:
            scores = [self.augmented_inference(image) for image in images]
        elif self.test_mode == "whole":
            scores = self.whole_inference(images)
        else:
            scores = [self.slide_inference(image) for image in images]
        results = []
        for score, inp in zip(scores, batched_inputs):
            size = score.shape[-2:]
            results.append(
                {"sem_seg": sem_seg_postprocess(score, size, inp.get("height", size[0]), inp.get("width", size[1]))}
            )
        return results

    def whole_inference(self, images: List[torch.Tensor]) -> List[torch.Tensor]:
        """Normalised (3, H_i, W_i) images -> (K, H_i, W_i) logits, predicted as one batch padded to
        ``size_divisibility`` and resized (bilinear) to the padded size before cropping."""
        batch = ImageList.from_tensors(images, self.size_divisibility)
        logits = self.resize(self.predict(batch.tensor)["pred"], batch.tensor.shape[-2:])
        return [logit[:, :h, :w] for logit, (h, w) in zip(logits, batch.image_sizes)]

    def predict_image(self, image: torch.Tensor) -> torch.Tensor:
        """(K, H, W) logits of one normalised (3, H, W) image with ``test_mode``."""
        return self.slide_inference(image) if self.test_mode == "slide" else self.whole_inference([image])[0]

    def slide_inference(self, image: torch.Tensor) -> torch.Tensor:
        """
        mmsegmentation's ``mode='slide'`` on one normalised (3, H, W) image: window rows start at
        ``0, stride, 2 * stride, ...`` with the last one moved back to end at the border (columns
        alike); each window's logits come from :meth:`whole_inference`; overlapping logits are
        summed and divided by the number of windows covering each pixel. Returns (K, H, W).
        """
        height, width = image.shape[-2:]
        (crop_h, crop_w), (stride_h, stride_w) = self.test_crop_size, self.test_stride
        rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
        total, count = None, image.new_zeros((height, width))
        for row in range(rows):
            for col in range(cols):
                y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
                y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
                logits = self.whole_inference([image[:, y1:y2, x1:x2]])[0]
                if total is None:
                    total = logits.new_zeros((logits.shape[0], height, width))
                total[:, y1:y2, x1:x2] += logits
                count[y1:y2, x1:x2] += 1
        return total / count

    def augmented_inference(self, image: torch.Tensor) -> torch.Tensor:
        """
        Multi-scale (+ flip) test-time augmentation of one normalised (3, H, W) image: for each
        scale of ``tta_scales`` the image is resized (bilinear) to ``int(H * scale + 0.5)`` x
        ``int(W * scale + 0.5)`` and, with ``tta_flip``, also flipped; each version is predicted
        with ``test_mode`` and its softmax probabilities, flipped back and resized to (H, W), are
        averaged. Returns (K, H, W) probabilities.
        """
        height, width = image.shape[-2:]
        total, n = 0.0, 0
        for scale in self.tta_scales:
            size = (max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1))
            scaled = image if size == (height, width) else self.resize(image[None], size)[0]
            for flip in (False, True) if self.tta_flip else (False,):
                logits = self.predict_image(scaled.flip(-1) if flip else scaled)
                logits = logits.flip(-1) if flip else logits
                total = total + self.resize(logits[None], (height, width))[0].softmax(dim=0)
                n += 1
        return total / n

    def resize(self, logits: torch.Tensor, size) -> torch.Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def pixel_losses(self, logits, targets, losses, weights, prefix):
        logits = self.resize(logits, targets.shape[-2:])
        return {f"{prefix}{loss.name}": w * loss(logits, targets) for loss, w in zip(losses, weights)}

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
