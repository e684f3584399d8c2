"""
The semantic segmentation mapper: one dataset record -> one model input, for training and testing.

Images are read once (detectron2's ``read_image``, which applies EXIF orientation) and augmented
with OpenCV only. Labels are read *unconverted* (``np.asarray(Image.open(f))``): a palette PNG
keeps its indices, which is what the evaluator reads too (detectron2's ``DatasetMapper`` reads
them with ``convert("L")``, turning palette PNGs into brightness values). Every label is checked:
2-D, same size as its image, values in ``[0, K)`` or the ignore label; violations raise
:class:`LabelError` naming the file.

Randomness comes only from the ``rng`` argument (a ``numpy.random.Generator``); the training loader
derives it from (seed, sample position), so augmentations are reproducible and a resumed run
continues exactly where it stopped (see :mod:`segcls.data.build`).
"""
import copy
from typing import List, Optional

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.utils.registry import Registry
from PIL import Image

MAPPER_REGISTRY = Registry("MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers, selected by cfg.INPUT.DATASET_MAPPER_NAME."


class LabelError(ValueError):
    """A label image is malformed (colour, wrong size, out-of-range values); names the file."""


def build_mapper(cfg, is_train):
    return MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, is_train=is_train)


def read_label(path, num_classes, ignore_label, image_shape=None):
    """
    Read a label PNG as stored: (H, W) integer array. Raises :class:`LabelError` if it is not a
    single-channel image, its size differs from ``image_shape`` (H, W), or it holds a value
    ``>= num_classes`` that is not ``ignore_label``.
    """
    with Image.open(path) as im:
        label = np.asarray(im)
    if label.ndim != 2:
        raise LabelError(
            f"label '{path}' has shape {label.shape} (mode {im.mode}): expected a single-channel (H, W) image of "
            f"class indices. Colour (RGB) label images must first be converted to indices."
        )
    if image_shape is not None and label.shape != tuple(image_shape):
        raise LabelError(f"label '{path}' is {label.shape[1]}x{label.shape[0]} (WxH) but its image is "
                         f"{image_shape[1]}x{image_shape[0]}")
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        raise LabelError(
            f"label '{path}' contains values {bad.tolist()[:10]}: expected class indices 0..{num_classes - 1} "
            f"or the ignore label {ignore_label} (MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes})"
        )
    return label.astype(np.int64)


def rescale_size(height, width, base_size, ratio):
    """mmsegmentation's keep-ratio ``Resize``: fit (H, W) into ``base_size`` = (long, short) times
    ``ratio`` (``base_size`` empty: scale (H, W) by ``ratio``). Returns the new (H, W)."""
    if base_size:
        long_side, short_side = base_size[0] * ratio, base_size[1] * ratio
        scale = min(long_side / max(height, width), short_side / min(height, width))
    else:
        scale = ratio
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def random_crop_box(label, crop_size, cat_max_ratio, ignore_label, rng, max_tries=10):
    """
    Pick a crop (y0, x0, h, w) of at most ``crop_size`` = (h, w); with ``cat_max_ratio < 1``
    retry (up to ``max_tries``, like mmsegmentation and detectron2's DeepLab) until the most
    frequent category covers at most ``cat_max_ratio`` of the crop's labelled pixels and more
    than one category is present.
    """
    height, width = label.shape
    ch, cw = min(crop_size[0], height), min(crop_size[1], width)
    for _ in range(max_tries):
        y0 = int(rng.integers(0, height - ch + 1))
        x0 = int(rng.integers(0, width - cw + 1))
        if cat_max_ratio >= 1.0:
            break
        crop = label[y0 : y0 + ch, x0 : x0 + cw]
        _, counts = np.unique(crop[crop != ignore_label], return_counts=True)
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return y0, x0, ch, cw


