"""
Generic loading and registration of "image folder + label folder" semantic segmentation datasets.

Every dataset segcls registers goes through :func:`register_sem_seg`, so the checks below (missing
folders, images without labels) behave the same everywhere. Records follow detectron2's
convention: ``{"file_name", "sem_seg_file_name", "image_id"}`` (the mapper adds height/width); label PNGs
hold train IDs ``0..K-1`` and the dataset's ``ignore_label`` (255).
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

DATASETS_ENV = "DETECTRON2_DATASETS"


def get_datasets_root():
    """The datasets root: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return os.path.expanduser(os.environ.get(DATASETS_ENV, "datasets"))


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset's files are missing; the message says where they were expected."""


def _list_files(folder, ext):
    return sorted(f for f in os.listdir(folder) if f.endswith(ext))


def load_sem_seg(image_dir, label_dir, image_ext=".jpg", label_ext=".png", dataset_name="", layout_help=""):
    """
    Pair every ``image_dir/<stem><image_ext>`` with ``label_dir/<stem><label_ext>``
    (subfolders included, as Cityscapes' ``<city>/`` ones).

    Raises:
        DatasetNotFoundError: a folder is missing (the message names it, ``$DETECTRON2_DATASETS``
            and the expected layout) or an image has no label file (the message names both).
    """
    where = f"dataset '{dataset_name}': " if dataset_name else ""
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(
                f"{where}directory '{folder}' does not exist. Datasets are looked up under "
                f"${DATASETS_ENV} (now '{get_datasets_root()}'). {layout_help}".rstrip()
            )
    records = []
    for dirpath, _, filenames in sorted(os.walk(image_dir)):
        rel = os.path.relpath(dirpath, image_dir)
        for name in sorted(f for f in filenames if f.endswith(image_ext)):
            stem = name[: -len(image_ext)]
            label = os.path.normpath(os.path.join(label_dir, rel, stem + label_ext))
            if not os.path.isfile(label):
                raise DatasetNotFoundError(
                    f"{where}image '{os.path.join(dirpath, name)}' has no label file: expected '{label}'"
                )
            records.append(
                {
                    "file_name": os.path.join(dirpath, name),
                    "sem_seg_file_name": label,
                    "image_id": os.path.normpath(os.path.join(rel, stem)),
                }
            )
    if not records:
        raise DatasetNotFoundError(f"{where}no '*{image_ext}' images found under '{image_dir}'")
    return records


def register_sem_seg(name, image_dir, label_dir, metadata, image_ext=".jpg", label_ext=".png", layout_help=""):
    """
    Register a semantic segmentation dataset lazily (files are listed when first used).

    Args:
        metadata: dict with at least ``stuff_classes`` (K names), ``stuff_colors`` (K RGB
            triples), ``ignore_label`` and ``evaluator_type``; stored in ``MetadataCatalog``
            together with ``image_root`` and ``sem_seg_root``.
    """
    DatasetCatalog.register(
        name,
        lambda: load_sem_seg(image_dir, label_dir, image_ext, label_ext, dataset_name=name, layout_help=layout_help),
    )
    MetadataCatalog.get(name).set(image_root=image_dir, sem_seg_root=label_dir, **metadata)
