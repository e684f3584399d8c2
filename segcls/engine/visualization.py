"""
Pictures in TensorBoard (and any event writer that reads ``EventStorage`` images, e.g. W&B):
``image | ground truth | prediction`` panels with a legend of the classes present
(:func:`segcls.utils.visualization.segmentation_panel`), put with detectron2's
``EventStorage.put_image``

- every ``VIS_PERIOD`` iterations (detectron2's key; 0 = off) by :class:`TrainingPanelsHook`, for
  the first ``SEGCLS.VIS_IMAGES`` images of ``DATASETS.TRAIN`` mapped with the *test* mapper
  (the same images every time, so their panels show the model's progress), predicted in eval
  mode under ``torch.no_grad`` (no state of the training run changes), tags ``train/<i>``;
- at each evaluation (when ``VIS_PERIOD > 0``) by :class:`PanelEvaluator`, for the first
  ``SEGCLS.VIS_IMAGES`` images of each test set, from the evaluation's own predictions, tags
  ``<eval dir>/<dataset>/<i>``.

Only the main process puts images (the event writers run there).
"""
import itertools

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..data import build_mapper
from ..evaluation import predicted_labels
from ..utils.visualization import segmentation_panel
from .ema import unwrap_model


def input_image_rgb(inp, image_format, size):
    """The (H, W, 3) uint8 RGB image of a model input (mapper dict, ``"image"`` (3, h, w) in
    ``image_format``), resized (bilinear) to ``size`` = (H, W) if it differs (test-time resize)."""
    image = inp["image"].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    if image_format == "BGR":
        image = image[..., ::-1]
    if image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)


def prediction_panel(inp, output, metadata, image_format="RGB"):
    """(3, h, w) CHW float panel in [0, 1] of a model input (mapper dict) and its model output
    (``{"sem_seg": (K, H, W)}``), for ``put_image``; the image is resized to the output size."""
    pred = predicted_labels(output["sem_seg"]).cpu().numpy()
    image = input_image_rgb(inp, image_format, pred.shape)
    labels = [inp["sem_seg"].cpu().numpy(), pred] if "sem_seg" in inp else [pred]
    panel = segmentation_panel(image, labels, metadata.stuff_classes, getattr(metadata, "stuff_colors", None),
                               getattr(metadata, "ignore_label", 255))
    return torch.from_numpy(panel).permute(2, 0, 1).float() / 255.0


class TrainingPanelsHook(HookBase):
    """Every ``period`` iterations, put the panels of ``inputs`` (test-mapped training images)."""

    def __init__(self, period, inputs, metadata, image_format="RGB"):
        self.period = period
        self.inputs = inputs
        self.metadata = metadata
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        """The hook for ``cfg`` (main process, ``VIS_PERIOD > 0``), else None."""
        if cfg.VIS_PERIOD <= 0 or cfg.SEGCLS.VIS_IMAGES <= 0 or not comm.is_main_process():
            return None
        name = cfg.DATASETS.TRAIN[0]
        mapper = build_mapper(cfg, is_train=False)
        records = itertools.islice(DatasetCatalog.get(name), cfg.SEGCLS.VIS_IMAGES)
        return cls(cfg.VIS_PERIOD, [mapper(r) for r in records], MetadataCatalog.get(name), cfg.INPUT.FORMAT)

    def after_step(self):
        if (self.trainer.iter + 1) % self.period:
            return
        model = unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outputs = [model([inp])[0] for inp in self.inputs]
        finally:
            model.train(was_training)
        storage = get_event_storage()
        for i, (inp, out) in enumerate(zip(self.inputs, outputs)):
            storage.put_image(f"train/{i}", prediction_panel(inp, out, self.metadata, self.image_format))


class PanelEvaluator(DatasetEvaluator):
    """Puts the panels of the first ``num_images`` evaluated images under ``tag/<i>`` into the
    current ``EventStorage`` (nothing outside training, where there is none)."""

    def __init__(self, dataset_name, tag, num_images, image_format="RGB"):
        self.metadata = MetadataCatalog.get(dataset_name)
        self.tag = tag
        self.num_images = num_images
        self.image_format = image_format

    def reset(self):
        self.panels = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if len(self.panels) < self.num_images:
                self.panels.append(prediction_panel(inp, out, self.metadata, self.image_format))

    def evaluate(self):
        if comm.is_main_process():
            try:
                storage = get_event_storage()
            except AssertionError:  # no training run (--eval-only)
                return {}
            for i, panel in enumerate(self.panels):
                storage.put_image(f"{self.tag}/{i}", panel)
        return {}
