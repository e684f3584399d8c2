"""
Checkpoints of mmsegmentation, torchvision and open-mmlab backbones -> segcls models: reading
(:mod:`.io`) and name/layout conversion with the guard that nothing the model expects is left at
its initialisation (:mod:`.convert`). ``tools/convert_pretrained.py`` is the command line.
"""
from .convert import (LAYOUTS, Conversion, ConversionError, check_mapping, convert_state_dict, detect_layout, resnet_name,
                      resnet_names)
from .io import read_checkpoint

__all__ = [
    "LAYOUTS",
    "Conversion",
    "ConversionError",
    "check_mapping",
    "convert_state_dict",
    "detect_layout",
    "read_checkpoint",
    "resnet_name",
    "resnet_names",
]
