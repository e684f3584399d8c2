"""
The inference modes shared by segcls's meta-architectures (whole image, sliding window,
multi-scale + flip test-time augmentation), written once: :class:`SemSegInference` runs them
on any ``logits_fn`` (normalised, padded (N, 3, H, W) images -> (N, K, h, w) logits).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ..layers import resize

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InferenceOptions:
    """
    How a meta-architecture predicts at test time (config: ``TEST.MODE``, ``TEST.CROP_SIZE``,
    ``TEST.STRIDE``, ``TEST.AUG.*``):

    - ``mode``: ``"whole"`` (the whole image at once; the images of a batch are padded together)
      or ``"slide"`` (mmsegmentation's ``mode='slide'``: windows of ``crop_size`` (height, width)
      every ``stride`` pixels, overlapping logits summed and divided by the per-pixel window count),
      ``slide_batch`` windows per forward (``TEST.SLIDE_BATCH``);
    - ``tta_scales``: multi-scale test-time augmentation factors (empty = none), with
      ``tta_flip`` also the flipped images; the softmax probabilities are averaged.
    """

    mode: str = "whole"
    crop_size: Tuple[int, int] = (512, 512)
    stride: Tuple[int, int] = (341, 341)
    tta_scales: Tuple[float, ...] = ()
    tta_flip: bool = False
    slide_batch: int = 1

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
        if self.slide_batch < 1:
            raise ValueError(f"TEST.SLIDE_BATCH must be >= 1 (windows per forward), got {self.slide_batch}")
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
            slide_batch=cfg.TEST.SLIDE_BATCH,
        )


def window_spans(length: int, crop: int, stride: int) -> List[Tuple[int, int]]:
    """The (start, end) spans of mmsegmentation's sliding windows along one axis of ``length``
    pixels: starts ``0, stride, 2 * stride, ...``, the last span moved back to end at ``length``,
    each ``min(crop, length)`` long."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, length)
        spans.append((max(end - crop, 0), end))
    return spans


def _coverage(spans: List[Tuple[int, int]], length: int, device) -> torch.Tensor:
    """(length,) float32: how many of ``spans`` cover each position."""
    count = torch.zeros(length + 1, dtype=torch.float32, device=device)
    for start, end in spans:
        count[start] += 1
        count[end] -= 1
    return count.cumsum(0)[:length]


class SemSegInference:
    """
    Test-time prediction with the :class:`InferenceOptions`. ``logits_fn`` maps normalised images
    (N, 3, H, W), padded to a multiple of ``size_divisibility``, to (N, K, h, w) logits at the
    model's output resolution; logits are resized bilinearly with ``align_corners``.
    """

    def __init__(self, options: InferenceOptions, *, size_divisibility: int, align_corners: bool = False):
        self.options = options
        self.size_divisibility = size_divisibility
        self.align_corners = align_corners

    def __call__(self, logits_fn: LogitsFn, images: List[torch.Tensor], batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        """
        ``[{"sem_seg": (K, height, width)}]``: per normalised (3, H_i, W_i) image, the scores of
        :meth:`whole` (all images in one padded batch), :meth:`slide` or, with test-time
        augmentation, :meth:`augmented`, resized (bilinear) to the input's ``"height"``/``"width"``
        (default the image size).
        """
        if self.options.tta_scales:
            scores = [self.augmented(logits_fn, image) for image in images]
        elif self.options.mode == "whole":
            scores = self.whole(logits_fn, images)
        else:
            scores = [self.slide(logits_fn, image) for image in images]
        results = []
        for score, inp in zip(scores, batched_inputs):
            size = tuple(score.shape[-2:])
            out_size = (inp.get("height", size[0]), inp.get("width", size[1]))
            # detectron2's resize to the requested size; skipped (a full-resolution copy) when it is the same
            results.append({"sem_seg": score if out_size == size else sem_seg_postprocess(score, size, *out_size)})
        return results

    def whole(self, logits_fn: LogitsFn, images: List[torch.Tensor]) -> List[torch.Tensor]:
        """Normalised (3, H_i, W_i) images -> (K, H_i, W_i) logits, predicted as one batch padded to
        ``size_divisibility`` and resized (bilinear) to the padded size before cropping."""
        batch = ImageList.from_tensors(images, self.size_divisibility)
        logits = resize(logits_fn(batch.tensor), batch.tensor.shape[-2:], self.align_corners)
        return [logit[:, :h, :w] for logit, (h, w) in zip(logits, batch.image_sizes)]

    def predict_image(self, logits_fn: LogitsFn, image: torch.Tensor) -> torch.Tensor:
        """(K, H, W) logits of one normalised (3, H, W) image in the configured mode."""
        if self.options.mode == "slide":
            return self.slide(logits_fn, image)
        return self.whole(logits_fn, [image])[0]

    def slide(self, logits_fn: LogitsFn, image: torch.Tensor) -> torch.Tensor:
        """
        mmsegmentation's ``mode='slide'`` on one normalised (3, H, W) image: window rows start at
        ``0, stride, 2 * stride, ...`` with the last one moved back to end at the border (columns
        alike; an image smaller than the window is one window, see :func:`window_spans`); the
        windows' logits come from :meth:`whole`, ``slide_batch`` windows per call (all windows of
        an image have the same size); overlapping logits are summed (at least float32) and divided by the
        number of windows covering each pixel (the product of the row and column counts, no
        full-resolution count buffer). Returns (K, H, W) float32 (float64 for float64 logits).
        """
        height, width = image.shape[-2:]
        (crop_h, crop_w), (stride_h, stride_w) = self.options.crop_size, self.options.stride
        rows, cols = window_spans(height, crop_h, stride_h), window_spans(width, crop_w, stride_w)
        windows = [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]
        total = None
        for start in range(0, len(windows), self.options.slide_batch):
            chunk = windows[start : start + self.options.slide_batch]
            logits = self.whole(logits_fn, [image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            if total is None:
                total = image.new_zeros((logits[0].shape[0], height, width), dtype=torch.promote_types(logits[0].dtype, torch.float32))
            for (y1, y2, x1, x2), logit in zip(chunk, logits):
                total[:, y1:y2, x1:x2] += logit
        row_count = _coverage(rows, height, image.device)
        col_count = _coverage(cols, width, image.device)
        return total / (row_count[:, None] * col_count[None, :])

    def augmented(self, logits_fn: LogitsFn, image: torch.Tensor) -> torch.Tensor:
        """
        Multi-scale (+ flip) test-time augmentation of one normalised (3, H, W) image
        (mmsegmentation's ``aug_test``): for each of ``tta_scales`` the image is resized (bilinear)
        to ``int(H * scale + 0.5)`` x ``int(W * scale + 0.5)`` and, with ``tta_flip``, also flipped;
        each version is predicted with :meth:`predict_image` and its softmax probabilities, flipped
        back and resized to (H, W), are averaged. Returns (K, H, W) probabilities.
        """
        height, width = image.shape[-2:]
        total, n = 0.0, 0
        for scale in self.options.tta_scales:
            size = (max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1))
            scaled = resize(image[None], size, self.align_corners)[0]
            for flip in (False, True) if self.options.tta_flip else (False,):
                logits = self.predict_image(logits_fn, scaled.flip(-1) if flip else scaled)
                logits = logits.flip(-1) if flip else logits
                total = total + resize(logits[None], (height, width), self.align_corners)[0].softmax(dim=0)
                n += 1
        return total / n
