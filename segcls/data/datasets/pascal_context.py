"""
PASCAL-Context with 59 classes (background ignored), in either of two layouts::

    # mmsegmentation's (labels from its tools/dataset_converters/pascal_context.py):
    $DETECTRON2_DATASETS/VOCdevkit/VOC2010/
        JPEGImages/<id>.jpg
        SegmentationClassContext/<id>.png            # 0 = background, 1..59 = classes
        SegmentationClassContext_detectron2/<id>.png # written by datasets/prepare_pascal_context_59_sem_seg.py
        ImageSets/SegmentationContext/{train,val}.txt

    # Mask2Former-ecosystem (pascal_ctx_d2, labels already 0..58 with 255 = ignore):
    $DETECTRON2_DATASETS/pascal_ctx_d2/
        images/{training,validation}/<id>.jpg
        annotations_ctx59/{training,validation}/<id>.png

Registered as ``pascal_context_59_sem_seg_{train,val}`` from the mmsegmentation layout if
``VOCdevkit/VOC2010`` exists, else from ``pascal_ctx_d2`` if that exists, else (nothing there
yet) from the mmsegmentation layout, whose error messages then describe both.

Class order: pinned to mmsegmentation's ``PascalContextDataset59`` (used by the CAC paper's
codebase), which is the order of the PASCAL-Context (Detail API) category IDs,
:data:`PASCAL_CONTEXT_59_DETAIL_IDS`; mmsegmentation's converter writes class ``k`` (1..59) for the
``k``-th smallest of these IDs. Other codebases list the 59 classes in the order of the original
``59_labels`` file (aeroplane, mountain, mouse, track, road, bag, ...), so their train IDs differ.
"""
import os

from segcls.utils.visualization import default_palette

from .prepare import Step, apply_label_table, label_lookup_table, label_writer, read_split_file
from .sem_seg import register_sem_seg

PASCAL_CONTEXT_IGNORE_LABEL = 255
# mmsegmentation's PascalContextDataset59.CLASSES, in order (train IDs 0..58).
PASCAL_CONTEXT_59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table",
    "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]  # fmt: skip
# PASCAL-Context (Detail API) category ID of each class above: increasing, which is what fixes the order.
PASCAL_CONTEXT_59_DETAIL_IDS = [
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34,
    44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189,
    207, 220, 232, 258, 259, 260, 284, 295, 296, 308,
    324, 326, 347, 349, 354, 355, 360, 366, 368, 397,
    415, 416, 420, 424, 427, 440, 445, 454, 458,
]  # fmt: skip
PASCAL_CONTEXT_59_COLORS = default_palette(len(PASCAL_CONTEXT_59_CLASSES)).tolist()
# Official split sizes (images per split list / folder).
PASCAL_CONTEXT_SPLIT_SIZES = {"train": 4996, "val": 5104}
VOC_DIRNAME = os.path.join("VOCdevkit", "VOC2010")
D2_DIRNAME = "pascal_ctx_d2"
D2_FOLDERS = {"train": "training", "val": "validation"}
# mmsegmentation's SegmentationClassContext values -> train IDs: 0 (background) -> 255, k -> k - 1.
_CONTEXT_TO_TRAIN_ID = label_lookup_table(
    {0: PASCAL_CONTEXT_IGNORE_LABEL, **{k: k - 1 for k in range(1, len(PASCAL_CONTEXT_59_CLASSES) + 1)}}
)


def pascal_context_layout_help(root):
    voc, d2 = os.path.join(root, VOC_DIRNAME), os.path.join(root, D2_DIRNAME)
    return (
        f"Expected layout: {voc}/JPEGImages/<id>.jpg, {voc}/SegmentationClassContext/<id>.png, "
        f"{voc}/SegmentationClassContext_detectron2/<id>.png (run datasets/prepare_pascal_context_59_sem_seg.py) and "
        f"{voc}/ImageSets/SegmentationContext/<split>.txt; or {d2}/images/<training|validation>/<id>.jpg with "
        f"{d2}/annotations_ctx59/<training|validation>/<id>.png (see datasets/README.md)."
    )


def convert_pascal_context_59_label(label):
    """mmsegmentation's SegmentationClassContext label (0 = background, 1..59) -> train IDs:
    0 -> 255 (ignore), k -> k - 1. Any other value raises ValueError."""
    return apply_label_table(label, _CONTEXT_TO_TRAIN_ID)


def pascal_context_59_preparation(root):
    """The steps of ``datasets/prepare_pascal_context_59_sem_seg.py`` (mmsegmentation layout):
    ``SegmentationClassContext/<id>.png`` -> ``SegmentationClassContext_detectron2/<id>.png`` for the
    IDs of both split lists."""
    voc = os.path.join(root, VOC_DIRNAME)
    steps = []
    for split in PASCAL_CONTEXT_SPLIT_SIZES:
        split_file = os.path.join(voc, "ImageSets", "SegmentationContext", f"{split}.txt")
        jobs = [
            (
                os.path.join(voc, "SegmentationClassContext", f"{stem}.png"),
                os.path.join(voc, "SegmentationClassContext_detectron2", f"{stem}.png"),
            )
            for stem in read_split_file(split_file, pascal_context_layout_help(root))
        ]
        steps.append(
            Step(split, "SegmentationClassContext_detectron2", f"'{split_file}'", jobs,
                 label_writer(convert_pascal_context_59_label))
        )  # fmt: skip
    return steps


def register_pascal_context_59(root):
    """Register ``pascal_context_59_sem_seg_{train,val}`` from the layout found under ``root``."""
    voc = os.path.join(root, VOC_DIRNAME)
    d2 = os.path.join(root, D2_DIRNAME)
    use_d2 = not os.path.isdir(voc) and os.path.isdir(d2)
    metadata = {
        "stuff_classes": PASCAL_CONTEXT_59_CLASSES,
        "stuff_colors": PASCAL_CONTEXT_59_COLORS,
        "ignore_label": PASCAL_CONTEXT_IGNORE_LABEL,
        "evaluator_type": "sem_seg",
    }
    for split in PASCAL_CONTEXT_SPLIT_SIZES:
        if use_d2:
            folder = D2_FOLDERS[split]
            image_dir = os.path.join(d2, "images", folder)
            label_dir = os.path.join(d2, "annotations_ctx59", folder)
            split_file = None
        else:
            image_dir = os.path.join(voc, "JPEGImages")
            label_dir = os.path.join(voc, "SegmentationClassContext_detectron2")
            split_file = os.path.join(voc, "ImageSets", "SegmentationContext", f"{split}.txt")
        register_sem_seg(
            f"pascal_context_59_sem_seg_{split}",
            image_dir,
            label_dir,
            metadata,
            layout_help=pascal_context_layout_help(root),
            split_file=split_file,
        )
