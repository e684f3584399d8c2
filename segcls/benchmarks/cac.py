"""
Cost of the context-aware classifier (CAC, issue 7): the same segmentation model with its ordinary
1x1 classifier and with ``ContextAwareClassifier``, measured in one run on CPU.

- Inference (batch 1, eval mode, the full ``PerPixelSegmentor`` forward: normalisation, backbone,
  head, classifier, resize to the image size) at each ``--sizes`` (default 512 and 1024): time and
  peak memory, interleaved (baseline and CAC alternate, in alternating order) and summarised by
  the median; ratios CAC / baseline (the paper reports about +2% time, Tables 1 and 6).
- One training iteration (forward, backward, SGD step; batch ``--train-batch``, crops of
  ``--train-size``): time ratio, measured the same way.

The model is DeepLabV3+-R50 (output stride 8, depthwise-separable ASPP, d = 512, 150 classes)
when ``DeepLabV3PlusHead`` is registered, else FCN-R50 (output stride 8, two 3x3 convs + concat input,
d = 512); ``--quick`` uses ResNet-18 instead of ResNet-50. Both variants share every weight
except CAC's two projectors. Weights are random: the
cost does not depend on them.

Peak memory: glibc's mmap threshold is pinned to 64 KiB (``mallopt``), so every tensor buffer is
its own mapping that goes back to the OS when freed, and the kernel's resident-set high-water mark
is reset before each forward (``/proc/self/clear_refs``); peak = high-water mark - resident set
before the forward. Needs Linux; elsewhere memory is reported as unavailable.

Full run (reported in the issue):   python -m segcls.benchmarks cac
Quick check (tiny sizes):           python -m segcls.benchmarks cac --quick
"""
import statistics

import torch
from detectron2.modeling import build_model

import segcls  # noqa: F401  (registers everything)
from segcls.engine import load_config
from segcls.modeling import DECODE_HEAD_REGISTRY

from . import argument_parser
from .measure import PeakMemory, interleaved, write_json
from .model_api import CAC_PROJECTOR_PREFIX

NUM_CLASSES = 150


def model_opts(depth=50):
    """(name, config overrides) of the benchmarked model."""
    opts = [
        "MODEL.DEVICE", "cpu",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES),
        "MODEL.RESNETS.DEPTH", str(depth),
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "256" if depth >= 50 else "64",
        "MODEL.RESNETS.STEM_TYPE", "deeplab",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "64",
        "MODEL.RESNETS.OUTPUT_STRIDE", "8",
        "MODEL.DECODE_HEAD.CHANNELS", "512",
        "MODEL.AUX_HEAD.ENABLED", "False",
    ]
    if "DeepLabV3PlusHead" in DECODE_HEAD_REGISTRY:
        return f"DeepLabV3+-R{depth}-D8", opts + [
            "MODEL.DECODE_HEAD.NAME", "DeepLabV3PlusHead",
            "MODEL.DECODE_HEAD.IN_FEATURES", "['res2', 'res5']",
            "MODEL.DECODE_HEAD.ASPP.SEPARABLE", "True",
        ]
    return f"FCN-R{depth}-D8", opts + [
        "MODEL.DECODE_HEAD.NAME", "FCNHead",
        "MODEL.DECODE_HEAD.NUM_CONVS", "2",
        "MODEL.DECODE_HEAD.CONCAT_INPUT", "True",
    ]


def build_pair(opts):
    """(baseline, CAC) models with identical weights apart from CAC's projectors."""
    torch.manual_seed(0)
    base = build_model(load_config("", opts + ["MODEL.CLASSIFIER.NAME", "LinearClassifier"]))
    cac = build_model(load_config("", opts + ["MODEL.CLASSIFIER.NAME", "ContextAwareClassifier"]))
    missing, unexpected = cac.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(CAC_PROJECTOR_PREFIX) for k in missing), (missing, unexpected)
    return base, cac


def medians(samples):
    """{name: [(seconds, peak bytes or None), ...]} -> {name: (median seconds, median peak or None)}."""
    out = {}
    for name, values in samples.items():
        mems = [m for _, m in values if m is not None]
        out[name] = (statistics.median(t for t, _ in values), statistics.median(mems) if mems else None)
    return out


def synthetic_batch(size, batch, with_labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        item = {"image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)}
        if with_labels:
            label = torch.randint(0, NUM_CLASSES, (size // 32 + 1, size // 32 + 1), generator=g)
            label = label.repeat_interleave(32, 0).repeat_interleave(32, 1)[:size, :size].contiguous()
            label[: size // 16] = 255
            item["sem_seg"] = label
        inputs.append(item)
    return inputs


def main(argv=None):
    parser = argument_parser("cac", __doc__)
    parser.add_argument("--quick", action="store_true", help="smoke test: ResNet-18, tiny sizes, 3 repeats, 1 thread")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="inference image sides")
    parser.add_argument("--repeats", type=int, default=7, help="measured runs per variant and size")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per variant first")
    parser.add_argument("--train-size", type=int, default=512, help="training crop side")
    parser.add_argument("--train-batch", type=int, default=2, help="training batch (>= 2 for BatchNorm)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.warmup, args.train_size, args.threads = [64, 96], 3, 1, 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    meter = PeakMemory()
    name, opts = model_opts(18 if args.quick else 50)
    base, cac = build_pair(opts)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("base", base), ("cac", cac))}
    print(f"{name}, {NUM_CLASSES} classes, CPU, {torch.get_num_threads()} threads; parameters "
          f"{params['base']:,} -> {params['cac']:,} (+{params['cac'] - params['base']:,})")
    results = {"model": name, "threads": torch.get_num_threads(), "params": params, "inference": {}, "train": {}}

    base.eval()
    cac.eval()
    for size in args.sizes:
        batch = synthetic_batch(size, 1, with_labels=False)

        def infer(model):
            def run():
                with torch.inference_mode():
                    model(batch)
            return run

        r = medians(interleaved({"base": infer(base), "cac": infer(cac)}, args.repeats, args.warmup, meter.measure))
        (tb, mb), (tc, mc) = r["base"], r["cac"]
        results["inference"][size] = {"base_s": tb, "cac_s": tc, "time_ratio": tc / tb, "base_peak_bytes": mb,
                                      "cac_peak_bytes": mc, "memory_ratio": mc / mb if mb else None}
        mem = f"peak {mb / 2**20:.1f} -> {mc / 2**20:.1f} MiB (x{mc / mb:.3f})" if mb else "peak memory n/a"
        print(f"inference {size}x{size}: {tb * 1e3:.1f} -> {tc * 1e3:.1f} ms (x{tc / tb:.3f}); {mem}")

    base.train()
    cac.train()
    batch = synthetic_batch(args.train_size, args.train_batch, with_labels=True)

    def step(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def run():
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run

    r = medians(interleaved({"base": step(base), "cac": step(cac)}, args.repeats, args.warmup, meter.measure))
    (tb, _), (tc, _) = r["base"], r["cac"]
    results["train"] = {"size": args.train_size, "batch": args.train_batch, "base_s": tb, "cac_s": tc, "time_ratio": tc / tb}
    print(f"training iteration {args.train_batch}x{args.train_size}x{args.train_size}: "
          f"{tb * 1e3:.1f} -> {tc * 1e3:.1f} ms (x{tc / tb:.3f})")
    write_json(args.json, results)
    return results
