"""
Cityscapes evaluation: detectron2's ``SemSegEvaluator`` (with the per-class table) on the train
IDs and, if ``TEST.CITYSCAPES_OFFICIAL_EVAL``, the official ``cityscapesscripts`` evaluation
through detectron2's ``CityscapesSemSegEvaluator`` (class IoU, instance-level iIoU and category
scores, computed against the raw ``*_gtFine_labelIds.png``/``*_gtFine_instanceIds.png`` of
``metadata.gt_dir``). Its results are reported under ``"cityscapes_sem_seg"`` so that both sets of
numbers can sit side by side.

The official script ends the process (``sys.exit``) on any file it cannot read. So what it needs
is checked first: without ``*_gtFine_instanceIds.png`` next to the ``*_gtFine_labelIds.png`` it
runs without the instance-level scores (iIoU reported as NaN, i.e. null in eval/results.json, with a
warning naming the first missing file), and any other exit it attempts becomes a logged error;
the ``sem_seg`` results computed before are kept and written either way.
"""
import contextlib
import glob
import io
import logging
import os

import numpy as np
from detectron2.evaluation import CityscapesSemSegEvaluator, DatasetEvaluators

from .sem_seg import EVALUATOR_REGISTRY, sem_seg


class _NumpyWithIn1d:
    """``numpy`` plus ``in1d`` (removed in NumPy 2.4), which cityscapesscripts 2.3's evaluation
    still calls. Installed as that module's ``np`` only, so numpy itself is left untouched."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, invert=False):
        return np.isin(np.asarray(ar1).ravel(), ar2, invert=invert)


class OfficialCityscapesSemSegEvaluator(CityscapesSemSegEvaluator):
    """detectron2's ``CityscapesSemSegEvaluator`` (the official cityscapesscripts evaluation), with
    its results under ``"cityscapes_sem_seg"`` and made to run on NumPy >= 2.4."""

    def evaluate(self):
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cityscapes_eval

        if not hasattr(np, "in1d"):
            cityscapes_eval.np = _NumpyWithIn1d()
        logger = logging.getLogger(__name__)
        labels = sorted(glob.glob(os.path.join(self._metadata.gt_dir, "*", "*_gtFine_labelIds.png")))
        no_instances = [f for f in labels if not os.path.isfile(f.replace("labelIds", "instanceIds"))]
        if no_instances:
            logger.warning(
                f"{len(no_instances)} of {len(labels)} ground-truth files have no instance file (first: "
                f"'{no_instances[0].replace('labelIds', 'instanceIds')}'): the official evaluation runs "
                "without the instance-level iIoU scores"
            )
        inst_level = cityscapes_eval.args.evalInstLevelScore
        cityscapes_eval.args.evalInstLevelScore = inst_level and not no_instances
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                results = super().evaluate()
        except SystemExit:
            logger.error(
                "the official cityscapesscripts evaluation failed, its results are left out: "
                + " ".join(line for line in printed.getvalue().splitlines() if "ERROR" in line)
            )
            return None
        finally:
            cityscapes_eval.args.evalInstLevelScore = inst_level
        return None if results is None else {"cityscapes_sem_seg": results["sem_seg"]}


@EVALUATOR_REGISTRY.register()
def cityscapes_sem_seg(cfg, dataset_name, output_dir):
    """Builder for ``evaluator_type == "cityscapes_sem_seg"``: the ``sem_seg`` evaluators plus, if
    ``cfg.TEST.CITYSCAPES_OFFICIAL_EVAL``, :class:`OfficialCityscapesSemSegEvaluator`."""
    evaluators = [sem_seg(cfg, dataset_name, output_dir)]
    if cfg.TEST.CITYSCAPES_OFFICIAL_EVAL:
        evaluators.append(OfficialCityscapesSemSegEvaluator(dataset_name))
    return DatasetEvaluators(evaluators)
