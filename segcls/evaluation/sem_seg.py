"""
Evaluation: :class:`FastSemSegEvaluator`, detectron2's ``SemSegEvaluator`` metrics (mIoU, fwIoU,
mACC, pACC, per-class IoU/accuracy; the same keys and numbers) accumulated on the model's device,
plus a per-class table, the confusion matrix (``confusion_matrix.npy``, a normalised PNG with
class names, the most confused class pairs) and PNG overlays of a few predictions.
Evaluators are chosen from the dataset's ``evaluator_type`` through ``EVALUATOR_REGISTRY``.
"""
import itertools
import json
import logging
import os

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.registry import Registry
from PIL import Image
from tabulate import tabulate

from ..utils.io import atomic_save_image, atomic_write
from ..utils.visualization import colorize_labels

logger = logging.getLogger(__name__)

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
            logger.info(
                f"Per-class results on {self._dataset_name}:\n{table}\n"
                f"mIoU {res['mIoU']:.2f}  mACC {res['mACC']:.2f}  pACC {res['pACC']:.2f}"
            )
        return results


class FastSemSegEvaluator(SemSegEvaluatorWithTable):
    """
    ``SemSegEvaluator``'s metrics, keys and table, computed fast:

    - per image, the ``argmax`` (:func:`predicted_labels`) and the counts of
      ``(K + 1) * pred + gt`` (:func:`confusion_counts`) run on the device of the model's output
      (ground truth read from ``sem_seg_file_name`` as detectron2 does, ignore label mapped to K);
      the (K + 1, K + 1) int64 matrix (rows prediction, columns ground truth, detectron2's layout)
      is accumulated there;
    - under DDP only that matrix is all-reduced (no per-image data is gathered);
    - detectron2's per-prediction RLE JSON (``sem_seg_predictions.json``) only with
      ``predictions_json`` (``TEST.PREDICTIONS_JSON``), then gathered to rank 0 as detectron2 does;
    - the metrics come from ``SemSegEvaluator.evaluate`` itself on the reduced matrix, so the numbers
      are detectron2's.

    With an ``output_dir``, the main process also writes :func:`write_confusion_outputs`
    (``confusion_matrix.npy``, ``confusion_matrix.png``, ``confused_pairs.json``) and logs the
    ``top_pairs`` most confused pairs (0 = no confusion outputs).
    """

    def __init__(self, dataset_name, distributed=True, output_dir=None, *, predictions_json=False, top_pairs=10):
        super().__init__(dataset_name, distributed=False)
        self._all_reduce = distributed
        self._out_dir = output_dir
        self._predictions_json = predictions_json
        self._top_pairs = top_pairs

    def reset(self):
        super().reset()
        self._matrix = None

    def process(self, inputs, outputs):
        """inputs: the model's inputs (``"file_name"`` per image); outputs: ``[{"sem_seg": (K, H, W)}]``."""
        k = self._num_classes
        for inp, out in zip(inputs, outputs):
            pred = predicted_labels(out["sem_seg"])
            gt_file = self.input_file_to_gt_file[inp["file_name"]]
            with Image.open(gt_file) as f:
                gt = np.asarray(f).astype(np.int64)
            if gt.shape != tuple(pred.shape):
                raise ValueError(f"{gt_file}: ground truth of shape {gt.shape}, prediction {tuple(pred.shape)}")
            ignored = gt == self._ignore_label
            bad = ~ignored & ((gt < 0) | (gt >= k))
            if bad.any():
                raise ValueError(
                    f"{gt_file}: label values {np.unique(gt[bad])[:10].tolist()} are neither classes in [0, {k}) "
                    f"nor the ignore label {self._ignore_label}"
                )
            gt[ignored] = k
            counts = confusion_counts(pred, gt, k + 1)
            self._matrix = counts if self._matrix is None else self._matrix + counts
            if self._predictions_json:
                self._predictions.extend(self.encode_json_sem_seg(pred.cpu().numpy(), inp["file_name"]))

    def confusion_matrix(self) -> np.ndarray:
        """The (K + 1, K + 1) int64 matrix of this process (rows prediction, columns ground truth,
        index K = ignore), summed over all processes under DDP (every process must call it)."""
        matrix = self._matrix
        if matrix is None:
            matrix = torch.zeros((self._num_classes + 1,) * 2, dtype=torch.int64)
        if self._all_reduce and comm.get_world_size() > 1:
            matrix = matrix.clone()
            torch.distributed.all_reduce(matrix)
        return matrix.cpu().numpy()

    def evaluate(self):
        self._conf_matrix = self.confusion_matrix()
        if self._predictions_json and self._all_reduce and comm.get_world_size() > 1:
            self._predictions = list(itertools.chain(*comm.all_gather(self._predictions)))
        if not comm.is_main_process():
            return None
        results = super().evaluate()
        if self._out_dir:
            if self._predictions_json:
                with atomic_write(os.path.join(self._out_dir, "sem_seg_predictions.json"), "w") as f:
                    json.dump(self._predictions, f)
            if self._top_pairs > 0:
                write_confusion_outputs(self._conf_matrix, self._class_names, self._out_dir, self._top_pairs)
        return results


