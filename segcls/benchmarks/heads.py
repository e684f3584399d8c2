"""
Benchmarks of the DeepLab / KSAC / PSP / UperNet / CAA decode heads.

    python -m segcls.benchmarks heads                   # full sizes: minutes, run on a quiet machine
    python -m segcls.benchmarks heads --quick           # tiny sizes, checks that the script works
    python -m segcls.benchmarks heads --sections caa --device cuda --json out.json

Sections:

- ``flops``: parameters and FLOPs (fvcore; fvcore counts one multiply-add as one flop) of the head
  of each ``configs/ade20k/*_80k.yaml`` (and of ASPP built exactly as the KSAC config, for a like for
  like comparison) with ResNet-101 at output stride 8 on 512x512 and at output stride 16 on 513x513.
  Sharing KSAC's kernel saves parameters but not convolution FLOPs (each rate still runs a dilated
  pass); the thesis' FLOPs claim (Table 2.1) is printed next to the measured difference.
- ``deeplab``: DeepLabV3-R50 of segcls against torchvision's
  ``deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False)``, configured
  identically (standard 7x7 stem, output stride 8, rates 12/24/36, BN, 256 channels, projection
  dropout 0.5, 21 classes; parameter counts are checked equal). Times forward (eval, no grad, logits
  upsampled to the input) and forward+backward (train mode, cross-entropy at input size) of the two
  networks interleaved in one run; medians of ``--repeats`` and their ratio segcls / torchvision.
- ``caa``: channelized axial attention at N=2, C=512, 64x64: collapsed vs grouped (several G) vs
  ungrouped (G = 1, whose 5-D intermediate alone is 1 GiB), plus plain axial attention for
  reference; forward (no grad) and forward+backward, each variant in a fresh subprocess: median
  time and peak memory (CPU: growth of the peak resident set over the process's size after setup; CUDA:
  ``torch.cuda.max_memory_allocated`` growth).
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone, build_model
from fvcore.nn import parameter_count
from tabulate import tabulate
from torchvision.models.segmentation import deeplabv3_resnet50

import segcls  # noqa: F401  (registers the heads)
from segcls.engine.defaults import load_config
from segcls.modeling.heads.caa import ChannelizedAttention

from . import CONFIGS, argument_parser
from .measure import (
    count_flops,
    interleave,
    proc_status_bytes,
    reset_peak_rss,
    run_python,
    synchronize,
    timed,
    write_json,
)
from .model_api import HeadAndClassifier, logits_at_input_size

CONFIG_DIR = CONFIGS / "ade20k"
# (label, config file, extra overrides)
HEADS = [
    ("ASPPHead (DeepLabV3)", "deeplabv3_r50-d8_512x512_80k.yaml", []),
    ("ASPPHead built as KSAC", "ksac_r50-d8_512x512_80k.yaml", ["MODEL.DECODE_HEAD.NAME", "ASPPHead"]),
    ("KSACHead", "ksac_r50-d8_512x512_80k.yaml", []),
    ("DeepLabV3PlusHead", "deeplabv3plus_r50-d8_512x512_80k.yaml", []),
    ("PSPHead", "pspnet_r50-d8_512x512_80k.yaml", []),
    ("UPerHead", "upernet_r50_512x512_80k.yaml", []),
    ("CAAHead", "caa_r50-d8_512x512_80k.yaml", []),
]
# Thesis Sec. 2.4.2: KSAC saves "about 2.73G FLOPs" at OS 16 and "about 12.65G" at OS 8 (Table 2.1).
THESIS_KSAC_SAVING = {16: 2.73, 8: 12.65}
TINY = [
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.DECODE_HEAD.CHANNELS", 16,
    "MODEL.DECODE_HEAD.CAA.OUT_CHANNELS", 16,
    "MODEL.DECODE_HEAD.CAA.KEY_CHANNELS", 8,
    "MODEL.DECODE_HEAD.DEEPLABV3PLUS.LOW_LEVEL_CHANNELS", 8,
]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# (a) parameters and FLOPs
# ------------------------------------------------------------------------------------------------
def flops_section(args):
    depth = 18 if args.quick else 101
    settings = [(8, 64), (16, 65)] if args.quick else [(8, 512), (16, 513)]
    rows, results = [], []
    for stride, size in settings:
        common = ["MODEL.DEVICE", args.device, "MODEL.RESNETS.OUTPUT_STRIDE", stride, "MODEL.RESNETS.DEPTH", depth]
        common += TINY if args.quick else []
        cfg = load_config(str(CONFIG_DIR / HEADS[0][1]), common)
        backbone = build_backbone(cfg).eval()
        x = torch.randn(1, 3, size, size, device=args.device)
        with torch.no_grad():
            features = backbone(x)
        backbone_flops = count_flops(backbone, (x,)).total()
        backbone_params = parameter_count(backbone)[""]
        setting = f"R{depth} OS{stride} {size}x{size}"
        print(f"{setting}: backbone {backbone_params / 1e6:.2f} M params, {backbone_flops / 1e9:.2f} GFLOPs", flush=True)
        for label, config, extra in HEADS:
            cfg = load_config(str(CONFIG_DIR / config), common + extra)
            names = [n for n in ("res2", "res3", "res4", "res5") if n in features]
            model = HeadAndClassifier.from_config(cfg, names, backbone.output_shape()).to(args.device).eval()
            flops = count_flops(model, tuple(features[n] for n in names)).by_module()
            result = {
                "setting": setting,
                "output_stride": stride,
                "head": label,
                "head_params_M": parameter_count(model.head)[""] / 1e6,
                "head_GFLOPs": flops["head"] / 1e9,
                "classifier_GFLOPs": flops["classifier"] / 1e9,
                "total_GFLOPs": (backbone_flops + flops[""]) / 1e9,
            }
            results.append(result)
            rows.append([result[k] for k in result if k != "output_stride"])
            print(f"  {label}: {result['head_params_M']:.3f} M params, {result['head_GFLOPs']:.2f} GFLOPs", flush=True)
    print(
        tabulate(
            rows,
            headers=["setting", "head", "head params (M)", "head GFLOPs", "classifier GFLOPs", "total GFLOPs"],
            floatfmt=".3f",
        )
    )
    by_key = {(r["output_stride"], r["head"]): r for r in results}
    for stride, _ in settings:
        aspp, ksac = by_key[(stride, "ASPPHead built as KSAC")], by_key[(stride, "KSACHead")]
        print(
            f"OS{stride}: KSAC vs ASPP built the same way: {1e6 * (aspp['head_params_M'] - ksac['head_params_M']):,.0f} "
            f"fewer parameters, {aspp['head_GFLOPs'] - ksac['head_GFLOPs']:.4f} GFLOPs fewer measured "
            f"(thesis Table 2.1 claims ~{THESIS_KSAC_SAVING[stride]} GFLOPs saved)"
        )
    return results


# ------------------------------------------------------------------------------------------------
# (b) DeepLabV3-R50: segcls vs torchvision
# ------------------------------------------------------------------------------------------------
def build_deeplab_pair(device, extra_opts=()):
    """segcls's DeepLabV3-R50-D8 (with the config options ``extra_opts``) and torchvision's."""
    cfg = load_config(
        opts=[
            "MODEL.DEVICE", device,
            "MODEL.RESNETS.DEPTH", 50,
            "MODEL.RESNETS.STEM_TYPE", "basic",
            "MODEL.RESNETS.STEM_OUT_CHANNELS", 64,
            "MODEL.RESNETS.OUTPUT_STRIDE", 8,
            "MODEL.RESNETS.NORM", "BN",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 21,
            "MODEL.DECODE_HEAD.NAME", "ASPPHead",
            "MODEL.DECODE_HEAD.CHANNELS", 256,
            "MODEL.DECODE_HEAD.ASPP.RATES", [12, 24, 36],
            "MODEL.DECODE_HEAD.ASPP.MERGE", "concat_project",
            "MODEL.DECODE_HEAD.ASPP.DROPOUT", 0.5,
            "MODEL.CLASSIFIER.DROPOUT", 0.0,
        ]
        + list(extra_opts)
    )  # fmt: skip
    ours = build_model(cfg)
    theirs = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=21).to(device)
    return ours, theirs


def deeplab_section(args):
    size, batch = (64, 2) if args.quick else (args.size, args.batch)
    ours, theirs = build_deeplab_pair(args.device)
    n_ours, n_theirs = parameter_count(ours)[""], parameter_count(theirs)[""]
    print(f"parameters: segcls {n_ours:,}, torchvision {n_theirs:,}" + ("" if n_ours == n_theirs else "  (DIFFER!)"))
    x = torch.randn(batch, 3, size, size, device=args.device)
    target = torch.randint(0, 21, (batch, size, size), device=args.device)
    forwards = {
        "segcls": lambda: logits_at_input_size(ours, x),
        "torchvision": lambda: theirs(x)["out"],
    }
    models = {"segcls": ours, "torchvision": theirs}
    times = {(name, mode): [] for name in models for mode in ("forward", "forward+backward")}

    def forward_only(name):
        models[name].eval()
        with torch.no_grad():
            forwards[name]()

    def forward_backward(name):
        models[name].train()
        F.cross_entropy(forwards[name](), target).backward()

    for rep, order, measured in interleave(models, args.repeats, args.warmup):
        for name in order:
            t_fwd = timed(lambda: forward_only(name), args.device)
            models[name].zero_grad(set_to_none=True)
            t_bwd = timed(lambda: forward_backward(name), args.device)
            if measured:
                times[name, "forward"].append(t_fwd)
                times[name, "forward+backward"].append(t_bwd)
        print(f"  repeat {rep + 1}/{args.warmup + args.repeats} done", flush=True)
    results, rows = [], []
    for mode in ("forward", "forward+backward"):
        for stat, fn in (("median", statistics.median), ("min", min)):
            ours_t, theirs_t = fn(times["segcls", mode]), fn(times["torchvision", mode])
            results.append(
                {"mode": mode, "statistic": stat, "segcls_s": ours_t, "torchvision_s": theirs_t, "ratio": ours_t / theirs_t}
            )
            rows.append([mode, stat, ours_t, theirs_t, ours_t / theirs_t])
    print(f"DeepLabV3-R50, batch {batch}, {size}x{size}, {args.device}, {args.repeats} repeats:")
    print(tabulate(rows, headers=["", "", "segcls (s)", "torchvision (s)", "ratio (target <= 1.05)"], floatfmt=".4f"))
    return results


# ------------------------------------------------------------------------------------------------
# (c) CAA: collapsed vs grouped vs ungrouped
# ------------------------------------------------------------------------------------------------
def caa_variants(height, quick):
    groups = [16, 4, 1] if quick else [height, 16, 4, 1]
    return ["axial", "collapsed"] + [f"grouped:{g}" for g in groups]


def caa_worker(args):
    """Run one CAA variant/mode in this (fresh) process and print a JSON line with its time and peak memory."""
    variant, mode = args.caa_worker
    n, c, h, w = args.caa_shape
    torch.manual_seed(0)
    implementation, _, groups = variant.partition(":")
    att = ChannelizedAttention(
        c,
        64,
        channelized=variant != "axial",
        gate_hidden=c // 4,
        implementation="grouped" if implementation == "grouped" else "collapsed",
        groups=int(groups or 1),
    ).to(args.device)
    x = torch.randn(n, c, h, w, device=args.device)

    def step():
        if mode == "forward":
            att.eval()
            with torch.no_grad():
                att(x)
        else:
            att.train()
            att.zero_grad(set_to_none=True)
            att(x).sum().backward()

    cuda = args.device.startswith("cuda")
    synchronize(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = proc_status_bytes("VmRSS")
    times = [timed(step, args.device) for _ in range(args.warmup + args.repeats)][args.warmup :]
    peak = torch.cuda.max_memory_allocated() if cuda else proc_status_bytes("VmHWM")
    print(json.dumps({"time_s": statistics.median(times), "peak_MiB": (peak - base) / 2**20}))


def caa_section(args):
    shape = [2, 64, 16, 16] if args.quick else [2, 512, 64, 64]
    results, rows = [], []
    for variant in caa_variants(shape[2], args.quick):
        row = {"variant": variant}
        for mode in ("forward", "forward+backward"):
            cmd = ["-m", "segcls.benchmarks", "heads", "--caa-worker", variant, mode, "--caa-shape", *map(str, shape)]
            cmd += ["--device", args.device, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            out = run_python(cmd)
            if out.returncode:
                row[mode] = {"error": out.stderr.strip().splitlines()[-1] if out.stderr else f"exit {out.returncode}"}
            else:
                row[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {variant} {mode}: {row[mode]}", flush=True)
        results.append(row)

        def cell(mode, key):
            return row[mode].get(key, row[mode].get("error"))

        rows.append([variant] + [cell(m, k) for m in ("forward", "forward+backward") for k in ("time_s", "peak_MiB")])
    print(f"CAA attention, N={shape[0]} C={shape[1]} {shape[2]}x{shape[3]}, {args.device}, median of {args.repeats}:")
    print(
        tabulate(
            rows,
            headers=["variant", "fwd time (s)", "fwd peak (MiB)", "fwd+bwd time (s)", "fwd+bwd peak (MiB)"],
            floatfmt=".3f",
        )
    )
    return results


def main(argv=None):
    parser = argument_parser("heads", __doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script works")
    parser.add_argument("--sections", nargs="+", default=["flops", "deeplab", "caa"], choices=["flops", "deeplab", "caa"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512, help="DeepLabV3 timing: image size")
    parser.add_argument("--batch", type=int, default=2, help="DeepLabV3 timing: batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (medians are reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repeats first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--caa-worker", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--caa-shape", nargs=4, type=int, metavar=("N", "C", "H", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.caa_worker:
        return caa_worker(args)
    sections = {"flops": flops_section, "deeplab": deeplab_section, "caa": caa_section}
    results = {"device": args.device, "threads": torch.get_num_threads(), "quick": args.quick}
    for name in args.sections:
        print(f"=== {name} ===", flush=True)
        results[name] = sections[name](args)
    write_json(args.json, results)
    return results
