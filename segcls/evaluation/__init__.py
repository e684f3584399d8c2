from .sem_seg import EVALUATOR_REGISTRY, OverlayWriter, SemSegEvaluatorWithTable, build_evaluator
from .cityscapes import OfficialCityscapesSemSegEvaluator
