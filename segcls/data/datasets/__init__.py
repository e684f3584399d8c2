from .ade20k import register_ade20k
from .sem_seg import DatasetNotFoundError, get_datasets_root, load_sem_seg, register_sem_seg


def register_all(root):
    """Register every dataset segcls knows under ``root``."""
    register_ade20k(root)


register_all(get_datasets_root())
