"""
Offline pretrained weights for backbones: read a local checkpoint, map its key names, check it
against the architecture and load it, reporting what did not match. Nothing is downloaded.

- :func:`read_state_dict`: a ``.safetensors`` file or a torch checkpoint (the state dict itself or
  under ``"state_dict"``/``"model"``), ``module.``/``backbone.``/``model.`` prefixes stripped.
- :func:`load_checked_state_dict`: loads the keys that exist in the module; raises on shape
  mismatches (naming the file and the first mismatching keys) or when no key matches; logs the
  missing and unexpected keys.
- :func:`load_backbone_weights`: a local checkpoint into any backbone with a
  ``load_pretrained(path, key)`` method; each backbone maps its own names
  (:meth:`TimmBackbone.load_pretrained`, :meth:`DilatedResNet.load_pretrained`, which maps
  torchvision ResNet names to detectron2's).
- :func:`detectron2_checkpoint`: the ``{"model": {"backbone.<name>": tensor}, ...}`` dict that
  ``tools/convert_pretrained.py`` writes and ``MODEL.WEIGHTS`` loads.
"""
import logging
import os
import pickle
from typing import Dict, Iterable

import torch
from fvcore.common.checkpoint import get_missing_parameters_message, get_unexpected_parameters_message

logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "backbone.", "model.")
_CONTAINERS = ("state_dict", "model")


def read_state_dict(path: str, key: str = "weights") -> Dict[str, torch.Tensor]:
    """
    The tensors of the checkpoint at ``path`` ({name: tensor}), with leading "module.",
    "backbone." and "model." removed from every name. ``key`` names the config key or option
    that gave ``path``, for the error messages.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: weights file '{path}' does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise ValueError(f"{key}: '{path}' is not a readable PyTorch checkpoint of tensors: {e}") from e
    while isinstance(obj, dict) and any(isinstance(obj.get(c), dict) for c in _CONTAINERS):
        obj = next(obj[c] for c in _CONTAINERS if isinstance(obj.get(c), dict))
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not state_dict:
        raise ValueError(
            f"{key}: '{path}' holds no tensors (expected a state dict, possibly under 'state_dict' or 'model')"
        )
    stripped = {}
    for name, tensor in state_dict.items():
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        stripped[name] = tensor
    return stripped


def load_checked_state_dict(
    module: torch.nn.Module,
    state_dict: Dict[str, torch.Tensor],
    path: str,
    description: str,
    skipped: Iterable[str] = (),
):
    """
    Load into ``module`` the entries of ``state_dict`` (read from ``path``) that name one of its
    parameters/buffers. ``skipped``: keys expected to be unused (e.g. a classifier), logged at
    INFO; other unused keys and the module's keys absent from the file are logged as warnings.
    Raises ``ValueError`` when no key matches or when shapes differ (the first 5 named).
    Returns the module's keys the file left unloaded (``num_batches_tracked`` excepted), so that
    callers can refuse a partial load (``tools/convert_pretrained.py`` does unless asked).
    """
    target = module.state_dict()
    matched = {k: v for k, v in state_dict.items() if k in target}
    if not matched:
        raise ValueError(
            f"'{path}' does not fit {description}: none of its {len(state_dict)} keys "
            f"(e.g. {sorted(state_dict)[:3]}) names a parameter of the model (e.g. {list(target)[:3]})"
        )
    mismatched = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(target[k].shape)} in the model"
        for k, v in matched.items()
        if v.shape != target[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"'{path}' does not match {description}: {len(mismatched)} tensors have other shapes, "
            f"first: " + "; ".join(mismatched[:5])
        )
    module.load_state_dict(matched, strict=False)
    logger.info(f"Loaded {len(matched)} of {len(target)} tensors of {description} from '{path}'")
    missing = [k for k in target if k not in matched and not k.endswith("num_batches_tracked")]
    skipped = set(skipped)
    unexpected = [
        k for k in state_dict if k not in target and k not in skipped and not k.endswith("num_batches_tracked")
    ]
    unused = [k for k in state_dict if k in skipped]
    if missing:
        logger.warning(f"Loading '{path}' into {description}: {get_missing_parameters_message(missing)}")
    if unexpected:
        logger.warning(f"Loading '{path}' into {description}: {get_unexpected_parameters_message(unexpected)}")
    if unused:
        logger.info(f"Loading '{path}' into {description}: skipped {len(unused)} tensors outside it, e.g. {unused[:3]}")
    return missing


def load_backbone_weights(backbone: torch.nn.Module, path: str, key: str = "weights"):
    """Load the local checkpoint ``path`` into a segcls backbone through its own
    ``load_pretrained(path, key)`` (which maps the file's names to its parameters and loads them
    with :func:`load_checked_state_dict`). ``key`` names the option that gave ``path``. Returns
    the backbone's keys left unloaded (a list; empty when the file covered everything)."""
    load_pretrained = getattr(backbone, "load_pretrained", None)
    if load_pretrained is None:
        raise TypeError(
            f"cannot load weights into a {type(backbone).__name__}: expected TimmBackbone or detectron2's ResNet "
            "(segcls's DilatedResNet), or another backbone with a load_pretrained(path, key) method"
        )
    return list(load_pretrained(path, key) or [])


def detectron2_checkpoint(backbone: torch.nn.Module, author: str) -> dict:
    """A detectron2 checkpoint holding ``backbone``'s state with the "backbone." prefix of
    segcls's meta-architectures, loaded by name (no matching heuristics) from ``MODEL.WEIGHTS``."""
    model = {"backbone." + k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    return {"model": model, "__author__": author, "matching_heuristics": False}
