"""Pre-processing of detectron2's ``list[dict]`` inputs, shared by segcls's meta-architectures."""
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.structures import ImageList
from torch import nn


class SemSegPreprocessor(nn.Module):
    """
    ``list[dict]`` inputs (``"image"`` (3, H, W) in ``INPUT.FORMAT``, optional ``"sem_seg"`` (H, W))
    -> normalised images ``(image - pixel_mean) / pixel_std`` padded with 0 to a multiple of
    ``size_divisibility`` (an ``ImageList``) and labels padded with ``ignore_value``
    ((N, H', W') long, or None when the inputs carry none). An input with ``"valid_size"`` (h, w)
    (the mapper's padding to the crop size) has its normalised image set to 0 outside
    ``[:h, :w]``: every padded pixel is 0 after normalisation, as in mmsegmentation.
    """

    def __init__(self, *, pixel_mean: Sequence[float], pixel_std: Sequence[float], ignore_value: int, size_divisibility: int):
        super().__init__()
        self.ignore_value = ignore_value
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) image in ``INPUT.FORMAT`` -> normalised float tensor on the model's device."""
        return (image.to(self.device) - self.pixel_mean) / self.pixel_std

    def _normalize_input(self, x: dict) -> torch.Tensor:
        image = self.normalize(x["image"])
        if "valid_size" in x:
            h, w = x["valid_size"]
            image[:, h:] = 0
            image[:, :, w:] = 0
        return image

    def forward(self, batched_inputs: List[dict], require_targets: bool = False) -> Tuple[ImageList, Optional[torch.Tensor]]:
        """Returns (ImageList of normalised, padded images, padded labels or None); with
        ``require_targets`` every input must carry ``"sem_seg"``."""
        images = ImageList.from_tensors([self._normalize_input(x) for x in batched_inputs], self.size_divisibility)
        if not all("sem_seg" in x for x in batched_inputs):
            if require_targets:
                raise ValueError("a segmentation model in training mode needs 'sem_seg' in every input dict")
            return images, None
        targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
        return images, ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor
