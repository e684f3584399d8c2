#!/usr/bin/env python
"""
Convert a local pretrained backbone checkpoint (timm, torchvision or official release; .pth or
.safetensors) into a detectron2 checkpoint for a segcls config, to pass as MODEL.WEIGHTS:

    python tools/convert_pretrained.py --config-file configs/backbones/swin_tiny.yaml \\
        --input swin_tiny_patch4_window7_224.pth --output swin_tiny_d2.pth [KEY VALUE ...]

The backbone of the config is built (``build_timm_backbone``: names mapped as for
MODEL.TIMM.WEIGHTS; ``build_resnet_dilated_backbone``: torchvision ResNet names mapped to
detectron2's), the checkpoint loaded with shape checks and a report of missing/unexpected keys,
and ``{"model": {"backbone.<name>": tensor}, "__author__": ..., "matching_heuristics": False}``
written with torch.save.
"""
import argparse
import logging
import os

import torch
from detectron2.modeling import build_backbone

import segcls  # noqa: F401  (registers the backbones)
from segcls.engine.defaults import load_config
from segcls.modeling.backbone.weights import detectron2_checkpoint, load_backbone_weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="segcls config of the backbone (default: segcls defaults)")
    parser.add_argument("--input", required=True, help="local checkpoint (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("--output", required=True, help="detectron2 checkpoint to write (.pth)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.TIMM.WEIGHTS = ""  # the input is loaded below, once
    backbone = build_backbone(cfg)
    load_backbone_weights(backbone, args.input, "--input")
    author = f"segcls tools/convert_pretrained.py from {os.path.basename(args.input)}"
    checkpoint = detectron2_checkpoint(backbone, author)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save(checkpoint, args.output)
    print(f"wrote {args.output}: {len(checkpoint['model'])} tensors of {cfg.MODEL.BACKBONE.NAME}")
    print(f"use it with MODEL.WEIGHTS {args.output}")


if __name__ == "__main__":
    main()
