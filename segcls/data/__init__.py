"""Datasets, mappers and loaders. Importing this package registers segcls's datasets under
``$DETECTRON2_DATASETS`` (default ``./datasets``)."""
from . import datasets
from .build import ResumableTrainingSampler, build_test_loader, build_train_loader
from .dataset_mapper import MAPPER_REGISTRY, ImageReadError, LabelError, SemSegDatasetMapper, build_mapper
