from .sem_seg import (
    EVALUATOR_REGISTRY,
    FastSemSegEvaluator,
    OverlayWriter,
    SemSegEvaluatorWithTable,
    build_evaluator,
    confused_pairs,
    predicted_labels,
    write_confusion_outputs,
)
from .cityscapes import OfficialCityscapesSemSegEvaluator
