"""
Speed and memory of segcls's FCN-ResNet50 (output stride 8) against torchvision's ``fcn_resnet50``
configured to the same architecture, measured in the same run and reported as ratios; plus the
training-iteration time of the demo model.

    python -m segcls.benchmarks fcn                          # 512x512, batch 2, CPU (the BENCHMARKS.md setting)
    python -m segcls.benchmarks fcn --size 128 --repeats 2   # quick check

Both models: standard 7x7 stem, ResNet-50 with stride in the 3x3 conv and dilation 2/4 in
res4/res5, FCN head (3x3 conv 2048->512 without bias, BN, ReLU, dropout 0.1, 1x1 conv to K),
bilinear upsampling of the logits to the input size; no pretrained weights. segcls runs through
its public model API (``list[dict]`` input, normalisation and padding inside the model; the loss in
training); torchvision gets a normalised tensor and ``F.cross_entropy``.

Times: median over ``--repeats`` interleaved runs after one warm-up. Peak memory: each
(model, mode) runs in a fresh subprocess; the number is the growth of the process' peak resident
memory (VmHWM, reset just before the step) during one step, over what the model and inputs already
used (Linux only).
"""
import statistics

import torch
from torch.nn import functional as F

from . import CONFIGS, argument_parser
from .measure import interleaved, proc_status_bytes, reset_peak_rss, run_python, timed, write_json

NUM_CLASSES = 21


def build_segcls(extra_opts=()):
    from detectron2.modeling import build_model

    import segcls  # noqa: F401
    from segcls.engine import load_config

    cfg = load_config(
        "",
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.RESNETS.DEPTH", "50",
            "MODEL.RESNETS.STEM_TYPE", "basic",
            "MODEL.RESNETS.OUTPUT_STRIDE", "8",
            "MODEL.RESNETS.OUT_FEATURES", "['res5']",
            "MODEL.DECODE_HEAD.CHANNELS", "512",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES),
        ]
        + list(extra_opts),
    )
    return build_model(cfg)


def build_torchvision():
    from torchvision.models.segmentation import fcn_resnet50

    return fcn_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)


def make_step(kind, train, batch, size):
    """Return (model, a zero-argument callable running one forward (or forward+backward) step)."""
    torch.manual_seed(0)
    model = build_segcls() if kind == "segcls" else build_torchvision()
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size))
    return model, step_function(model, kind != "segcls", train, images, labels)


def step_function(model, torchvision: bool, train: bool, images: torch.Tensor, labels: torch.Tensor):
    """One step of ``model`` (put in train/eval mode) on uint8 images (N, 3, H, W) and labels
    (N, H, W): a segcls model through its ``list[dict]`` API (the loss inside), torchvision's on the
    normalised tensor with ``F.cross_entropy``; forward only (no grad) or forward+backward."""
    model.train(train)
    if not torchvision:
        inputs = [{"image": images[i], "sem_seg": labels[i]} for i in range(len(images))]

        def run():
            if train:
                sum(model(inputs).values()).backward()
            else:
                with torch.no_grad():
                    model(inputs)

    else:
        mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)

        def run():
            x = (images.float() - mean) / std
            if train:
                F.cross_entropy(model(x)["out"], labels, ignore_index=255).backward()
            else:
                with torch.no_grad():
                    model(x)

    return run


def time_pair(train, batch, size, repeats):
    from detectron2.utils.events import EventStorage

    steps = {kind: make_step(kind, train, batch, size)[1] for kind in ("segcls", "torchvision")}
    with EventStorage():
        times = interleaved(steps, repeats, warmup=1, measure=timed, alternate=False)
    return {kind: statistics.median(t) for kind, t in times.items()}


def peak_memory_child(kind, train, batch, size):
    """Runs in a subprocess (Linux): peak resident memory growth (bytes) during one step."""
    from detectron2.utils.events import EventStorage

    _, run = make_step(kind, train, batch, size)
    reset_peak_rss()
    base = proc_status_bytes("VmRSS")
    with EventStorage():
        run()
    return proc_status_bytes("VmHWM") - base


def peak_memory(kind, train, batch, size):
    code = (
        f"import torch; torch.set_num_threads({torch.get_num_threads()}); from segcls.benchmarks import fcn; "
        f"print(fcn.peak_memory_child({kind!r}, {train}, {batch}, {size}))"
    )
    return int(run_python(["-c", code], check=True).stdout.strip().splitlines()[-1])


def demo_iteration_time(repeats):
    """Median seconds per training iteration (forward, backward, SGD step) of the demo config."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import segcls  # noqa: F401
    from segcls.engine import load_config
    from segcls.solver import build_optimizer

    cfg = load_config(str(CONFIGS / "synthetic_context" / "fcn_r18_demo.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    size = cfg.INPUT.CROP.SIZE
    batch = [
        {"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8), "sem_seg": torch.randint(0, 11, tuple(size))}
        for _ in range(cfg.SOLVER.IMS_PER_BATCH)
    ]

    def iteration():
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()

    with EventStorage():
        times = interleaved({"demo": iteration}, repeats, warmup=1)["demo"]
    return statistics.median(times), cfg.SOLVER.IMS_PER_BATCH, list(size)


def main(argv=None):
    parser = argument_parser("fcn", __doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    results = {"setting": f"FCN-R50-D8, {args.size}x{args.size}, batch {args.batch}, CPU, "
               f"{torch.get_num_threads()} threads, torch {torch.__version__}"}
    print(results["setting"])
    for train, label in ((False, "forward"), (True, "forward+backward")):
        t = time_pair(train, args.batch, args.size, args.repeats)
        results[label] = {"segcls_s": t["segcls"], "torchvision_s": t["torchvision"], "ratio": t["segcls"] / t["torchvision"]}
        print(f"{label:>17}: segcls {t['segcls']:.3f}s  torchvision {t['torchvision']:.3f}s  "
              f"ratio {results[label]['ratio']:.3f}")
        if not args.no_memory:
            m = {kind: peak_memory(kind, train, args.batch, args.size) for kind in ("segcls", "torchvision")}
            results[label + " peak memory"] = {
                "segcls_MiB": m["segcls"] / 2**20, "torchvision_MiB": m["torchvision"] / 2**20,
                "ratio": m["segcls"] / m["torchvision"],
            }
            print(f"{label + ' memory':>17}: segcls {m['segcls'] / 2**20:.0f} MiB  torchvision "
                  f"{m['torchvision'] / 2**20:.0f} MiB  ratio {m['segcls'] / m['torchvision']:.3f}")
    seconds, batch, size = demo_iteration_time(args.repeats)
    results["demo iteration"] = {"seconds": seconds, "batch": batch, "crop": size}
    print(f"demo model (configs/synthetic_context/fcn_r18_demo.yaml): {seconds:.3f}s per training iteration "
          f"(batch {batch}, crop {size[0]}x{size[1]})")
    write_json(args.json, results)
    return results
