"""
Optimizer and learning-rate schedule.

- ``SOLVER.OPTIMIZER``: ``"SGD"`` (momentum ``SOLVER.MOMENTUM``, ``SOLVER.NESTEROV``) or ``"ADAMW"``
  (``SOLVER.BETAS``).
- Per-parameter groups: backbone parameters get ``BASE_LR * SOLVER.BACKBONE_MULTIPLIER``, times
  ``SOLVER.LAYER_DECAY ** (S + 1 - s)`` for a parameter of stage s of S (layer-wise decay, off
  at 1.0); normalisation-layer parameters get ``SOLVER.WEIGHT_DECAY_NORM``, biases
  ``SOLVER.WEIGHT_DECAY_BIAS`` and position tables ``SOLVER.WEIGHT_DECAY_EMBED`` (all 0 by
  default) instead of ``SOLVER.WEIGHT_DECAY``.
- Gradient clipping: detectron2's ``SOLVER.CLIP_GRADIENTS`` (value or norm, per parameter or
  over the whole model).
- ``SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"``: ``lr = base_lr * warmup(it) * (1 - it/max_iter)^POLY_LR_POWER``
  (detectron2's DeepLab project), other names go to detectron2's builder.
"""
import torch
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping

from .modeling.backbone.utils import get_backbone_stage_ids

_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)
# Parameter-name parts of position tables (SOLVER.WEIGHT_DECAY_EMBED).
_EMBED_NAMES = ("pos_embed", "relative_position_bias_table", "cls_token")


def _is_norm(module):
    # detectron2's FrozenBatchNorm2d has buffers only; its parameters never reach here.
    return isinstance(module, _NORM_TYPES)


def get_param_groups(cfg, model):
    """Trainable parameters grouped by (learning rate, weight decay), in model order."""
    s = cfg.SOLVER
    stage_of = _backbone_stages(model) if s.LAYER_DECAY != 1.0 else {}
    num_stages = max(stage_of.values(), default=0)
    groups, seen = {}, set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr = s.BASE_LR
            if module_name.startswith("backbone") or ".backbone." in module_name:
                lr *= s.BACKBONE_MULTIPLIER
            if id(param) in stage_of:
                lr *= s.LAYER_DECAY ** (num_stages + 1 - stage_of[id(param)])
            if any(key in name for key in _EMBED_NAMES):
                weight_decay = s.WEIGHT_DECAY_EMBED
            elif _is_norm(module):
                weight_decay = s.WEIGHT_DECAY_NORM
            elif name == "bias":
                weight_decay = s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS
            else:
                weight_decay = s.WEIGHT_DECAY
            groups.setdefault((lr, weight_decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


def _backbone_stages(model):
    """{id(parameter): stage} of the model's ``backbone`` submodule (see get_backbone_stage_ids)."""
    for module_name, module in model.named_modules():
        if module_name == "backbone" or module_name.endswith(".backbone"):
            params = dict(module.named_parameters())
            return {id(params[name]): stage for name, stage in get_backbone_stage_ids(module).items() if name in params}
    raise ValueError("SOLVER.LAYER_DECAY != 1 needs a model with a 'backbone' submodule")


def build_optimizer(cfg, model):
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optim_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    elif name == "ADAMW":
        optim_cls, kwargs = torch.optim.AdamW, {"betas": tuple(cfg.SOLVER.BETAS)}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: expected 'SGD' or 'ADAMW'")
    return maybe_add_gradient_clipping(cfg, optim_cls)(get_param_groups(cfg, model), lr=cfg.SOLVER.BASE_LR, **kwargs)


__all__ = ["build_optimizer", "build_lr_scheduler", "get_param_groups"]
