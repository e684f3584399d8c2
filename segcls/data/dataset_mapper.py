"""
The semantic segmentation mapper: one dataset record -> one model input, for training and testing.

Images are read once (detectron2's ``read_image``, which applies EXIF orientation; an unreadable
file raises :class:`ImageReadError` naming it) and augmented with OpenCV only. Labels are read
*unconverted* by :func:`read_label_image`, the one place segcls reads label files (the dataset
preparation scripts use it too): a palette PNG keeps its indices, which is what the evaluator
reads too (detectron2's ``DatasetMapper`` reads them with ``convert("L")``, turning palette PNGs
into brightness values). Every label is checked: 2-D (a colour image is rejected as such), same
size as its image, values in ``[0, K)`` or the ignore label; violations raise :class:`LabelError`
naming the file.

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
    """A label image is unreadable or malformed (colour, wrong size, out-of-range values); names the file."""


class ImageReadError(OSError):
    """An image file cannot be read or decoded (missing, corrupt, truncated); names the file."""


def build_mapper(cfg, is_train):
    return MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, is_train=is_train)


# What PIL raises on a missing, corrupt or truncated file (UnidentifiedImageError is an OSError;
# some broken PNG chunks raise SyntaxError or ValueError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError)
_EXIF_ORIENTATION = 0x0112


def read_image(path, image_format):
    """detectron2's ``read_image`` (EXIF orientation applied, converted to ``image_format``);
    raises :class:`ImageReadError` naming ``path`` if it cannot be read."""
    try:
        return utils.read_image(path, format=image_format)
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read image '{path}': {e}") from e


def read_label_image(path):
    """
    A label image as stored, without conversion: a palette PNG gives its indices, a grayscale or
    16-bit PNG its values. Returns a (H, W) integer array. Raises :class:`LabelError` naming
    ``path`` if the file cannot be read or is not single-channel (e.g. a colour RGB mask).
    This is the one place where segcls reads label files (mapper and preparation scripts).
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            label = np.asarray(im)
    except _DECODE_ERRORS as e:
        raise LabelError(f"cannot read label '{path}': {e}") from e
    if label.dtype == bool:  # 1-bit PNG
        label = label.astype(np.uint8)
    if not np.issubdtype(label.dtype, np.integer):
        raise LabelError(f"label '{path}' holds {label.dtype} values (mode {mode}): expected integer class indices")
    if label.ndim != 2:
        raise LabelError(
            f"label '{path}' is a colour image (mode {mode}, shape {label.shape}): expected a single-channel (H, W) "
            "image of class indices (PNG mode L, P or I;16). Colour (RGB) label images must first be converted to "
            "class indices."
        )
    return label


def present_values(label):
    """Sorted distinct values of an integer array (bincount for 8/16-bit labels: much faster than unique)."""
    if label.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(label.ravel()))
    return np.unique(label)


def exif_orientation(path):
    """The EXIF orientation tag of the image at ``path`` (1 = upright, also if unreadable)."""
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS:
        return 1


def read_label(path, num_classes, ignore_value, image_shape=None, image_path=None):
    """
    Read a label PNG as stored (:func:`read_label_image`): (H, W) integer array, in its stored
    dtype (widened if needed to hold ``ignore_value``). Raises :class:`LabelError` if it is not a
    single-channel image, its size differs from ``image_shape`` (H, W) (the size of the image at
    ``image_path`` after its EXIF orientation is applied; the message says so when the image has
    one), or it holds a value outside ``[0, num_classes)`` that is not ``ignore_value``.
    """
    label = read_label_image(path)
    if image_shape is not None and label.shape != tuple(image_shape):
        orientation = exif_orientation(image_path) if image_path else 1
        exif = (
            f" after applying its EXIF orientation {orientation}, as detectron2's read_image does (labels must "
            "match the image as displayed; remove the tag if the label was drawn on the stored pixels)"
            if orientation != 1
            else ""
        )
        raise LabelError(f"label '{path}' is {label.shape[1]}x{label.shape[0]} (WxH) but its image is "
                         f"{image_shape[1]}x{image_shape[0]}{exif}")
    values = present_values(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_value)]
    if bad.size:
        raise LabelError(
            f"label '{path}' contains values {bad.tolist()[:10]}: expected class indices 0..{num_classes - 1} "
            f"or the ignore value {ignore_value} (MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes})"
        )
    if np.iinfo(label.dtype).max < ignore_value:
        label = label.astype(np.int32)
    return label


def rescale_size(height, width, base_size, ratio):
    """mmsegmentation's keep-ratio ``Resize`` with ``ratio_range``: the scale ``int(base_size * ratio)``
    (a (long, short) pair, in either order) is fitted, as ``mmcv.imrescale`` does, so that the long
    side is at most its long and the short side at most its short value (``base_size`` empty:
    scale (H, W) by ``ratio``). Returns the new (H, W)."""
    if base_size:
        long_side, short_side = (int(s * ratio) for s in (max(base_size), min(base_size)))
        scale = min(long_side / max(height, width), short_side / min(height, width))
    else:
        scale = ratio
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def _category_counts(crop, ignore_value):
    """Pixel counts of the categories present in ``crop`` (a non-negative integer array), ignore excluded."""
    counts = np.bincount(crop.ravel())
    if ignore_value < len(counts):
        counts[ignore_value] = 0
    return counts[counts > 0]


