"""
Training cost of CAR: iteration time and peak memory with CAR vs without, same model, one run.

The two models share the architecture (CAR's 1x1 projection and change "A" in both), the initial
weights and the inputs; they differ only in ``MODEL.REGULARIZERS.NAMES``. Iterations (forward,
backward, SGD step) of the two alternate, the order flipping every repeat; the medians give the
ratios CAR / no CAR (the issue's target: <= 1.05; the thesis reports +0.15% training FLOPs).

Also: the training forward FLOPs of one image (fvcore's count, a multiply-add = 1, losses
included), the thesis' measure (Table 4.4: +0.24 GFLOPs on 167.41 for ResNet-50 + CAR at 513x513).

Peak memory (CPU, Linux): the peak resident set size during one iteration minus the resident size
before it (``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``), with glibc's
dynamic mmap threshold pinned so that freed tensors go back to the system. The kernel's RSS
accounting is exact to some tens of KiB only: meaningful at full size, noise with ``--quick``.

    # the paper's setting: R50-D8 + self-attention (FCN if NonLocalHead is not registered),
    # 513x513, batch 2, CPU (about a minute per iteration and model on 16 cores)
    python -m segcls.benchmarks car --repeats 5 --output benchmark_car.json
    python -m segcls.benchmarks car --quick          # tiny R18 model at 64x64, seconds
"""
import argparse
import os
import statistics

import torch
from detectron2.modeling import build_model

import segcls  # noqa: F401  (registers modules)
from segcls.engine import load_config
from segcls.modeling import DECODE_HEAD_REGISTRY

from . import CONFIGS as _CONFIG_ROOT
from . import argument_parser
from .measure import PeakMemory, count_flops, interleave, write_json
from .model_api import regularizer_names

CONFIGS = _CONFIG_ROOT / "car" / "pascal_context_59"
CPU_OVERRIDES = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.DECODE_HEAD.NORM", "BN"]
QUICK_OVERRIDES = [
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.DECODE_HEAD.CHANNELS", "32",
]  # fmt: skip


def parse_args(argv=None):
    parser = argument_parser("car", __doc__)
    parser.add_argument("--quick", action="store_true", help="tiny R18 model at 64x64 (smoke test)")
    parser.add_argument("--size", type=int, default=0, help="square crop size (default 513, 64 with --quick)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--repeats", type=int, default=0, help="timed iterations per model (default 5, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per model first")
    parser.add_argument("--config-file", default="", help="CAR config (default: Self-Attention + CAR, or FCN + CAR)")
    parser.add_argument("--output", default="", help="also write the results as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both models")
    return parser.parse_args(argv)


def default_config():
    name = "nonlocal_r50_car.yaml" if "NonLocalHead" in DECODE_HEAD_REGISTRY else "fcn_r50_car.yaml"
    return str(CONFIGS / name)


def make_batch(size, batch, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "sem_seg": torch.randint(0, num_classes, (size, size), generator=g),
        }
        for _ in range(batch)
    ]


class _TrainingLoss(torch.nn.Module):
    """(image, label) -> the model's summed training losses, for fvcore's tracer."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image, label):
        return sum(self.model([{"image": image, "sem_seg": label}]).values())


def training_gflops(model, item):
    return count_flops(_TrainingLoss(model), (item["image"], item["sem_seg"])).total() / 1e9


def train_step(model, optimizer, batch):
    """A callable running one iteration (forward, backward, SGD step)."""

    def run():
        optimizer.zero_grad(set_to_none=True)
        losses = model(batch)
        sum(losses.values()).backward()
        optimizer.step()

    return run


def main(argv=None):
    args = parse_args(argv)
    size = args.size or (64 if args.quick else 513)
    repeats = args.repeats or (3 if args.quick else 5)
    config = args.config_file or default_config()
    common = CPU_OVERRIDES + (QUICK_OVERRIDES if args.quick else []) + list(args.opts)
    meter = PeakMemory(mmap_threshold=128 * 1024, trim_threshold=128 * 1024)
    models = {}
    for variant, extra in (("no_car", ["MODEL.REGULARIZERS.NAMES", "[]"]), ("car", [])):
        cfg = load_config(config, common + extra)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        models[variant] = (model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    assert regularizer_names(models["car"][0]) == ["CARRegularizer"], config
    assert regularizer_names(models["no_car"][0]) == []
    batch = make_batch(size, args.batch, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    gflops = {v: training_gflops(m, batch[0]) for v, (m, _) in models.items()}
    times, memory = {v: [] for v in models}, {v: [] for v in models}
    for i, order, measured in interleave(models, repeats, args.warmup):
        for variant in order:
            torch.manual_seed(i)  # same dropout masks for both models
            seconds, peak = meter.measure(train_step(*models[variant], batch))
            if measured:
                times[variant].append(seconds)
                memory[variant].append(peak)
    med_t = {v: statistics.median(t) for v, t in times.items()}
    med_m = {v: statistics.median(m) for v, m in memory.items()}
    result = {
        "config": os.path.relpath(config),
        "head": cfg.MODEL.DECODE_HEAD.NAME,
        "depth": cfg.MODEL.RESNETS.DEPTH,
        "size": size,
        "batch": args.batch,
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "seconds_per_iter": times,
        "peak_extra_mib": {v: [b / 2**20 for b in m] for v, m in memory.items()},
        "median_seconds": med_t,
        "median_peak_extra_mib": {v: m / 2**20 for v, m in med_m.items()},
        "train_forward_gflops_per_image": gflops,
        "flops_ratio": gflops["car"] / gflops["no_car"],
        "time_ratio": med_t["car"] / med_t["no_car"],
        "memory_ratio": med_m["car"] / med_m["no_car"] if med_m["no_car"] > 0 else float("nan"),
    }
    print(
        f"{result['head']} R{result['depth']}, {size}x{size}, batch {args.batch}, {repeats} repeats, "
        f"{result['threads']} threads\n"
        f"  iteration time  no CAR {med_t['no_car']:.3f} s   CAR {med_t['car']:.3f} s   "
        f"ratio {result['time_ratio']:.4f}\n"
        f"  peak memory     no CAR {med_m['no_car'] / 2**20:.1f} MiB   CAR {med_m['car'] / 2**20:.1f} MiB   "
        f"ratio {result['memory_ratio']:.4f}\n"
        f"  train FLOPs/img no CAR {gflops['no_car']:.3f} G   CAR {gflops['car']:.3f} G   "
        f"ratio {result['flops_ratio']:.4f}"
    )
    write_json(args.output, result)
    return result
