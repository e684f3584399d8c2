"""
The CAR paper's analysis figures, computed for a trained model on a dataset split:

- Fig. 4, class-dependency map: dot-product similarity ``mu mu^T`` of the class centers (Eq. 1) of
  the regularized feature, accumulated over a whole split (:func:`split_class_centers`,
  :func:`class_dependency`);
- Fig. 5, pixel-relation map: dot-product similarity of one pixel's feature to every pixel's
  (:func:`pixel_relation`).

The feature and its labels are those CAR sees in training (``MODEL.CAR.FEATURE_KEYS[0]``, the same
pooling, the same label-resize rule; see :meth:`CARRegularizer.prepare`), also for a baseline
model trained without CAR (then "reg_feature" falls back to "pixel_feature" if the head has no
projection), so that maps with and without CAR compare like for like.
Used by ``tools/car_class_dependency.py`` and ``tools/car_pixel_relation.py``.
"""
import math
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from ..data import build_mapper
from ..engine.checkpoint import SegclsCheckpointer
from ..modeling.regularizers.car import CARRegularizer, resize_labels


def load_model(cfg) -> torch.nn.Module:
    """The model of ``cfg`` in eval mode, with ``cfg.MODEL.WEIGHTS`` loaded (random init if empty;
    a trained model: every tensor must come from the file unless ``MODEL.WEIGHTS_ALLOW_PARTIAL``)."""
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        SegclsCheckpointer(model, allow_partial=cfg.MODEL.WEIGHTS_ALLOW_PARTIAL, complete=True).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def car_view(cfg) -> CARRegularizer:
    """A :class:`CARRegularizer` configured from ``cfg.MODEL.CAR`` (whether or not the model trains
    with CAR): it selects the feature and prepares it with its labels."""
    return CARRegularizer(cfg, 0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)


def dataset_inputs(cfg, dataset_name: str, indices: Optional[Iterable[int]] = None) -> Iterable[dict]:
    """Model inputs (the test mapper's output) of the records of ``dataset_name`` (all, or ``indices``)."""
    records = DatasetCatalog.get(dataset_name)
    mapper = build_mapper(cfg, is_train=False)
    for i in range(len(records)) if indices is None else indices:
        if not 0 <= i < len(records):
            raise IndexError(f"image index {i} out of range: dataset '{dataset_name}' has {len(records)} images")
        yield mapper(records[i])


@torch.no_grad()
def head_outputs(model, inputs: List[dict]) -> Tuple[Dict[str, torch.Tensor], object, Optional[torch.Tensor]]:
    """
    Run the model (eval mode) up to its head and classifier. Returns (outputs, images, labels):
    the merged head + classifier outputs on the padded batch, detectron2's ``ImageList`` and the
    labels (N, H, W) padded like the images (None without ``"sem_seg"``). A label of another size
    than its (test-resized) image is first resized to it by CAR's label-resize rule.
    """
    inputs = [dict(x) for x in inputs]
    for x in inputs:
        if "sem_seg" in x and tuple(x["sem_seg"].shape) != tuple(x["image"].shape[-2:]):
            x["sem_seg"] = resize_labels(x["sem_seg"][None], x["image"].shape[-2:])[0]
    images, labels = model.preprocessor(inputs)
    return model.predict(images.tensor), images, labels


@torch.no_grad()
def split_class_centers(model, car: CARRegularizer, inputs: Iterable[dict]):
    """
    Class centers (Eq. 1) over every labelled pixel of ``inputs`` (one center per class for the
    whole split, as for Fig. 4). Returns (centers (K, C) float64, pixel counts (K,)); a class with
    no pixel has center 0.
    """
    key = car.feature_keys[0]
    sums, counts = 0, 0
    for x in inputs:
        outputs, _, labels = head_outputs(model, [x])
        if labels is None:
            raise ValueError(f"'{x.get('file_name', 'an input')}' has no label: class centers need labelled images")
        feats, onehot = car.prepare(outputs.reg_feature(key), labels)
        sums = sums + (onehot.transpose(1, 2) @ feats).sum(0).double()
        counts = counts + onehot.sum((0, 1)).double()
    if isinstance(counts, int):
        raise ValueError("no images to compute class centers from")
    return sums / counts.clamp(min=1)[:, None], counts


def class_dependency(centers: torch.Tensor, counts: torch.Tensor):
    """
    Fig. 4's map and a one-number summary. Returns (``mu mu^T`` (K, K), mean over the present
    classes of the off-diagonal mass ``1 - A_ii`` of ``A = softmax(mu mu^T / sqrt(C))`` (Eq. 4)
    restricted to the present classes: 0 = every class depends only on itself).
    """
    similarity = centers @ centers.T
    present = counts > 0
    sub = similarity[present][:, present] / math.sqrt(centers.shape[1])
    inter = (1 - torch.softmax(sub, dim=1).diagonal()).mean() if present.sum() > 1 else sub.new_zeros(())
    return similarity, float(inter)


def feature_cell(size: int, grid: int, coord: int) -> int:
    """The feature-grid cell of image coordinate ``coord`` (image of ``size`` pixels, feature grid
    of ``grid`` cells, the input's top-left corner at cell 0): ``floor(coord * grid / size)``."""
    if not 0 <= coord < size:
        raise ValueError(f"pixel coordinate {coord} is outside the image (size {size})")
    return coord * grid // size


@torch.no_grad()
def pixel_relation(feature: torch.Tensor, padded_size, row: int, col: int) -> torch.Tensor:
    """
    Fig. 5: dot product of the feature at image pixel (row, col) with every feature pixel.
    feature: (C, h, w) for an input of ``padded_size`` (H, W); returns (h, w).
    """
    y = feature_cell(padded_size[0], feature.shape[-2], row)
    x = feature_cell(padded_size[1], feature.shape[-1], col)
    return torch.einsum("c,chw->hw", feature[:, y, x], feature)
