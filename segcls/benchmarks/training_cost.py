"""
Training cost of a method vs the same model without it, measured in one run: iteration time
(forward, backward, SGD step), peak memory and training forward FLOPs. Shared by the ``car`` and
``csfrn`` benchmarks.

The variants get the same inputs and, per round, the same RNG state (same dropout masks); their
iterations alternate, the order flipping every round (:func:`~.measure.interleave`), and the
medians give the ratios variant / reference. Peak memory (CPU, Linux): the peak resident set size
during one iteration minus the resident size before it (``/proc/self/status`` VmHWM, reset through
``/proc/self/clear_refs``), with glibc's dynamic mmap threshold pinned so that freed tensors go back
to the system. The kernel's RSS accounting is exact to some tens of KiB only: meaningful at full
size, noise at smoke-test sizes. FLOPs: fvcore's count of the training forward per image (a
multiply-add = 1, losses included).
"""
import argparse
import statistics
from typing import Dict, List, Tuple

import torch

from . import argument_parser
from .measure import PeakMemory, count_flops, interleave

# --quick: a tiny ResNet-18 (and head) instead of the paper's model, for smoke tests
QUICK_OVERRIDES = [
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.DECODE_HEAD.CHANNELS", "32",
]  # fmt: skip


def training_cost_parser(name: str, description: str, default_size: int) -> argparse.ArgumentParser:
    """The options every training-cost benchmark takes (``--quick``, ``--size``, ``--batch``,
    ``--repeats``, ``--warmup``, ``--output``, trailing config overrides); add others before
    parsing."""
    parser = argument_parser(name, description)
    parser.add_argument("--quick", action="store_true", help="tiny R18 model at 64x64 (smoke test)")
    parser.add_argument("--size", type=int, default=0, help=f"square crop size (default {default_size}, 64 with --quick)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--repeats", type=int, default=0, help="timed iterations per model (default 5, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per model first")
    parser.add_argument("--output", default="", help="also write the results as JSON here")
    return parser


def resolve_sizes(args, default_size: int) -> Tuple[int, int, list]:
    """(crop size, repeats, config overrides) of parsed ``args`` (``--quick`` adds
    :data:`QUICK_OVERRIDES` before ``args.opts``)."""
    size = args.size or (64 if args.quick else default_size)
    repeats = args.repeats or (3 if args.quick else 5)
    return size, repeats, (QUICK_OVERRIDES if args.quick else []) + list(args.opts)


def make_batch(size: int, batch: int, num_classes: int, seed: int = 0) -> List[dict]:
    """``batch`` random uint8 images (3, size, size) with random labels in [0, num_classes)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "sem_seg": torch.randint(0, num_classes, (size, size), generator=g),
        }
        for _ in range(batch)
    ]


class _TrainingLoss(torch.nn.Module):
    """(images (B, 3, H, W), labels (B, H, W)) -> the model's summed training losses, for fvcore's
    tracer."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, labels):
        return sum(self.model([{"image": i, "sem_seg": s} for i, s in zip(images, labels)]).values())


def training_gflops(model: torch.nn.Module, batch: List[dict]) -> float:
    """Training forward GFLOPs per image of ``batch`` (fvcore, losses included). The whole batch is
    traced (a batch-norm layer on 1x1 maps, e.g. ASPP's image pooling, needs two images in training)
    and the count divided by its size."""
    images = torch.stack([item["image"] for item in batch])
    labels = torch.stack([item["sem_seg"] for item in batch])
    return count_flops(_TrainingLoss(model), (images, labels)).total() / 1e9 / len(batch)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: List[dict]):
    """A callable running one iteration (forward, backward, SGD step)."""

    def run():
        optimizer.zero_grad(set_to_none=True)
        losses = model(batch)
        sum(losses.values()).backward()
        optimizer.step()

    return run


def compare_training(
    models: Dict[str, torch.nn.Module], reference: str, variant: str, batch: List[dict], repeats: int, warmup: int = 1
) -> dict:
    """Measure ``models`` ({name: model in train mode}) on ``batch``; ratios ``variant`` /
    ``reference``. Returns per-iteration seconds and peak MiB of every round, their medians, the
    training forward GFLOPs per image, and ``time_ratio`` / ``memory_ratio`` / ``flops_ratio``."""
    meter = PeakMemory(mmap_threshold=128 * 1024, trim_threshold=128 * 1024)
    steps = {name: train_step(m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9), batch) for name, m in models.items()}
    gflops = {name: training_gflops(m, batch) for name, m in models.items()}
    times: Dict[str, List[float]] = {name: [] for name in models}
    memory: Dict[str, List[int]] = {name: [] for name in models}
    for i, order, measured in interleave(models, repeats, warmup):
        for name in order:
            torch.manual_seed(i)  # same dropout masks for every model
            seconds, peak = meter.measure(steps[name])
            if measured:
                times[name].append(seconds)
                memory[name].append(peak)
    med_t = {name: statistics.median(t) for name, t in times.items()}
    med_m = {name: statistics.median(m) if None not in m else None for name, m in memory.items()}
    has_memory = med_m[reference] not in (None, 0) and med_m[variant] is not None
    return {
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "seconds_per_iter": times,
        "peak_extra_mib": {name: [b / 2**20 for b in m if b is not None] for name, m in memory.items()},
        "median_seconds": med_t,
        "median_peak_extra_mib": {name: (m / 2**20 if m is not None else None) for name, m in med_m.items()},
        "train_forward_gflops_per_image": gflops,
        "flops_ratio": gflops[variant] / gflops[reference],
        "time_ratio": med_t[variant] / med_t[reference],
        "memory_ratio": med_m[variant] / med_m[reference] if has_memory else float("nan"),
    }


def report(result: dict, reference: str, variant: str, labels: Tuple[str, str]) -> str:
    """Three lines: time, peak memory and FLOPs of both models and their ratio (``labels``: how the
    reference and the variant are named)."""
    t, m, g = result["median_seconds"], result["median_peak_extra_mib"], result["train_forward_gflops_per_image"]
    mem = lambda name: f"{m[name]:.1f} MiB" if m[name] is not None else "n/a"  # noqa: E731
    a, b = labels
    return (
        f"  iteration time  {a} {t[reference]:.3f} s   {b} {t[variant]:.3f} s   ratio {result['time_ratio']:.4f}\n"
        f"  peak memory     {a} {mem(reference)}   {b} {mem(variant)}   ratio {result['memory_ratio']:.4f}\n"
        f"  train FLOPs/img {a} {g[reference]:.3f} G   {b} {g[variant]:.3f} G   ratio {result['flops_ratio']:.4f}"
    )
