"""
Cityscapes evaluation: detectron2's ``SemSegEvaluator`` (with the per-class table) on the train
IDs and, if ``TEST.CITYSCAPES_OFFICIAL_EVAL``, the official ``cityscapesscripts`` evaluation
through detectron2's ``CityscapesSemSegEvaluator`` (class IoU, instance-level iIoU and category
scores, computed against the raw ``*_gtFine_labelIds.png``/``*_gtFine_instanceIds.png`` of
``metadata.gt_dir``). Its results are reported under ``"cityscapes_sem_seg"`` so that both sets of
numbers can sit side by side.
"""
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
        results = super().evaluate()
        return None if results is None else {"cityscapes_sem_seg": results["sem_seg"]}


@EVALUATOR_REGISTRY.register()
def cityscapes_sem_seg(cfg, dataset_name, output_dir):
    """Builder for ``evaluator_type == "cityscapes_sem_seg"``: the ``sem_seg`` evaluators plus, if
    ``cfg.TEST.CITYSCAPES_OFFICIAL_EVAL``, :class:`OfficialCityscapesSemSegEvaluator`."""
    evaluators = [sem_seg(cfg, dataset_name, output_dir)]
    if cfg.TEST.CITYSCAPES_OFFICIAL_EVAL:
        evaluators.append(OfficialCityscapesSemSegEvaluator(dataset_name))
    return DatasetEvaluators(evaluators)