def predicted_labels(scores: torch.Tensor) -> torch.Tensor:
    """
    (H, W) int64 labels of (K, H, W) scores: ``scores.argmax(dim=0)``, computed as
    ``scores.max(dim=0).indices``, which gives the same indices (the first of tied maxima, a NaN
    counts as the maximum; tested) and on CPU takes 0.4x the time of ``argmax(dim=0)`` (measured
    on 150 x 512 x 683 float32 scores, 2 threads: 0.040 s vs 0.096 s).
    """
    return scores.max(dim=0).indices


def confusion_counts(pred: torch.Tensor, gt: np.ndarray, size: int) -> torch.Tensor:
    """
    (size, size) int64 counts of ``size * pred + gt`` (rows prediction, columns ground truth) for
    (H, W) long predictions and ground truth with values in [0, size), on ``pred``'s device:
    ``torch.bincount`` on an accelerator; on CPU NumPy's ``bincount``, which is 5-20x faster than
    torch's CPU kernel (same counts).
    """
    if pred.device.type == "cpu":
        counts = np.bincount((size * pred.numpy() + gt).ravel(), minlength=size * size)
        return torch.from_numpy(counts).view(size, size)
    index = size * pred + torch.from_numpy(gt).to(pred.device)
    return torch.bincount(index.flatten(), minlength=size * size).view(size, size)


def confused_pairs(matrix: np.ndarray, class_names, top: int):
    """
    The ``top`` most confused (ground truth, prediction) class pairs of a detectron2-layout matrix
    (K + 1, K + 1) (rows prediction, columns ground truth, index K = ignore, excluded), largest
    share first: ``[{"gt", "pred", "pixels", "fraction"}]`` with ``fraction`` the share of that
    ground-truth class's pixels predicted as ``pred``.
    """
    k = len(class_names)
    by_gt = matrix[:k, :k].T.astype(np.float64)  # (gt, pred)
    totals = by_gt.sum(axis=1, keepdims=True)
    fractions = np.divide(by_gt, totals, out=np.zeros_like(by_gt), where=totals > 0)
    np.fill_diagonal(fractions, 0.0)
    order = np.argsort(-fractions, axis=None, kind="stable")[:top]
    pairs = []
    for gt, pred in zip(*np.unravel_index(order, fractions.shape)):
        if fractions[gt, pred] > 0:
            pairs.append({"gt": class_names[gt], "pred": class_names[pred], "pixels": int(by_gt[gt, pred]), "fraction": float(fractions[gt, pred])})
    return pairs


def write_confusion_outputs(matrix: np.ndarray, class_names, output_dir: str, top: int = 10):
    """
    Write, atomically, to ``output_dir``: ``confusion_matrix.npy`` (K, K) int64 with rows = ground
    truth and columns = prediction (ignore pixels excluded); ``confusion_matrix.png``, that matrix
    row-normalised (share of each ground-truth class) with the class names on both axes (figure
    size and font scale with K, readable for 150 classes); ``confused_pairs.json``, the
    :func:`confused_pairs`; the pairs are also logged. Returns the pairs.
    """
    k = len(class_names)
    by_gt = np.ascontiguousarray(matrix[:k, :k].T)
    with atomic_write(os.path.join(output_dir, "confusion_matrix.npy")) as f:
        np.save(f, by_gt)
    pairs = confused_pairs(matrix, class_names, top)
    with atomic_write(os.path.join(output_dir, "confused_pairs.json"), "w") as f:
        json.dump(pairs, f, indent=2)
    _plot_confusion(by_gt, class_names, os.path.join(output_dir, "confusion_matrix.png"))
    if pairs:
        lines = [f"  {p['gt']} -> {p['pred']}: {100 * p['fraction']:.2f}% ({p['pixels']} pixels)" for p in pairs]
        logger.info("Most confused classes (ground truth -> prediction, share of the ground truth's pixels):\n" + "\n".join(lines))
    return pairs


def _plot_confusion(by_gt: np.ndarray, class_names, path: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    k = len(class_names)
    totals = by_gt.sum(axis=1, keepdims=True).astype(np.float64)
    share = np.divide(by_gt, totals, out=np.zeros(by_gt.shape), where=totals > 0)
    side = max(4.0, 0.14 * k + 2.0)  # inches: ~10 pt per class
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    image = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    font = max(4.0, min(10.0, 600.0 / max(k, 1)))
    ax.set_xticks(range(k), labels=class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels=class_names, fontsize=font)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (rows normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


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
            pred = predicted_labels(out["sem_seg"]).cpu().numpy()
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
    evaluators = [
        FastSemSegEvaluator(
            dataset_name,
            distributed=comm.get_world_size() > 1,
            output_dir=output_dir,
            predictions_json=cfg.TEST.PREDICTIONS_JSON,
            top_pairs=cfg.TEST.CONFUSED_PAIRS,
        )
    ]
    if cfg.TEST.NUM_OVERLAYS > 0:
        evaluators.append(
            OverlayWriter(dataset_name, os.path.join(output_dir, "overlays"), cfg.TEST.NUM_OVERLAYS, cfg.INPUT.FORMAT)
        )
    return DatasetEvaluators(evaluators)
