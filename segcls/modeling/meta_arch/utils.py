"""
Input/output handling shared by segcls's meta-architectures: detectron2's ``SemanticSegmentor``
contract (see :class:`~segcls.modeling.meta_arch.per_pixel.PerPixelSegmentor`), written once.
"""
from typing import Dict, List, Sequence

import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F


class SemSegIOMixin:
    """
    Mixed into an ``nn.Module`` meta-architecture, which calls :meth:`init_io` in its ``__init__``:

    - :meth:`preprocess`: ``list[dict]`` inputs -> normalised images padded to a multiple of
      ``size_divisibility`` (an ``ImageList``) and labels padded with ``ignore_value``
      ((N, H, W) long, or None at inference);
    - :meth:`postprocess`: (N, K, h, w) logits -> ``[{"sem_seg": (K, height, width)}]`` at each
      input's ``"height"``/``"width"`` (default its image size);
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
    ):
        self.ignore_value = ignore_value
        self.size_divisibility = size_divisibility
        self.align_corners = align_corners
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: List[dict]):
        """Normalise and pad images; pad labels with the ignore value. Returns (ImageList, targets or None).
        In training every input must carry ``"sem_seg"``."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
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

    def postprocess(self, logits: torch.Tensor, images: ImageList, batched_inputs: List[dict]) -> List[dict]:
        """(N, K, h, w) logits of the padded batch -> ``[{"sem_seg": (K, height, width)}]``."""
        logits = self.resize(logits, images.tensor.shape[-2:])
        results = []
        for logit, image_size, inp in zip(logits, images.image_sizes, batched_inputs):
            height = inp.get("height", image_size[0])
            width = inp.get("width", image_size[1])
            results.append({"sem_seg": sem_seg_postprocess(logit, image_size, height, width)})
        return results

    def pixel_losses(
        self, logits: torch.Tensor, targets: torch.Tensor, losses: Sequence[nn.Module], weights, prefix: str
    ) -> Dict[str, torch.Tensor]:
        """``{prefix + loss.name: weight * loss(resized logits, targets)}``."""
        logits = self.resize(logits, targets.shape[-2:])
        return {f"{prefix}{loss.name}": w * loss(logits, targets) for loss, w in zip(losses, weights)}
