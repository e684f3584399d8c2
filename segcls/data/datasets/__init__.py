"""
Dataset registration. Every dataset segcls knows is registered under ``$DETECTRON2_DATASETS``
(default ``./datasets``) when this package is imported; the expected directory trees are in
``datasets/README.md`` and in each module's docstring.
"""
from .ade20k import register_ade20k
from .cityscapes import register_cityscapes
from .coco_stuff import register_coco_stuff
from .custom import register_custom_datasets
from .pascal_context import register_pascal_context_59
from .synthetic_context import generate_synthetic_context, register_synthetic_context
from .sem_seg import DatasetNotFoundError, check_datasets, get_datasets_root, load_sem_seg, register_sem_seg


def register_all(root):
    """Register every dataset segcls knows under ``root``."""
    register_ade20k(root)
    register_cityscapes(root)
    register_pascal_context_59(root)
    register_coco_stuff(root)
    register_synthetic_context(root)


register_all(get_datasets_root())
