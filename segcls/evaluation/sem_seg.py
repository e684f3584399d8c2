"""
Evaluation: detectron2's ``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC, per-class IoU/accuracy)
plus a per-class table in the log, and PNG overlays of a few predictions.
Evaluators are chosen from the dataset's ``evaluator_type`` through ``EVALUATOR_REGISTRY``.
"""
import logging
import os

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.registry import Registry
from tabulate import tabulate

from ..utils.io import atomic_save_image
from ..utils.visualization import colorize_labels

EVALUATOR_REGISTRY = Registry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Evaluator builders keyed by a dataset's ``evaluator_type`` metadata:
``fn(cfg, dataset_name, output_dir) -> DatasetEvaluator``, registered under the function's name
(the function for ``"sem_seg"`` is called ``sem_seg``).
"""


def build_evaluator(cfg, dataset_name, output_dir):
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = getattr(meta, "evaluator_type", None)
    if evaluator_type is None:
        raise KeyError(f"dataset '{dataset_name}' has no 'evaluator_type' in its metadata")
    if evaluator_type not in EVALUATOR_REGISTRY:
        raise KeyError(
            f"dataset '{dataset_name}': evaluator_type '{evaluator_type}' is not registered in EVALUATOR_REGISTRY"
        )
    return EVALUATOR_REGISTRY.get(evaluator_type)(cfg, dataset_name, output_dir)


class SemSegEvaluatorWithTable(SemSegEvaluator):
    """detectron2's ``SemSegEvaluator``, unchanged, that also logs a per-class IoU/accuracy table."""

    def evaluate(self):
        results = super().evaluate()
        if results is not None:
            res = results["sem_seg"]
            rows = [(name, res[f"IoU-{name}"], res[f"ACC-{name}"]) for name in self._class_names]
            table = tabulate(rows, headers=["class", "IoU", "Acc"], floatfmt=".2f", tablefmt="pipe")
            logging.getLogger(__name__).info(
                f"Per-class results on {self._dataset_name}:\n{table}\n"
                f"mIoU {res['mIoU']:.2f}  mACC {res['mACC']:.2f}  pACC {res['pACC']:.2f}"
            )
        return results


class OverlayWriter(DatasetEvaluator):
    """Write ``image | ground truth | prediction`` PNGs for the first ``num_images`` images each
    process sees, to ``output_dir/<image_id>.png``. Colours: metadata ``stuff_colors``; ignored
    pixels black."""

    def __init__(self, dataset_name, output_dir, num_images, image_format="RGB"):
        meta = MetadataCatalog.get(dataset_name)
        self.colors = getattr(meta, "stuff_colors", None)
        self.num_classes = len(meta.stuff_classes)
        self.output_dir = output_dir
        self.num_images = num_images
        self.image_format = image_format

    def reset(self):
        self.written = 0

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if self.written >= self.num_images:
                return
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
            image = inp["image"].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            if self.image_format == "BGR":
                image = image[..., ::-1]
            h, w = pred.shape
            if image.shape[:2] != (h, w):  # test-time resized input
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            panels = [image]
            if "sem_seg" in inp:
                panels.append(colorize_labels(inp["sem_seg"].cpu().numpy(), self.num_classes, self.colors))
            panels.append(colorize_labels(pred, self.num_classes, self.colors))
            stem = str(inp.get("image_id", os.path.splitext(os.path.basename(inp["file_name"]))[0]))
            atomic_save_image(np.concatenate(panels, axis=1), os.path.join(self.output_dir, stem.replace("/", "_") + ".png"))
            self.written += 1

    def evaluate(self):
        return {}


@EVALUATOR_REGISTRY.register()
def sem_seg(cfg, dataset_name, output_dir):
    """Builder for ``evaluator_type == "sem_seg"`` (registered under its function name)."""
    evaluators = [SemSegEvaluatorWithTable(dataset_name, distributed=comm.get_world_size() > 1)]
    if cfg.TEST.NUM_OVERLAYS > 0:
        evaluators.append(
            OverlayWriter(dataset_name, os.path.join(output_dir, "overlays"), cfg.TEST.NUM_OVERLAYS, cfg.INPUT.FORMAT)
        )
    return DatasetEvaluators(evaluators)