def photometric_distortion(image, rng):
    """mmsegmentation's ``PhotoMetricDistortion`` on an RGB/BGR uint8 image: random brightness
    (+-32), contrast (x0.5-1.5, before or after the HSV part), saturation (x0.5-1.5) and hue
    (+-18 degrees), each applied with probability 0.5."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast_first and contrast is not None:
        img *= contrast
    img = np.clip(img, 0, 255).astype(np.uint8)
    do_sat, do_hue = rng.random() < 0.5, rng.random() < 0.5
    if do_sat or do_hue:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19) / 2.0) % 180  # OpenCV hue is 0..180
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if not contrast_first and contrast is not None:
        img = np.clip(img.astype(np.float32) * contrast, 0, 255).astype(np.uint8)
    return img


@MAPPER_REGISTRY.register()
class SemSegDatasetMapper:
    """
    Training: random keep-ratio rescale, random crop with the category-area constraint, horizontal
    flip, optional photometric distortion, padding to the crop size (image 0, label ignore).
    Testing: optional keep-ratio resize to ``base_size``; the label (if any) is kept at the
    original size. ``"height"``/``"width"`` are always the original size, so predictions are
    returned at the label's resolution.

    Output dict: ``"image"`` (3, H, W) uint8 tensor in ``image_format``, ``"sem_seg"`` (H, W) long
    tensor (when the record has a label), ``"height"``, ``"width"``, plus the record's fields.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        image_format: str = "RGB",
        num_classes: int,
        ignore_label: int = 255,
        base_size: List[int] = (),
        ratio_range=(0.5, 2.0),
        test_resize: bool = False,
        crop_size: Optional[List[int]] = None,
        cat_max_ratio: float = 1.0,
        flip: bool = True,
        color_aug: bool = False,
    ):
        self.is_train = is_train
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.base_size = list(base_size)
        self.ratio_range = tuple(ratio_range)
        self.test_resize = test_resize
        self.crop_size = list(crop_size) if crop_size else None
        self.cat_max_ratio = cat_max_ratio
        self.flip = flip
        self.color_aug = color_aug

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE != "absolute":
            raise ValueError(f"INPUT.CROP.TYPE={cfg.INPUT.CROP.TYPE!r}: SemSegDatasetMapper crops in pixels ('absolute')")
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise ValueError(f"INPUT.RANDOM_FLIP={cfg.INPUT.RANDOM_FLIP!r}: expected 'horizontal' or 'none'")
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "base_size": cfg.INPUT.BASE_SIZE,
            "ratio_range": cfg.INPUT.RATIO_RANGE,
            "test_resize": cfg.INPUT.TEST_RESIZE,
            "crop_size": cfg.INPUT.CROP.SIZE if cfg.INPUT.CROP.ENABLED else None,
            "cat_max_ratio": cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            "flip": cfg.INPUT.RANDOM_FLIP == "horizontal",
            "color_aug": cfg.INPUT.COLOR_AUG_SSD,
        }

    def __call__(self, dataset_dict, rng: Optional[np.random.Generator] = None):
        if self.is_train and rng is None:
            raise ValueError("SemSegDatasetMapper in training mode needs an rng (numpy.random.Generator)")
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        height, width = image.shape[:2]
        label = None
        if "sem_seg_file_name" in dataset_dict:
            label = read_label(dataset_dict["sem_seg_file_name"], self.num_classes, self.ignore_label, (height, width))
        if self.is_train:
            if label is None:
                raise ValueError(f"training record for '{dataset_dict['file_name']}' has no 'sem_seg_file_name'")
            image, label = self._augment(image, label, rng)
        elif self.test_resize and self.base_size:
            h, w = rescale_size(height, width, self.base_size, 1.0)
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        dataset_dict["height"], dataset_dict["width"] = height, width
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if label is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(np.ascontiguousarray(label))
        return dataset_dict

    def _augment(self, image, label, rng):
        h, w = rescale_size(*label.shape, self.base_size, rng.uniform(*self.ratio_range))
        if (h, w) != label.shape:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)
        if self.crop_size:
            y0, x0, ch, cw = random_crop_box(label, self.crop_size, self.cat_max_ratio, self.ignore_label, rng)
            image, label = image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.color_aug:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        if self.crop_size:
            ph, pw = self.crop_size[0] - image.shape[0], self.crop_size[1] - image.shape[1]
            if ph > 0 or pw > 0:
                image = np.pad(image, ((0, max(ph, 0)), (0, max(pw, 0)), (0, 0)), constant_values=0)
                label = np.pad(label, ((0, max(ph, 0)), (0, max(pw, 0))), constant_values=self.ignore_label)
        return image, label
