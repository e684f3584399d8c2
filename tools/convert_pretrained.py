#!/usr/bin/env python
"""
Convert a local checkpoint from the ecosystem into a detectron2 checkpoint for a segcls config, to
pass as MODEL.WEIGHTS:

    python tools/convert_pretrained.py --config-file configs/ade20k/pspnet_r50-d8_512x512_80k.yaml \\
        --input pspnet_r50-d8_512x512_80k_ade20k.pth --output pspnet_segcls.pth [KEY VALUE ...]

The model of the config is built and the input (a .pth / .pt / .bin torch file, mmsegmentation's
``{"meta", "state_dict"}`` included, a .safetensors file or a HF ``save_pretrained`` folder) is
mapped onto it (``segcls.converters``):

- whole models: mmsegmentation segmentors (FCN, PSPNet, DeepLabV3, DeepLabV3+ in mmseg's layout,
  UPerNet, Non-local, CCNet, DANet, OCRNet; ResNetV1c/V1d backbone, or Swin or mmpretrain's
  ConvNeXt with UPerNet; auxiliary head included), HF ``UperNetForSemanticSegmentation`` with a
  ConvNeXt or Swin backbone, torchvision
  ``fcn_resnet50/101`` and ``deeplabv3_resnet50/101`` (auxiliary head included), segcls /
  detectron2 checkpoints;
- backbones: torchvision and open-mmlab (ResNetV1c; ResNetV1d with ``MODEL.RESNETS.AVG_DOWN True``)
  ResNets for ``build_resnet_dilated_backbone``; timm, torchvision and official (Swin, ConvNeXt,
  ...) files for ``build_timm_backbone`` (names mapped as for MODEL.TIMM.WEIGHTS).

It prints how many tensors were mapped and fails (exit status 1, naming them) when any tensor the
model expects (the whole model for a model file, the backbone for a backbone file) is left
unmapped, unless ``--allow-partial``. The output, ``{"model": {name: tensor}, "__author__": ...,
"matching_heuristics": False}``, is written atomically.
"""
import argparse
import logging
import os
import sys

import torch
from detectron2.modeling import build_model

import segcls  # noqa: F401  (registers the models)
from segcls.converters import ConversionError, check_mapping, convert_state_dict, detect_layout, read_checkpoint
from segcls.converters.convert import LAYOUTS
from segcls.engine.defaults import load_config
from segcls.modeling.backbone import TimmBackbone
from segcls.utils.io import atomic_write


def convert(model, path: str, layout: str = "", allow_partial: bool = False):
    """({name: tensor} for the model's state dict, description) from the checkpoint at ``path``."""
    state = read_checkpoint(path)
    target = model.state_dict()
    try:
        layout = layout or detect_layout(state, target)
    except ConversionError:
        if not isinstance(model.backbone, TimmBackbone):
            raise
        layout = ""
    if layout:
        conversion = convert_state_dict(state, model, path, layout, allow_partial)
        return conversion.tensors, f"{conversion.layout} layout, fills the {conversion.scope}"
    # timm / torchvision / official backbone file: TimmBackbone maps the names and loads it
    unloaded = {"backbone." + k for k in model.backbone.load_pretrained(path, "--input")}
    tensors = {"backbone." + k: v for k, v in model.backbone.state_dict().items()}
    # the trunk must be complete; the output norms (MODEL.TIMM.OUT_NORM) may start fresh
    loaded = {k: v for k, v in tensors.items() if k not in unloaded}
    check_mapping({k: v for k, v in target.items() if not k.startswith("backbone.out_norms.")}, loaded,
                  "backbone", path, allow_partial)  # fmt: skip
    return loaded, "timm backbone file, fills the backbone"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="segcls config of the model (default: segcls defaults)")
    parser.add_argument("--input", required=True, help="local checkpoint (.pth/.pt/.bin/.safetensors) or HF folder")
    parser.add_argument("--output", required=True, help="detectron2 checkpoint to write (.pth)")
    parser.add_argument("--layout", default="", choices=("",) + LAYOUTS, help="source layout (default: detected)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="write the checkpoint even if some tensors the model expects are left unmapped")  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.TIMM.WEIGHTS = ""  # the input is loaded below, once
    model = build_model(cfg)
    try:
        tensors, description = convert(model, args.input, args.layout, args.allow_partial)
    except (ConversionError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    checkpoint = {
        "model": {k: v.detach().cpu() for k, v in tensors.items()},
        "__author__": f"segcls tools/convert_pretrained.py from {os.path.basename(os.path.normpath(args.input))}",
        "matching_heuristics": False,
    }
    with atomic_write(args.output) as f:
        torch.save(checkpoint, f)
    total = sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))
    mapped = sum(1 for k in tensors if not k.endswith("num_batches_tracked"))
    print(f"wrote {args.output}: {mapped} of the model's {total} tensors mapped ({description})")
    print(f"use it with MODEL.WEIGHTS {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
