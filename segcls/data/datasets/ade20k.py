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
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from segcls.utils.visualization import default_palette

from .prepare import Step, apply_label_table, label_lookup_table, label_writer, list_files, process_files
from .sem_seg import register_sem_seg

ADE20K_IGNORE_LABEL = 255
ADE20K_DIRNAME = "ADEChallengeData2016"
# Registered split -> folder, and the official number of images per folder.
ADE20K_SPLITS = {"train": "training", "val": "validation"}
ADE20K_SPLIT_SIZES = {"training": 20210, "validation": 2000}


def ade20k_layout_help(dirname):
    return (
        f"Expected layout: {dirname}/images/<split>/*.jpg, {dirname}/annotations/<split>/*.png (raw labels) and "
        f"{dirname}/annotations_detectron2/<split>/*.png (run datasets/prepare_ade20k_sem_seg.py to write them from "
        "the raw labels; see datasets/README.md)."
    )


def convert_ade20k_label(label, num_classes=len(ADE20K_SEM_SEG_CATEGORIES)):
    """ADE20K raw label (H, W) uint8, 0 = other, 1..K -> train IDs: 0 -> 255 (ignore), k -> k - 1.
    A value above ``num_classes`` (K) raises ValueError listing it, as the other datasets' tables do."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"ADE20K labels must be 2-D single-channel images, got shape {label.shape}")
    table = label_lookup_table({0: ADE20K_IGNORE_LABEL, **{k: k - 1 for k in range(1, num_classes + 1)}})
    return apply_label_table(label, table)


def convert_ade20k_labels(src_dir, dst_dir, progress=None, num_classes=len(ADE20K_SEM_SEG_CATEGORIES)):
    """
    Convert every ``src_dir/*.png`` to ``dst_dir`` with :func:`convert_ade20k_label` (``num_classes`` K).

    Idempotent: files already in ``dst_dir`` are skipped; each file is written atomically, so an
    interrupted run leaves no half-written PNG. Returns the number of files written.
    """
    os.makedirs(dst_dir, exist_ok=True)
    write = label_writer(lambda label: convert_ade20k_label(label, num_classes))
    return process_files(_conversion_jobs(src_dir, dst_dir), write, progress)


def _conversion_jobs(src_dir, dst_dir, layout_help=""):
    return [
        (os.path.join(src_dir, name), os.path.join(dst_dir, name)) for name in list_files(src_dir, ".png", layout_help)
    ]


def ade20k_preparation(root):
    """The steps of ``datasets/prepare_ade20k_sem_seg.py``: ``annotations/<folder>`` ->
    ``annotations_detectron2/<folder>`` with :func:`convert_ade20k_label`, for both folders."""
    base = os.path.join(root, ADE20K_DIRNAME)
    steps = []
    for folder in ADE20K_SPLITS.values():
        src = os.path.join(base, "annotations", folder)
        jobs = _conversion_jobs(src, os.path.join(base, "annotations_detectron2", folder), ade20k_layout_help(base))
        steps.append(Step(folder, "annotations_detectron2", f"'{src}'", jobs, label_writer(convert_ade20k_label)))
    return steps


def register_ade20k_style(name_prefix, root, dirname, splits, metadata):
    """
    Register ``<name_prefix>_<split>`` for each ``split -> folder`` of ``splits`` from an
    ADE20K-style tree ``root/dirname/{images,annotations_detectron2}/<folder>``.
    """
    base = os.path.join(root, dirname)
    for split, folder in splits.items():
        register_sem_seg(
            f"{name_prefix}_{split}",
            os.path.join(base, "images", folder),
            os.path.join(base, "annotations_detectron2", folder),
            metadata,
            layout_help=ade20k_layout_help(base),
        )


def register_ade20k(root):
    """Register ``ade20k_sem_seg_{train,val}``. Colours: segcls's deterministic
    :func:`~segcls.utils.visualization.default_palette` (no library ships mmsegmentation's palette)."""
    register_ade20k_style(
        "ade20k_sem_seg",
        root,
        ADE20K_DIRNAME,
        ADE20K_SPLITS,
        {
            "stuff_classes": list(ADE20K_SEM_SEG_CATEGORIES),
            "stuff_colors": default_palette(len(ADE20K_SEM_SEG_CATEGORIES)).tolist(),
            "ignore_label": ADE20K_IGNORE_LABEL,
            "evaluator_type": "sem_seg",
        },
    )
