"""
ADE20K (SceneParsing, 150 classes) in the detectron2 layout::

    $DETECTRON2_DATASETS/ADEChallengeData2016/
        images/{training,validation}/*.jpg
        annotations/{training,validation}/*.png            # 0 = other (ignored), 1..150
        annotations_detectron2/{training,validation}/*.png # written by datasets/prepare_ade20k_sem_seg.py

Registered as ``ade20k_sem_seg_train`` / ``ade20k_sem_seg_val`` (replacing detectron2's builtin
entries of the same name, which have no input checks). The embedded synthetic benchmark uses the
same layout and the same functions (:func:`register_ade20k_style`, :func:`convert_ade20k_labels`).
"""
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from PIL import Image

from segcls.utils.io import atomic_save_image
from .sem_seg import register_sem_seg

ADE20K_IGNORE_LABEL = 255


def ade20k_layout_help(dirname):
    return (
        f"Expected layout: {dirname}/images/<split>/*.jpg and {dirname}/annotations_detectron2/<split>/*.png "
        "(run datasets/prepare_ade20k_sem_seg.py to write annotations_detectron2; see datasets/README.md)."
    )


def convert_ade20k_label(label):
    """ADE20K raw label (H, W) uint8, 0 = other, 1..K -> train IDs: 0 -> 255 (ignore), k -> k - 1."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"ADE20K labels must be 2-D single-channel images, got shape {label.shape}")
    return (label.astype(np.int16) - 1).astype(np.uint8)  # 0 - 1 wraps to 255


def convert_ade20k_labels(src_dir, dst_dir, progress=None):
    """
    Convert every ``src_dir/*.png`` to ``dst_dir`` with :func:`convert_ade20k_label`.

    Idempotent: files already in ``dst_dir`` are skipped; each file is written atomically, so an
    interrupted run leaves no half-written PNG. Returns the number of files written.
    """
    os.makedirs(dst_dir, exist_ok=True)
    names = sorted(f for f in os.listdir(src_dir) if f.endswith(".png"))
    written = 0
    for i, name in enumerate(names):
        dst = os.path.join(dst_dir, name)
        if not os.path.exists(dst):
            src = os.path.join(src_dir, name)
            with Image.open(src) as im:
                atomic_save_image(convert_ade20k_label(im), dst)
            written += 1
        if progress is not None:
            progress(i + 1, len(names))
    return written


def register_ade20k_style(name_prefix, root, dirname, splits, metadata):
    """
    Register ``<name_prefix>_<split>`` for each ``split -> folder`` of ``splits`` from an
    ADE20K-style tree ``root/dirname/{images,annotations_detectron2}/<folder>``.
    """
    base = os.path.join(root, dirname)
    for split, folder in splits.items():
        name = f"{name_prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_sem_seg(
            name,
            os.path.join(base, "images", folder),
            os.path.join(base, "annotations_detectron2", folder),
            metadata,
            layout_help=ade20k_layout_help(base),
        )


def register_ade20k(root):
    register_ade20k_style(
        "ade20k_sem_seg",
        root,
        "ADEChallengeData2016",
        {"train": "training", "val": "validation"},
        {
            "stuff_classes": list(ADE20K_SEM_SEG_CATEGORIES),
            "ignore_label": ADE20K_IGNORE_LABEL,
            "evaluator_type": "sem_seg",
        },
    )
