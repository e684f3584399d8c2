"""Backbone stages, shared by freezing and layer-wise learning-rate decay."""
from typing import Dict

from detectron2.modeling.backbone.resnet import ResNet


def get_backbone_stage_ids(backbone) -> Dict[str, int]:
    """
    Stage of every parameter of ``backbone`` (by its name relative to the backbone): 0 = stem,
    k = the stage producing res{k+1}. Backbones with a ``stage_ids()`` method (TimmBackbone)
    define it themselves; detectron2's ResNet is read from its names ("stem.*", "res2.*", ...).
    """
    if hasattr(backbone, "stage_ids"):
        return backbone.stage_ids()
    if isinstance(backbone, ResNet):
        return {n: 0 if n.startswith("stem.") else int(n[3]) - 1 for n, _ in backbone.named_parameters()}
    raise TypeError(
        f"SOLVER.LAYER_DECAY: {type(backbone).__name__} has no stages; expected a TimmBackbone, "
        "detectron2's ResNet or a backbone with a stage_ids() method"
    )
