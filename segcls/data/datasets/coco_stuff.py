"""
COCO-Stuff (171 classes: 80 things + 91 stuff) in the detectron2/Mask2Former layouts::

    $DETECTRON2_DATASETS/coco/
        # COCO-Stuff-164k
        {train2017,val2017}/*.jpg
        stuffthingmaps/{train2017,val2017}/*.png              # raw: COCO id - 1, 255 = unlabeled
        stuffthingmaps_detectron2/{train2017,val2017}/*.png   # written by datasets/prepare_coco_stuff_164k_sem_seg.py
        # COCO-Stuff-10k (cocostuff-10k-v1.1.zip)
        coco_stuff_10k/
            images/*.jpg  annotations/*.mat  imageLists/{train,test}.txt   # raw: .mat "S" = COCO id, 0 = unlabeled
            images_detectron2/{train,test}/*.jpg        # written by
            annotations_detectron2/{train,test}/*.png   # datasets/prepare_coco_stuff_10k_sem_seg.py

Registered as ``coco_stuff_164k_sem_seg_{train,val}`` and ``coco_stuff_10k_sem_seg_{train,test}``.
Train IDs 0..170 number the 171 used COCO category IDs (1..182 without the 11 unused thing IDs) in
increasing order, as Mask2Former and mmsegmentation do; unlabeled -> 255.
"""
import os

import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from segcls.utils.visualization import default_palette

from .prepare import Step, apply_label_table, copy_file, label_lookup_table, label_writer, list_files, read_split_file
from .sem_seg import register_sem_seg

COCO_STUFF_IGNORE_LABEL = 255
# The 91 stuff categories, COCO ids 92..182 in order.
_STUFF_NAMES = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]  # fmt: skip
_THINGS = [c for c in COCO_CATEGORIES if c["isthing"]]
# COCO category id of each train ID 0..170.
COCO_STUFF_IDS = [c["id"] for c in _THINGS] + list(range(92, 92 + len(_STUFF_NAMES)))
COCO_STUFF_CLASSES = [c["name"] for c in _THINGS] + _STUFF_NAMES


def _colors():
    """detectron2's COCO panoptic colours where the category exists there unmerged, a deterministic
    palette for the other stuff categories."""
    known = {c["id"]: list(c["color"]) for c in COCO_CATEGORIES}
    fallback = default_palette(len(COCO_STUFF_IDS)).tolist()
    return [known.get(cat_id, fallback[i]) for i, cat_id in enumerate(COCO_STUFF_IDS)]


COCO_STUFF_COLORS = _colors()
COCO_DIRNAME = "coco"
COCO_STUFF_10K_DIRNAME = os.path.join(COCO_DIRNAME, "coco_stuff_10k")
COCO_STUFF_164K_SPLITS = {"train": "train2017", "val": "val2017"}
COCO_STUFF_164K_SPLIT_SIZES = {"train2017": 118287, "val2017": 5000}
COCO_STUFF_10K_SPLIT_SIZES = {"train": 9000, "test": 1000}
# Raw value -> train ID. 164k stuffthingmaps PNGs hold COCO id - 1 (255 = unlabeled); the 10k
# .mat files hold the COCO id (0 = unlabeled).
_164K_TO_TRAIN_ID = label_lookup_table(
    {cat_id - 1: i for i, cat_id in enumerate(COCO_STUFF_IDS)} | {255: COCO_STUFF_IGNORE_LABEL}
)
_10K_TO_TRAIN_ID = label_lookup_table({cat_id: i for i, cat_id in enumerate(COCO_STUFF_IDS)} | {0: COCO_STUFF_IGNORE_LABEL})


def coco_stuff_layout_help(root):
    coco = os.path.join(root, COCO_DIRNAME)
    ten_k = os.path.join(root, COCO_STUFF_10K_DIRNAME)
    return (
        f"Expected layout: COCO-Stuff-164k {coco}/<train2017|val2017>/*.jpg with "
        f"{coco}/stuffthingmaps/<split>/*.png and {coco}/stuffthingmaps_detectron2/<split>/*.png (run "
        f"datasets/prepare_coco_stuff_164k_sem_seg.py); COCO-Stuff-10k {ten_k}/<images|annotations|imageLists> "
        f"and {ten_k}/<images_detectron2|annotations_detectron2>/<train|test> (run "
        "datasets/prepare_coco_stuff_10k_sem_seg.py); see datasets/README.md."
    )


