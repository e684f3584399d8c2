"""
Input/output handling shared by segcls's meta-architectures: detectron2's ``SemanticSegmentor``
contract (see :class:`~segcls.modeling.meta_arch.per_pixel.PerPixelSegmentor`) and the inference
modes (whole image, sliding window, multi-scale + flip test-time augmentation), written once.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class InferenceOptions:
    """
    How a meta-architecture predicts at test time (config: ``TEST.MODE``, ``TEST.CROP_SIZE``,
    ``TEST.STRIDE``, ``TEST.AUG.*``):

    - ``mode``: ``"whole"`` (the whole image at once; the images of a batch are padded together)
      or ``"slide"`` (mmsegmentation's ``mode='slide'``: windows of ``crop_size`` (height, width)
      every ``stride`` pixels, overlapping logits summed and divided by the per-pixel window count);
    - ``tta_scales``: multi-scale test-time augmentation factors (empty = none), with
      ``tta_flip`` also the flipped images; the softmax probabilities are averaged.
    """

    mode: str = "whole"
    crop_size: Tuple[int, int] = (512, 512)
    stride: Tuple[int, int] = (341, 341)
    tta_scales: Tuple[float, ...] = ()
    tta_flip: bool = False

    def __post_init__(self):
        for name in ("crop_size", "stride", "tta_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference mode (TEST.MODE) must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and not (
            len(self.crop_size) == 2 == len(self.stride) and all(0 < s <= c for s, c in zip(self.stride, self.crop_size))
        ):
            raise ValueError(
                f"sliding-window inference needs TEST.CROP_SIZE and TEST.STRIDE as [height, width] with "
                f"0 < stride <= crop size, got CROP_SIZE={list(self.crop_size)}, STRIDE={list(self.stride)}"
            )
        if any(scale <= 0 for scale in self.tta_scales):
            raise ValueError(f"test-time augmentation scales (TEST.AUG.SCALES) must be positive, got {list(self.tta_scales)}")

    @classmethod
    def from_config(cls, cfg):
        return cls(
            mode=cfg.TEST.MODE,
            crop_size=cfg.TEST.CROP_SIZE,
            stride=cfg.TEST.STRIDE,
            tta_scales=cfg.TEST.AUG.SCALES if cfg.TEST.AUG.ENABLED else (),
            tta_flip=cfg.TEST.AUG.FLIP,
        )


class SemSegIOMixin:
    """
    Mixed into an ``nn.Module`` meta-architecture, which calls :meth:`init_io` in its ``__init__``
    and implements :meth:`inference_logits`:

    - :meth:`preprocess`: ``list[dict]`` inputs -> normalised images padded to a multiple of
      ``size_divisibility`` (an ``ImageList``) and labels padded with ``ignore_value``
      ((N, H, W) long, or None at inference);
    - :meth:`inference`: ``list[dict]`` inputs -> ``[{"sem_seg": (K, height, width)}]`` at each
      input's ``"height"``/``"width"`` (default its image size), with the :class:`InferenceOptions`;
    - :meth:`pixel_losses`: logits resized to the label size, scored by PIXEL_LOSS_REGISTRY losses.
    """

    def init_io(
        self,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_value: int,
        size_divisibility: int,
        align_corners: bool,
        inference: InferenceOptions = InferenceOptions(),
    ):
        self.ignore_value = ignore_value
        self.size_divisibility = size_divisibility
        self.align_corners = align_corners
        self.inference_options = inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) image in ``INPUT.FORMAT`` -> normalised float tensor on the model's device."""
        return (image.to(self.device) - self.pixel_mean) / self.pixel_std

    def preprocess(self, batched_inputs: List[dict]):
        """Normalise and pad images; pad labels with the ignore value. Returns (ImageList, targets or None).
        In training every input must carry ``"sem_seg"``."""
        images = ImageList.from_tensors([self.normalize(x["image"]) for x in batched_inputs], self.size_divisibility)
        targets = None
        if "sem_seg" in batched_inputs[0]:
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor
        elif self.training:
            raise ValueError(f"{type(self).__name__} in training mode needs 'sem_seg' in every input dict")
        return images, targets

    def resize(self, logits: torch.Tensor, size) -> torch.Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def inference_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised, padded images -> (N, K, h, w) logits at the model's output
        resolution. Implemented by each meta-architecture."""
        raise NotImplementedError

    def inference(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        """
        ``[{"sem_seg": (K, height, width)}]``: per image, the scores of :meth:`whole_inference`
        (all images in one padded batch), :meth:`slide_inference` or, with test-time augmentation,
        :meth:`augmented_inference`, resized (bilinear) to the input's ``"height"``/``"width"``.
        """
        images = [self.normalize(x["image"]) for x in batched_inputs]
        if self.inference_options.tta_scales:
            scores = [self.augmented_inference(image) for image in images]
        elif self.inference_options.mode == "whole":
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
        logits = self.resize(self.inference_logits(batch.tensor), batch.tensor.shape[-2:])
        return [logit[:, :h, :w] for logit, (h, w) in zip(logits, batch.image_sizes)]

    def predict_image(self, image: torch.Tensor) -> torch.Tensor:
        """(K, H, W) logits of one normalised (3, H, W) image in the configured mode."""
        if self.inference_options.mode == "slide":
            return self.slide_inference(image)
        return self.whole_inference([image])[0]

    def slide_inference(self, image: torch.Tensor) -> torch.Tensor:
        """
        mmsegmentation's ``mode='slide'`` on one normalised (3, H, W) image: window rows start at
        ``0, stride, 2 * stride, ...`` with the last one moved back to end at the border (columns
        alike; an image smaller than the window is one window); each window's logits come from
        :meth:`whole_inference`; overlapping logits are summed and divided by the number of windows
        covering each pixel. Returns (K, H, W).
        """
        height, width = image.shape[-2:]
        (crop_h, crop_w), (stride_h, stride_w) = self.inference_options.crop_size, self.inference_options.stride
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
        Multi-scale (+ flip) test-time augmentation of one normalised (3, H, W) image
        (mmsegmentation's ``aug_test``): for each of ``tta_scales`` the image is resized (bilinear)
        to ``int(H * scale + 0.5)`` x ``int(W * scale + 0.5)`` and, with ``tta_flip``, also flipped;
        each version is predicted with :meth:`predict_image` and its softmax probabilities, flipped
        back and resized to (H, W), are averaged. Returns (K, H, W) probabilities.
        """
        height, width = image.shape[-2:]
        options = self.inference_options
        total, n = 0.0, 0
        for scale in options.tta_scales:
            size = (max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1))
            scaled = image if size == (height, width) else self.resize(image[None], size)[0]
            for flip in (False, True) if options.tta_flip else (False,):
                logits = self.predict_image(scaled.flip(-1) if flip else scaled)
                logits = logits.flip(-1) if flip else logits
                total = total + self.resize(logits[None], (height, width))[0].softmax(dim=0)
                n += 1
        return total / n

    def pixel_losses(
        self, logits: torch.Tensor, targets: torch.Tensor, losses: Sequence[nn.Module], weights, prefix: str
    ) -> Dict[str, torch.Tensor]:
        """``{prefix + loss.name: weight * loss(resized logits, targets)}``."""
        logits = self.resize(logits, targets.shape[-2:])
        return {f"{prefix}{loss.name}": w * loss(logits, targets) for loss, w in zip(losses, weights)}
