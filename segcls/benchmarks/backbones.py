"""
Parameters and FLOPs at 512x512 of the backbones the papers use, built from configs/backbones,
next to the numbers the papers / timm report for the ImageNet classification models.

    python -m segcls.benchmarks backbones            # every variant (builds Swin-L, ConvNeXt-L, B7: slow on CPU)
    python -m segcls.benchmarks backbones --quick    # MobileNetV2, ResNet-50-D, HRNet-W18, Swin-T
    python -m segcls.benchmarks backbones --variants Swin-B HRNet-W48

Columns:
- "params": the segcls backbone (timm ``features_only``: no classifier, no classification head
  layers) and, for the comparison with the reference, the full timm classification model
  (counted on the meta device, no memory).
- "GMACs@512": fvcore's count for one 512x512 image, one multiply-add = 1 (fvcore's "flop", the
  unit papers call FLOPs or MAdds), at output stride 32 and, for dilatable CNNs, 8 (as the
  papers run them). timm's fused attention is disabled so fvcore sees Swin's attention matmuls.
- "ref": the classification model's parameters and multiply-adds at its own resolution, and that
  count scaled by (512 / res)^2: a rough expectation only (classification heads, e.g.
  EfficientNet's 1x1 conv_head and HRNet's incre/downsample layers, are not in the backbone;
  Swin pads 128x128 stage-1 maps to multiples of its window).
"""
import logging
import time
from typing import NamedTuple, Optional, Sequence, Tuple

import timm
import torch
from detectron2.modeling import build_backbone
from tabulate import tabulate

import segcls  # noqa: F401  (registers the backbones)
from segcls.engine.defaults import load_config

from . import CONFIGS, argument_parser
from .measure import count_flops


class Reference(NamedTuple):
    params_m: float  # classification model parameters, millions
    gmacs: Optional[float]  # multiply-adds (10^9) at res x res
    res: int
    source: str


class Variant(NamedTuple):
    label: str
    config: str  # under configs/backbones; "" = segcls defaults (detectron2's dilated ResNet)
    opts: Tuple[str, ...]
    dilatable: bool
    ref: Optional[Reference]


_SWIN = "Liu et al. 2021 (Swin), Tab. 1"
_HRNET = "HRNet-Image-Classification README"
_TV = "torchvision model table"
VARIANTS = [
    Variant("Swin-T", "swin_tiny.yaml", (), False, Reference(28, 4.5, 224, _SWIN)),
    Variant("Swin-B (w12)", "swin_base.yaml", (), False, Reference(88, 47.0, 384, _SWIN)),
    Variant("Swin-L (w12)", "swin_large.yaml", (), False, Reference(197, 103.9, 384, _SWIN)),
    Variant("ConvNeXt-L", "convnext_large.yaml", (), True, Reference(198, 34.4, 224, "Liu et al. 2022 (ConvNeXt)")),
    Variant("EfficientNet-B5", "efficientnet_b5.yaml", (), True, Reference(30, 9.9, 456, "Tan & Le 2019, Tab. 2")),
    Variant("EfficientNet-B7", "efficientnet_b7.yaml", (), True, Reference(66, 37.0, 600, "Tan & Le 2019, Tab. 2")),
    Variant("HRNet-W18", "hrnet_w18.yaml", (), False, Reference(21.3, 3.99, 224, _HRNET + " (W18-C)")),
    Variant("HRNet-W48", "hrnet_w48.yaml", (), False, Reference(77.5, 16.1, 224, _HRNET + " (W48-C)")),
    Variant("MobileNetV2", "mobilenetv2.yaml", (), True, Reference(3.4, 0.300, 224, "Sandler et al. 2018, Tab. 4")),
    Variant("ResNet-50", "resnet50d.yaml", ("MODEL.TIMM.NAME", "resnet50"), True, Reference(25.6, 4.1, 224, _TV)),
    Variant("ResNet-101", "resnet50d.yaml", ("MODEL.TIMM.NAME", "resnet101"), True, Reference(44.5, 7.8, 224, _TV)),
    Variant("ResNet-50-D", "resnet50d.yaml", (), True, Reference(25.6, 4.35, 224, "timm results table (resnet50d)")),
    Variant("ResNet-101-D", "resnet101d.yaml", (), True, Reference(44.6, None, 224, "timm (resnet101d)")),
    Variant("ResNet-50 (detectron2)", "", ("MODEL.RESNETS.DEPTH", "50"), True, Reference(25.6, 4.1, 224, _TV)),
]
QUICK = ("MobileNetV2", "ResNet-50-D", "HRNet-W18", "Swin-T")