def convert_coco_stuff_164k_label(label):
    """A raw COCO-Stuff-164k ``stuffthingmaps`` label (COCO id - 1, 255 = unlabeled) -> train IDs."""
    return apply_label_table(label, _164K_TO_TRAIN_ID)


def convert_coco_stuff_10k_label(label):
    """A raw COCO-Stuff-10k label (the ``S`` array of its .mat file: COCO id, 0 = unlabeled) -> train IDs."""
    return apply_label_table(label, _10K_TO_TRAIN_ID)


def read_coco_stuff_10k_mat(path):
    """The (H, W) ``S`` label array of a COCO-Stuff-10k annotation .mat file (needs scipy)."""
    import scipy.io  # only the 10k preparation needs scipy

    label = np.asarray(scipy.io.loadmat(path)["S"])
    if label.ndim != 2:
        raise ValueError(f"'S' has shape {label.shape}: expected a 2-D label array")
    return label


def coco_stuff_164k_preparation(root):
    """The steps of ``datasets/prepare_coco_stuff_164k_sem_seg.py``: ``coco/stuffthingmaps/<split>``
    -> ``coco/stuffthingmaps_detectron2/<split>`` with :func:`convert_coco_stuff_164k_label`."""
    coco = os.path.join(root, COCO_DIRNAME)
    steps = []
    for folder in COCO_STUFF_164K_SPLIT_SIZES:
        src = os.path.join(coco, "stuffthingmaps", folder)
        jobs = [
            (os.path.join(src, rel), os.path.join(coco, "stuffthingmaps_detectron2", folder, rel))
            for rel in list_files(src, ".png", coco_stuff_layout_help(root))
        ]
        steps.append(
            Step(folder, "stuffthingmaps_detectron2", f"'{src}'", jobs, label_writer(convert_coco_stuff_164k_label))
        )
    return steps


def coco_stuff_10k_preparation(root):
    """The steps of ``datasets/prepare_coco_stuff_10k_sem_seg.py``: for each ``imageLists/<split>.txt``,
    copy ``images/<id>.jpg`` to ``images_detectron2/<split>`` and convert ``annotations/<id>.mat`` to
    ``annotations_detectron2/<split>/<id>.png`` with :func:`convert_coco_stuff_10k_label`."""
    base = os.path.join(root, COCO_STUFF_10K_DIRNAME)
    steps = []
    for split in COCO_STUFF_10K_SPLIT_SIZES:
        split_file = os.path.join(base, "imageLists", f"{split}.txt")
        stems = read_split_file(split_file, coco_stuff_layout_help(root))
        images = [
            (os.path.join(base, "images", f"{s}.jpg"), os.path.join(base, "images_detectron2", split, f"{s}.jpg"))
            for s in stems
        ]
        labels = [
            (os.path.join(base, "annotations", f"{s}.mat"), os.path.join(base, "annotations_detectron2", split, f"{s}.png"))
            for s in stems
        ]
        steps.append(Step(split, "images_detectron2", f"'{split_file}'", images, copy_file))
        steps.append(
            Step(split, "annotations_detectron2", f"'{split_file}'", labels,
                 label_writer(convert_coco_stuff_10k_label, read=read_coco_stuff_10k_mat))
        )  # fmt: skip
    return steps


def register_coco_stuff(root):
    """Register ``coco_stuff_164k_sem_seg_{train,val}`` and ``coco_stuff_10k_sem_seg_{train,test}``."""
    metadata = {
        "stuff_classes": COCO_STUFF_CLASSES,
        "stuff_colors": COCO_STUFF_COLORS,
        "ignore_label": COCO_STUFF_IGNORE_LABEL,
        "evaluator_type": "sem_seg",
    }
    coco = os.path.join(root, COCO_DIRNAME)
    for split, folder in COCO_STUFF_164K_SPLITS.items():
        register_sem_seg(
            f"coco_stuff_164k_sem_seg_{split}",
            os.path.join(coco, folder),
            os.path.join(coco, "stuffthingmaps_detectron2", folder),
            metadata,
            layout_help=coco_stuff_layout_help(root),
        )
    ten_k = os.path.join(root, COCO_STUFF_10K_DIRNAME)
    for split in COCO_STUFF_10K_SPLIT_SIZES:
        register_sem_seg(
            f"coco_stuff_10k_sem_seg_{split}",
            os.path.join(ten_k, "images_detectron2", split),
            os.path.join(ten_k, "annotations_detectron2", split),
            metadata,
            layout_help=coco_stuff_layout_help(root),
        )
