"""
Training cost of CSFRN (issue 12): iteration time, peak memory and training FLOPs of DeepLabV3+ on
a dilated ResNet-50 (output stride 8) with the full CSFRN (CSFLM + AAM, the Class-Aware Consistency
and smooth losses) vs the same model without it, measured in one run.

The two models are the shipped configs ``configs/cityscapes/csfrn_deeplabv3plus_r50_baseline.yaml``
and ``csfrn_deeplabv3plus_r50_csflm_aam.yaml`` (Cityscapes, 19 classes) with BN in place of SyncBN
and random weights; they get the same inputs. How time, peak memory and FLOPs are measured:
:mod:`segcls.benchmarks.training_cost`.

    python -m segcls.benchmarks csfrn --output benchmark_csfrn.json    # 512x512, batch 2
    python -m segcls.benchmarks csfrn --quick                          # tiny R18 model at 64x64
"""
import argparse
import os

import torch
from detectron2.modeling import build_model

import segcls  # noqa: F401  (registers modules)
from segcls.engine import load_config

from . import CONFIGS as _CONFIG_ROOT
from .measure import write_json
from .training_cost import compare_training, make_batch, report, resolve_sizes, training_cost_parser

CONFIGS = _CONFIG_ROOT / "cityscapes"
VARIANTS = {"baseline": "csfrn_deeplabv3plus_r50_baseline.yaml", "csfrn": "csfrn_deeplabv3plus_r50_csflm_aam.yaml"}
CPU_OVERRIDES = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.NORM", "BN", "MODEL.DECODE_HEAD.NORM", "BN", "MODEL.CSFRN.NORM", "BN", "MODEL.CSFRN.AAM.NORM", "BN",
]  # fmt: skip
def parse_args(argv=None):
    parser = training_cost_parser("csfrn", __doc__, default_size=512)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both models")
    return parser.parse_args(argv)


def build_models(opts):
    """{"baseline": model, "csfrn": model} in train mode, from the two shipped configs + ``opts``."""
    models = {}
    for name, config in VARIANTS.items():
        cfg = load_config(str(CONFIGS / config), CPU_OVERRIDES + list(opts))
        torch.manual_seed(0)
        models[name] = build_model(cfg).train()
    return models, cfg


def main(argv=None):
    args = parse_args(argv)
    size, repeats, opts = resolve_sizes(args, default_size=512)
    models, cfg = build_models(opts)
    batch = make_batch(size, args.batch, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    result = {
        "configs": {name: os.path.relpath(CONFIGS / config) for name, config in VARIANTS.items()},
        "head": cfg.MODEL.DECODE_HEAD.NAME,
        "depth": cfg.MODEL.RESNETS.DEPTH,
        "size": size,
        "batch": args.batch,
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        "params_m": {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in models.items()},
        **compare_training(models, "baseline", "csfrn", batch, repeats, args.warmup),
    }
    print(
        f"DeepLabV3+ R{result['depth']} (+ CSFLM + AAM), {size}x{size}, batch {args.batch}, {repeats} repeats, "
        f"{result['threads']} threads\n" + report(result, "baseline", "csfrn", ("baseline", "CSFRN"))
    )
    write_json(args.output, result)
    return result
