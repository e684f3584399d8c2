"""Importing this package registers segcls's backbones, heads, classifiers, losses,
regularizers and meta-architectures in their registries."""
from . import backbone, classifiers, csfrn, heads, losses, meta_arch, regularizers
from .registry import (
    CLASSIFIER_REGISTRY,
    DECODE_HEAD_REGISTRY,
    PIXEL_LOSS_REGISTRY,
    REGULARIZER_REGISTRY,
    build_classifier,
    build_decode_head,
    build_pixel_losses,
    build_regularizers,
)