def _cfg(variant: Variant, output_stride: int):
    path = str(CONFIGS / "backbones" / variant.config) if variant.config else ""
    key = "MODEL.RESNETS.OUTPUT_STRIDE" if not variant.config else "MODEL.TIMM.OUTPUT_STRIDE"
    return load_config(path, list(variant.opts) + [key, str(output_stride)])


def _classifier_params_m(cfg) -> Optional[float]:
    """Parameters of the full timm classification model (None for detectron2's ResNet: torchvision's)."""
    if cfg.MODEL.BACKBONE.NAME != "build_timm_backbone":
        return None
    with torch.device("meta"):
        model = timm.create_model(cfg.MODEL.TIMM.NAME)
    return sum(p.numel() for p in model.parameters()) / 1e6


def measure(variant: Variant, size: int, output_strides: Sequence[int]):
    row = {"backbone": variant.label}
    for output_stride in output_strides:
        cfg = _cfg(variant, output_stride)
        backbone = build_backbone(cfg).eval()
        row.setdefault("model", cfg.MODEL.TIMM.NAME if variant.config else "detectron2 ResNet")
        row.setdefault("params (M)", sum(p.numel() for p in backbone.parameters()) / 1e6)
        row.setdefault("cls model params (M)", _classifier_params_m(cfg))
        start = time.perf_counter()
        with torch.no_grad():
            flops = count_flops(backbone, (torch.zeros(1, 3, size, size),))
            row[f"GMACs@{size} OS{output_stride}"] = flops.total() / 1e9
        logging.info(f"{variant.label} OS{output_stride}: {time.perf_counter() - start:.1f}s")
    ref = variant.ref
    if ref is not None:
        row["ref params (M)"] = ref.params_m
        row["ref GMACs @res"] = f"{ref.gmacs} @{ref.res}" if ref.gmacs is not None else "-"
        row[f"ref scaled to {size}"] = ref.gmacs * (size / ref.res) ** 2 if ref.gmacs is not None else None
        row["source"] = ref.source
    return row


def main(argv=None):
    parser = argument_parser("backbones", __doc__)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--variants", nargs="+", help="labels to run (see VARIANTS)")
    parser.add_argument("--size", type=int, default=512, help="square input size (default 512)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    timm.layers.set_fused_attn(False)  # explicit attention matmuls, which fvcore counts

    labels = args.variants or (QUICK if args.quick else [v.label for v in VARIANTS])
    unknown = sorted(set(labels) - {v.label for v in VARIANTS})
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {[v.label for v in VARIANTS]}")
    rows = []
    for variant in (v for v in VARIANTS if v.label in labels):
        rows.append(measure(variant, args.size, (32, 8) if variant.dilatable else (32,)))
    columns = ["backbone", "model", "params (M)", "cls model params (M)", f"GMACs@{args.size} OS32"]
    columns += [f"GMACs@{args.size} OS8", "ref params (M)", "ref GMACs @res", f"ref scaled to {args.size}", "source"]
    table = [[row.get(c) for c in columns] for row in rows]
    print(tabulate(table, headers=columns, floatfmt=".2f", missingval="-", tablefmt="github"))
    return rows
