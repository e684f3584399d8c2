"""
segcls: class-level-context semantic segmentation on detectron2.

Importing ``segcls`` registers its datasets (under ``$DETECTRON2_DATASETS``), backbones, heads,
classifiers, losses, regularizers, mappers, evaluators and meta-architectures.
"""
from . import data, evaluation, modeling
from .config import add_segcls_config

__version__ = "0.1.0"
