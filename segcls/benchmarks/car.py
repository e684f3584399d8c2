"""
Training cost of CAR: iteration time and peak memory with CAR vs without, same model, one run.

The two models share the architecture (CAR's 1x1 projection and change "A" in both), the initial
weights and the inputs; they differ only in ``MODEL.REGULARIZERS.NAMES``. How time, peak memory
and FLOPs are measured: :mod:`segcls.benchmarks.training_cost`. The issue's target: time ratio
<= 1.05; the thesis reports +0.15% training FLOPs (Table 4.4: +0.24 GFLOPs on 167.41 for
ResNet-50 + CAR at 513x513).

    # the paper's setting: R50-D8 + self-attention (FCN if NonLocalHead is not registered),
    # 513x513, batch 2, CPU (about a minute per iteration and model on 16 cores)
    python -m segcls.benchmarks car --repeats 5 --output benchmark_car.json
    python -m segcls.benchmarks car --quick          # tiny R18 model at 64x64, seconds
"""
import argparse
import os

import torch
from detectron2.modeling import build_model

import segcls  # noqa: F401  (registers modules)
from segcls.engine import load_config
from segcls.modeling import DECODE_HEAD_REGISTRY

from . import CONFIGS as _CONFIG_ROOT
from .measure import write_json
from .training_cost import compare_training, make_batch, report, resolve_sizes, training_cost_parser
from .model_api import regularizer_names

CONFIGS = _CONFIG_ROOT / "car" / "pascal_context_59"
CPU_OVERRIDES = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.DECODE_HEAD.NORM", "BN"]


def parse_args(argv=None):
    parser = training_cost_parser("car", __doc__, default_size=513)
    parser.add_argument("--config-file", default="", help="CAR config (default: Self-Attention + CAR, or FCN + CAR)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both models")
    return parser.parse_args(argv)


def default_config():
    name = "nonlocal_r50_car.yaml" if "NonLocalHead" in DECODE_HEAD_REGISTRY else "fcn_r50_car.yaml"
    return str(CONFIGS / name)


def main(argv=None):
    args = parse_args(argv)
    size, repeats, opts = resolve_sizes(args, default_size=513)
    config = args.config_file or default_config()
    common = CPU_OVERRIDES + opts
    models = {}
    for variant, extra in (("no_car", ["MODEL.REGULARIZERS.NAMES", "[]"]), ("car", [])):
        cfg = load_config(config, common + extra)
        torch.manual_seed(0)
        models[variant] = build_model(cfg).train()
    assert regularizer_names(models["car"]) == ["CARRegularizer"], config
    assert regularizer_names(models["no_car"]) == []
    batch = make_batch(size, args.batch, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    result = {
        "config": os.path.relpath(config),
        "head": cfg.MODEL.DECODE_HEAD.NAME,
        "depth": cfg.MODEL.RESNETS.DEPTH,
        "size": size,
        "batch": args.batch,
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        **compare_training(models, "no_car", "car", batch, repeats, args.warmup),
    }
    print(
        f"{result['head']} R{result['depth']}, {size}x{size}, batch {args.batch}, {repeats} repeats, "
        f"{result['threads']} threads\n" + report(result, "no_car", "car", ("no CAR", "CAR"))
    )
    write_json(args.output, result)
    return result
