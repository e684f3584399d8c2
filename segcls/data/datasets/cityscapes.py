"""
Cityscapes (fine annotations, 19 evaluated classes) in the detectron2 layout::

    $DETECTRON2_DATASETS/cityscapes/
        leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       # official label IDs
        gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  # written by
                                                   # datasets/prepare_cityscapes_sem_seg.py

Registered as ``cityscapes_fine_sem_seg_train`` / ``cityscapes_fine_sem_seg_val`` (replacing
detectron2's builtin entries of the same names, which read the raw label IDs). Class names,
colours and the label ID -> train ID table come from ``cityscapesscripts`` (the official
package): train IDs 0..18, everything else (``ignoreInEval`` classes) -> 255. The evaluator type
``cityscapes_sem_seg`` runs detectron2's ``SemSegEvaluator`` and, if
``TEST.CITYSCAPES_OFFICIAL_EVAL``, the official cityscapesscripts evaluation (see
:mod:`segcls.evaluation.cityscapes`), which reads ``metadata.gt_dir``.
"""
import os

from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

from .prepare import Step, apply_label_table, label_lookup_table, label_writer, list_files
from .sem_seg import register_sem_seg

CITYSCAPES_IGNORE_LABEL = 255
CITYSCAPES_DIRNAME = "cityscapes"
CITYSCAPES_SPLIT_SIZES = {"train": 2975, "val": 500}
_TRAIN_LABELS = sorted((label for label in CITYSCAPES_LABELS if 0 <= label.trainId < 255), key=lambda x: x.trainId)
CITYSCAPES_CLASSES = [label.name for label in _TRAIN_LABELS]
CITYSCAPES_COLORS = [list(label.color) for label in _TRAIN_LABELS]
# Label ID (as stored in *_gtFine_labelIds.png) -> train ID; IDs cityscapesscripts does not know are errors.
CITYSCAPES_ID_TO_TRAIN_ID = label_lookup_table(
    {
        label.id: label.trainId if 0 <= label.trainId < 255 else CITYSCAPES_IGNORE_LABEL
        for label in CITYSCAPES_LABELS
        if label.id >= 0
    }
)
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"


def cityscapes_layout_help(base):
    return (
        f"Expected layout: {base}/leftImg8bit/<split>/<city>/*{IMAGE_SUFFIX} and "
        f"{base}/gtFine/<split>/<city>/*{LABEL_ID_SUFFIX} plus *{TRAIN_ID_SUFFIX} (run "
        "datasets/prepare_cityscapes_sem_seg.py to write them; see datasets/README.md)."
    )


def cityscapes_train_ids(label_ids):
    """Cityscapes label IDs (H, W) -> train IDs (uint8, 255 = ignore) through cityscapesscripts' table."""
    return apply_label_table(label_ids, CITYSCAPES_ID_TO_TRAIN_ID)


def cityscapes_preparation(root):
    """The steps of ``datasets/prepare_cityscapes_sem_seg.py``: every ``*_gtFine_labelIds.png`` of
    ``gtFine/{train,val}`` -> ``*_gtFine_labelTrainIds.png`` next to it."""
    base = os.path.join(root, CITYSCAPES_DIRNAME)
    steps = []
    for split in CITYSCAPES_SPLIT_SIZES:
        folder = os.path.join(base, "gtFine", split)
        jobs = [
            (os.path.join(folder, rel), os.path.join(folder, rel[: -len(LABEL_ID_SUFFIX)] + TRAIN_ID_SUFFIX))
            for rel in list_files(folder, LABEL_ID_SUFFIX, cityscapes_layout_help(base))
        ]
        steps.append(Step(split, f"*{TRAIN_ID_SUFFIX}", f"'{folder}'", jobs, label_writer(cityscapes_train_ids)))
    return steps


def register_cityscapes(root):
    """Register ``cityscapes_fine_sem_seg_{train,val}`` under ``root/cityscapes``."""
    base = os.path.join(root, CITYSCAPES_DIRNAME)
    for split in CITYSCAPES_SPLIT_SIZES:
        gt_dir = os.path.join(base, "gtFine", split)
        register_sem_seg(
            f"cityscapes_fine_sem_seg_{split}",
            os.path.join(base, "leftImg8bit", split),
            gt_dir,
            {
                "stuff_classes": CITYSCAPES_CLASSES,
                "stuff_colors": CITYSCAPES_COLORS,
                "ignore_label": CITYSCAPES_IGNORE_LABEL,
                "evaluator_type": "cityscapes_sem_seg",
                "gt_dir": gt_dir,
            },
            image_ext=IMAGE_SUFFIX,
            label_ext=TRAIN_ID_SUFFIX,
            layout_help=cityscapes_layout_help(base),
        )
