#!/usr/bin/env python
"""
Parameters and FLOPs (fvcore) of any segcls model, for single-scale inference on one image.

    python tools/analyze_model.py --config-file configs/ade20k/ecenet_r101.yaml --height 512 --width 512
    python tools/analyze_model.py --config-file CFG --height 640 --width 640 MODEL.ECENET.FR.ENABLED False \\
        MODEL.ECENET.LOSS.DIV_WEIGHT 0.0

The model is built from the config (random weights, eval mode) and run on one (3, H, W) image
through its normal ``list[dict]`` interface, so any meta-architecture works (per-pixel, ECENet,
...). FLOPs follow fvcore's convention, the one the papers' GFLOPs use: one multiply-add counts
as one flop, and operators without an fvcore handle (elementwise ops, softmax, activations, ...)
count as zero; they are listed. ``torchvision::deform_conv2d`` (CSFRN's AAM) is counted like a
convolution of the same shape (:func:`segcls.benchmarks.measure.deform_conv2d_flop_jit`; the bilinear sampling is not
counted, as fvcore counts no elementwise op). Parameters: every parameter of the built model (training-only
parts such as an auxiliary head included; the per-module table shows them separately).
"""
import argparse
import logging

import torch
from detectron2.modeling import build_model
from fvcore.nn import flop_count_table, parameter_count
from torch import nn

import segcls  # noqa: F401  (registers modules)
from segcls.benchmarks.measure import count_flops
from segcls.engine.defaults import load_config


class SingleImageInference(nn.Module):
    """``image`` (3, H, W) -> the model's ``"sem_seg"`` output (K, H, W): a tensor interface for tracing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model([{"image": image}])[0]["sem_seg"]


def analyze(cfg, height: int, width: int, max_depth: int = 2) -> dict:
    """
    Returns ``{"params": int, "flops": int, "table": str (per-module params and flops up to
    max_depth), "unsupported_ops": {op: count}}`` for ``cfg`` at input size (height, width).
    """
    if height < 1 or width < 1:
        raise ValueError(f"--height/--width must be positive, got {height}x{width}")
    model = build_model(cfg).eval()
    wrapper = SingleImageInference(model)
    image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(0)).float()
    with torch.no_grad():
        flops = count_flops(wrapper, (image.to(model.device),))
        total = flops.total()
        table = flop_count_table(flops, max_depth=max_depth)
    return {
        "params": parameter_count(model)[""],
        "flops": total,
        "table": table,
        "unsupported_ops": dict(flops.unsupported_ops()),
        "by_module": dict(flops.by_module()),
    }


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a segcls config file")
    parser.add_argument("--height", type=int, default=512, help="input height (default 512)")
    parser.add_argument("--width", type=int, default=512, help="input width (default 512)")
    parser.add_argument("--max-depth", type=int, default=2, help="module depth of the per-module table")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing 'KEY VALUE' config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    cfg = load_config(args.config_file, args.opts)
    result = analyze(cfg, args.height, args.width, args.max_depth)
    print(result["table"])
    if result["unsupported_ops"]:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(result["unsupported_ops"].items()))
        print(f"Operators counted as 0 flops: {ops}")
    print(
        f"{cfg.MODEL.META_ARCHITECTURE} at {args.height}x{args.width}: "
        f"{result['params'] / 1e6:.4g}M parameters, {result['flops'] / 1e9:.4g} GFLOPs"
    )
    return result


if __name__ == "__main__":
    main()
