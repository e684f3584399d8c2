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


def _record(image, label, image_id, where, layout_help):
    if not os.path.isfile(label):
        raise DatasetNotFoundError(f"{where}image '{image}' has no label file: expected '{label}'. {layout_help}".rstrip())
    return {"file_name": image, "sem_seg_file_name": label, "image_id": image_id}


def _read_split_file(split_file, where, layout_help):
    if not os.path.isfile(split_file):
        raise DatasetNotFoundError(
            f"{where}split file '{split_file}' does not exist. Datasets are looked up under "
            f"${DATASETS_ENV} (now '{get_datasets_root()}'). {layout_help}".rstrip()
        )
    with open(split_file) as f:
        return [line.strip() for line in f if line.strip()]


def load_sem_seg(
    image_dir, label_dir, image_ext=".jpg", label_ext=".png", dataset_name="", layout_help="", split_file=None
):
    """
    Pair every ``image_dir/<stem><image_ext>`` with ``label_dir/<stem><label_ext>``
    (subfolders included, as Cityscapes' ``<city>/`` ones). With ``split_file`` (one stem per
    line, as Pascal VOC's ``ImageSets``), only the listed stems are used, in the file's order.

    Raises:
        DatasetNotFoundError: a folder or the split file is missing (the message names it,
            ``$DETECTRON2_DATASETS`` and the expected layout), a listed image is missing, or an
            image has no label file (the message names both).
    """
    where = f"dataset '{dataset_name}': " if dataset_name else ""
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(
                f"{where}directory '{folder}' does not exist. Datasets are looked up under "
                f"${DATASETS_ENV} (now '{get_datasets_root()}'). {layout_help}".rstrip()
            )
    records = []
    if split_file is not None:
        for stem in _read_split_file(split_file, where, layout_help):
            image = os.path.join(image_dir, stem + image_ext)
            if not os.path.isfile(image):
                raise DatasetNotFoundError(f"{where}image '{image}' listed in '{split_file}' does not exist")
            records.append(_record(image, os.path.join(label_dir, stem + label_ext), stem, where, layout_help))
    else:
        for dirpath, _, filenames in sorted(os.walk(image_dir)):
            rel = os.path.relpath(dirpath, image_dir)
            for name in sorted(f for f in filenames if f.endswith(image_ext)):
                stem = name[: -len(image_ext)]
                label = os.path.normpath(os.path.join(label_dir, rel, stem + label_ext))
                image_id = os.path.normpath(os.path.join(rel, stem))
                records.append(_record(os.path.join(dirpath, name), label, image_id, where, layout_help))
    if not records:
        source = f"split file '{split_file}' lists none" if split_file is not None else f"none under '{image_dir}'"
        raise DatasetNotFoundError(f"{where}no '*{image_ext}' images: {source}")
    return records


def register_sem_seg(
    name, image_dir, label_dir, metadata, image_ext=".jpg", label_ext=".png", layout_help="", split_file=None
):
    """
    Register a semantic segmentation dataset lazily (files are listed when first used) with
    :func:`load_sem_seg`'s arguments. An existing registration of ``name`` (e.g. detectron2's
    builtin ``ade20k_sem_seg_train``) is replaced.

    Args:
        metadata: dict with at least ``stuff_classes`` (K names), ``stuff_colors`` (K RGB
            triples), ``ignore_label`` and ``evaluator_type``; stored in ``MetadataCatalog``
            together with ``image_root`` and ``sem_seg_root``.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name,
        lambda: load_sem_seg(
            image_dir, label_dir, image_ext, label_ext, dataset_name=name, layout_help=layout_help, split_file=split_file
        ),
    )
    MetadataCatalog.get(name).set(image_root=image_dir, sem_seg_root=label_dir, **metadata)


def check_datasets(cfg, names):
    """
    Start-up checks of the datasets ``names`` (e.g. ``DATASETS.TRAIN + DATASETS.TEST``), so that
    a mistake fails before training rather than at the first evaluation: each is registered, its
    metadata's ``stuff_classes`` has ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` names, and its files are
    listed (:func:`load_sem_seg` raises naming an image without its label).
    """
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    for name in dict.fromkeys(names):
        if name not in DatasetCatalog.list():
            raise KeyError(f"dataset '{name}' (in DATASETS.TRAIN/TEST) is not registered; see datasets/README.md")
        classes = MetadataCatalog.get(name).get("stuff_classes", None)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"dataset '{name}' has {len(classes)} classes (its metadata's stuff_classes) but "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}"
            )
        DatasetCatalog.get(name)
