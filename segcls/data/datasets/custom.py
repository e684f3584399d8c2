"""
Datasets declared in the config (``DATASETS.CUSTOM``), registered in every process from the
config itself, so that they work with ``tools/train_net.py`` and multi-process runs without any
code (a dataset registered in a script's ``if __name__ == "__main__":`` block does not exist in
the processes ``--num-gpus`` spawns). Each entry is a dict (keys below); the dataset is an image
folder and a label folder paired by file stem, as :func:`~segcls.data.datasets.register_sem_seg`
reads them (see datasets/README.md, "Your own dataset")::

    DATASETS:
      CUSTOM:
        - {NAME: my_train, IMAGE_DIR: /data/my/images/train, LABEL_DIR: /data/my/labels/train,
           CLASSES: [road, car, person]}
      TRAIN: (my_train,)
"""
from .sem_seg import register_sem_seg

# Key -> default (None = required).
CUSTOM_DATASET_KEYS = {
    "NAME": None,  # the name used in DATASETS.TRAIN / DATASETS.TEST
    "IMAGE_DIR": None,  # folder of images (subfolders included)
    "LABEL_DIR": None,  # folder of single-channel label PNGs with train IDs 0..K-1 and IGNORE_LABEL
    "CLASSES": None,  # the K class names, in train-ID order
    "IGNORE_LABEL": 255,
    "IMAGE_EXT": ".jpg",
    "LABEL_EXT": ".png",
    "EVALUATOR_TYPE": "sem_seg",
}


def register_custom_datasets(cfg):
    """Register every ``cfg.DATASETS.CUSTOM`` entry (replacing an earlier registration of its
    name). Raises ``ValueError`` naming the entry and key of a malformed entry."""
    for i, entry in enumerate(cfg.DATASETS.CUSTOM):
        where = f"DATASETS.CUSTOM[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a dict with keys {sorted(CUSTOM_DATASET_KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(CUSTOM_DATASET_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; expected keys among {sorted(CUSTOM_DATASET_KEYS)}")
        values = {k: entry.get(k, default) for k, default in CUSTOM_DATASET_KEYS.items()}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise ValueError(f"{where}: missing required keys {missing}")
        classes = values["CLASSES"]
        if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{where}.CLASSES: expected a non-empty list of class names, got {classes!r}")
        register_sem_seg(
            values["NAME"],
            values["IMAGE_DIR"],
            values["LABEL_DIR"],
            {
                "stuff_classes": list(classes),
                "ignore_label": int(values["IGNORE_LABEL"]),
                "evaluator_type": values["EVALUATOR_TYPE"],
            },
            image_ext=values["IMAGE_EXT"],
            label_ext=values["LABEL_EXT"],
        )