def random_crop_box(label, crop_size, cat_max_ratio, ignore_value, rng, max_tries=10):
    """
    Pick a crop (y0, x0, h, w) of at most ``crop_size`` = (h, w), as mmsegmentation's
    ``RandomCrop``: with ``cat_max_ratio < 1`` a crop is accepted when more than one category is
    present and the most frequent one covers less than ``cat_max_ratio`` of the crop's labelled
    pixels; up to ``max_tries`` crops are checked, each rejected one replaced by a new draw, so
    after ``max_tries`` rejections the result is an (``max_tries`` + 1)-th, unchecked draw. With a
    fraction ``p`` of acceptable positions the result is acceptable with probability
    ``1 - (1 - p) ** (max_tries + 1)``.
    """
    height, width = label.shape
    ch, cw = min(crop_size[0], height), min(crop_size[1], width)

    def draw():
        return int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))

    y0, x0 = draw()
    if cat_max_ratio < 1.0:
        for _ in range(max_tries):
            counts = _category_counts(label[y0 : y0 + ch, x0 : x0 + cw], ignore_value)
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, x0 = draw()
    return y0, x0, ch, cw


def _scale_shift(image, alpha=1.0, beta=0.0):
    """``clip(image * alpha + beta)`` back to uint8 (mmsegmentation's ``PhotoMetricDistortion.convert``)."""
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image, rng, bgr=False):
    """
    mmsegmentation's ``PhotoMetricDistortion`` on a uint8 (H, W, 3) image (RGB, or BGR if ``bgr``),
    each step with probability 0.5: brightness ``+U(-32, 32)``; contrast ``xU(0.5, 1.5)``, before
    or after the HSV steps (probability 0.5 each); saturation ``xU(0.5, 1.5)``; hue ``+randint(-18, 18)``
    in OpenCV's 0..179 hue units. Each step clips to uint8, as mmsegmentation does.
    """
    to_hsv, from_hsv = (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR) if bgr else (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)

    def contrast(img):
        return _scale_shift(img, alpha=rng.uniform(0.5, 1.5)) if rng.random() < 0.5 else img

    if rng.random() < 0.5:
        image = _scale_shift(image, beta=rng.uniform(-32, 32))
    contrast_first = rng.random() < 0.5
    if contrast_first:
        image = contrast(image)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, to_hsv)
        hsv[..., 1] = _scale_shift(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        image = cv2.cvtColor(hsv, from_hsv)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, to_hsv)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(-18, 18))) % 180
        image = cv2.cvtColor(hsv, from_hsv)
    if not contrast_first:
        image = contrast(image)
    return image


@MAPPER_REGISTRY.register()
class SemSegDatasetMapper:
    """
    Training: random keep-ratio rescale, random crop with the category-area constraint, horizontal
    flip, optional photometric distortion, padding to the crop size (label: the ignore value;
    image: any value, with ``"valid_size"`` = (h, w) of the unpadded image, outside of which
    :class:`~segcls.modeling.meta_arch.preprocess.SemSegPreprocessor` sets the *normalised* image
    to 0, as mmsegmentation's ``SegDataPreProcessor`` pads after normalising).
    Testing: optional keep-ratio resize to ``base_size``; the label (if any) is kept at the
    original size. ``"height"``/``"width"`` are always the original size, so predictions are
    returned at the label's resolution.

    Output dict: ``"image"`` (3, H, W) uint8 tensor in ``image_format``, ``"sem_seg"`` (H, W) long
    tensor (when the record has a label), ``"height"``, ``"width"``, ``"valid_size"`` (training,
    when padded), plus the record's fields.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        image_format: str = "RGB",
        num_classes: int,
        ignore_value: int = 255,
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
        self.ignore_value = ignore_value
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
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
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
        image = read_image(dataset_dict["file_name"], self.image_format)
        height, width = image.shape[:2]
        label = None
        if "sem_seg_file_name" in dataset_dict:
            label = read_label(
                dataset_dict["sem_seg_file_name"], self.num_classes, self.ignore_value, (height, width),
                image_path=dataset_dict["file_name"],
            )
        if self.is_train:
            if label is None:
                raise ValueError(f"training record for '{dataset_dict['file_name']}' has no 'sem_seg_file_name'")
            image, label, valid_size = self._augment(image, label, rng)
            if valid_size != image.shape[:2]:
                dataset_dict["valid_size"] = valid_size
            dataset_dict["height"], dataset_dict["width"] = height, width
            dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        else:
            dataset_dict.update(self.test_input(image))
        if label is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(label.astype(np.int64))
        return dataset_dict

    def test_input(self, image: np.ndarray) -> dict:
        """The test-time model input of a decoded (H, W, 3) uint8 image in ``image_format``: the
        optional keep-ratio resize to ``base_size`` (``INPUT.TEST_RESIZE``); ``"height"``/``"width"``
        the original size. Used for dataset records and for in-memory images (video frames)."""
        height, width = image.shape[:2]
        if self.test_resize and self.base_size:
            h, w = rescale_size(height, width, self.base_size, 1.0)
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return {
            "height": height,
            "width": width,
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
        }

    def _augment(self, image, label, rng):
        h, w = rescale_size(*label.shape, self.base_size, rng.uniform(*self.ratio_range))
        if (h, w) != label.shape:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
        if self.crop_size:
            y0, x0, ch, cw = random_crop_box(label, self.crop_size, self.cat_max_ratio, self.ignore_value, rng)
            image, label = image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.color_aug:
            image = photometric_distortion(np.ascontiguousarray(image), rng, bgr=self.image_format == "BGR")
        valid_size = image.shape[:2]
        if self.crop_size:
            ph, pw = self.crop_size[0] - image.shape[0], self.crop_size[1] - image.shape[1]
            if ph > 0 or pw > 0:
                image = np.pad(image, ((0, max(ph, 0)), (0, max(pw, 0)), (0, 0)), constant_values=0)
                label = np.pad(label, ((0, max(ph, 0)), (0, max(pw, 0))), constant_values=self.ignore_value)
        return image, label, valid_size
