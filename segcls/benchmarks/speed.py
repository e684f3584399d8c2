"""
The fast path (bf16 autocast + channels-last, optionally torch.compile; segcls.modeling.precision)
against the peers, every comparison interleaved in one run and reported as ratios:

- ``models``: FCN-R50-D8 and DeepLabV3-R50-D8, forward (eval) and forward+backward (train):
  segcls with the fast path and segcls plain (float32) against torchvision's identical
  ``fcn_resnet50`` / ``deeplabv3_resnet50`` as users run them by default (float32, eager, a
  normalised tensor and ``F.cross_entropy``); peak memory of the fast path and of torchvision, each
  in a fresh process (growth of VmHWM during one step, Linux);
- ``eval``: :class:`~segcls.evaluation.FastSemSegEvaluator` against detectron2's
  ``SemSegEvaluator`` on identical ADE20K-sized predictions (150 classes, 512x683, region-like
  labels), with the metrics compared;
- ``slide``: sliding-window inference of a Cityscapes-sized image (2048x1024, 19 classes,
  windows 512x1024 every 341x683 pixels, FCN-R18-D8; ``--slide-image/-crop/-stride``) window-by-window, batched
  (``TEST.SLIDE_BATCH``) and batched on the fast path;
- ``demo``: the demo's training step (forward, backward, SGD) per second, float32 vs fast path.

    python -m segcls.benchmarks speed                  # everything at the BENCHMARKS.md sizes
    python -m segcls.benchmarks speed --quick          # tiny sizes (the tests)
    python -m segcls.benchmarks speed --sections eval slide

Times: medians over ``--repeats`` interleaved rounds after one warm-up (``alternate`` order).
"""
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.nn import functional as F

from . import CONFIGS, argument_parser
from ..modeling.precision import cpu_bf16_support
from .measure import interleaved, proc_status_bytes, reset_peak_rss, run_python, timed, write_json

FAST = ["SOLVER.AMP.ENABLED", "True", "TEST.AMP.ENABLED", "True", "MODEL.CHANNELS_LAST", "True"]
COMPILE = ["MODEL.COMPILE.ENABLED", "True"]
SECTIONS = ("models", "eval", "slide", "demo")


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def build(arch: str, torchvision: bool, opts=()):
    """segcls's model (config options ``opts``) or torchvision's identical one, 21 classes."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    from . import fcn, heads

    if arch == "fcn":
        return fcn.build_torchvision() if torchvision else fcn.build_segcls(list(opts))
    if torchvision:
        return deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=21)
    return heads.build_deeplab_pair("cpu", list(opts))[0]


def make_step(arch: str, kind: str, train: bool, batch: int, size: int, compile_model: bool = False):
    """One forward (``train`` False, no grad) or forward+backward step of ``kind``: "segcls_fast",
    "segcls" (float32) or "torchvision" (float32, eager), as a zero-argument callable."""
    from . import fcn

    opts = FAST + (COMPILE if compile_model else []) if kind == "segcls_fast" else []
    torch.manual_seed(0)
    model = build(arch, kind == "torchvision", opts)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 21, (batch, size, size), generator=g)
    return fcn.step_function(model, kind == "torchvision", train, images, labels)


def peak_memory_child(arch, kind, train, batch, size, compile_model=False):
    """In a fresh process: peak resident-memory growth (bytes) of the second step (the first
    warms oneDNN's caches and, with compilation, compiles)."""
    from detectron2.utils.events import EventStorage

    run = make_step(arch, kind, train, batch, size, compile_model)
    with EventStorage():
        run()
        reset_peak_rss()
        base = proc_status_bytes("VmRSS")
        run()
    return proc_status_bytes("VmHWM") - base


def peak_memory(arch, kind, train, batch, size, compile_model=False) -> int:
    code = (
        f"import torch; torch.set_num_threads({torch.get_num_threads()}); from segcls.benchmarks import speed; "
        f"print(speed.peak_memory_child({arch!r}, {kind!r}, {train}, {batch}, {size}, {compile_model}))"
    )
    return int(run_python(["-c", code], check=True).stdout.strip().splitlines()[-1])


def models_section(args):
    from detectron2.utils.events import EventStorage

    size, batch, repeats = (32, 2, 1) if args.quick else (args.size, args.batch, args.repeats)
    results = {}
    for arch in args.archs:
        for train, mode in ((False, "forward"), (True, "forward+backward")):
            steps = {k: make_step(arch, k, train, batch, size, args.compile) for k in ("segcls_fast", "segcls", "torchvision")}
            with EventStorage():
                times = interleaved(steps, repeats, warmup=1, measure=timed)
            t = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "segcls_fast_s": t["segcls_fast"], "segcls_fp32_s": t["segcls"], "torchvision_s": t["torchvision"],
                "speedup_fast_vs_torchvision": t["torchvision"] / t["segcls_fast"],
                "ratio_fp32_vs_torchvision": t["segcls"] / t["torchvision"],
            }  # fmt: skip
            print(f"{arch:>9} {mode:>16}: fast {t['segcls_fast']:.3f}s  segcls fp32 {t['segcls']:.3f}s  "
                  f"torchvision {t['torchvision']:.3f}s  speed-up {row['speedup_fast_vs_torchvision']:.2f}x  "
                  f"fp32 ratio {row['ratio_fp32_vs_torchvision']:.3f}", flush=True)
            if args.memory:
                m = {k: peak_memory(arch, k, train, batch, size, args.compile) for k in ("segcls_fast", "torchvision")}
                row.update(
                    segcls_fast_MiB=m["segcls_fast"] / 2**20, torchvision_MiB=m["torchvision"] / 2**20,
                    memory_ratio=m["segcls_fast"] / m["torchvision"],
                )  # fmt: skip
                print(f"{'':>9} {'peak memory':>16}: fast {row['segcls_fast_MiB']:.0f} MiB  torchvision "
                      f"{row['torchvision_MiB']:.0f} MiB  ratio {row['memory_ratio']:.3f}", flush=True)
            results[f"{arch} {mode}"] = row
    return results


# ------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------
def blocky(shape, low, generator, num_classes):
    """Region-like (H, W) labels: random labels on a coarse ``low`` grid, nearest-upsampled."""
    coarse = torch.randint(0, num_classes, (1, 1, *low), generator=generator).float()
    return F.interpolate(coarse, size=shape, mode="nearest")[0, 0].long()


def eval_section(args):
    from detectron2.evaluation import SemSegEvaluator
    from PIL import Image

    from segcls.data.datasets import register_sem_seg
    from segcls.evaluation import FastSemSegEvaluator, predicted_labels

    k = 150
    (h, w), n, repeats = ((64, 86), 6, 1) if args.quick else ((512, 683), args.eval_images, max(args.repeats - 1, 1))
    g = torch.Generator().manual_seed(0)
    root = tempfile.mkdtemp(prefix="segcls_eval_bench_")
    for i in range(n):
        gt = blocky((h, w), (h // 16, w // 16), g, k).numpy().astype(np.uint8)
        gt[: h // 20] = 255
        Image.fromarray(gt).save(f"{root}/{i:04d}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(f"{root}/{i:04d}.jpg")
    name = "speed_bench_ade_sized"
    register_sem_seg(name, root, root, {"stuff_classes": [f"class{j}" for j in range(k)], "ignore_label": 255, "evaluator_type": "sem_seg"})
    # two prediction tensors (region-like scores, where the predicted labels differ from the gt)
    # used in turn: 150 x 512 x 683 float32 scores are 210 MB each
    pool = []
    for _ in range(2):
        labels = blocky((h, w), (h // 12, w // 12), g, k)
        scores = F.one_hot(labels, k).permute(2, 0, 1).float() + 0.1 * torch.rand(k, h, w, generator=g)
        pool.append({"sem_seg": scores.contiguous()})  # as the model returns them
    inputs = [{"file_name": f"{root}/{i:04d}.jpg"} for i in range(n)]

    evaluators = {
        "segcls": FastSemSegEvaluator(name, distributed=False, output_dir=None),
        "detectron2": SemSegEvaluator(name, distributed=False),
    }
    metrics = {}

    def evaluate(kind):
        ev = evaluators[kind]
        ev.reset()
        for i, inp in enumerate(inputs):
            ev.process([inp], [pool[i % 2]])
        metrics[kind] = ev.evaluate()["sem_seg"]

    def labels(fn):  # the labels of every prediction, which both evaluators must compute first
        def run():
            for i in range(n):
                fn(pool[i % 2]["sem_seg"])
        return run

    runs = {kind: (lambda kind=kind: evaluate(kind)) for kind in evaluators}
    runs.update(argmax=labels(lambda s: s.argmax(dim=0)), predicted_labels=labels(predicted_labels))
    times = interleaved(runs, repeats, warmup=0)
    t = {kind: statistics.median(v) for kind, v in times.items()}
    same = all(
        (np.isnan(a) and np.isnan(metrics["detectron2"][key])) or a == metrics["detectron2"][key]
        for key, a in metrics["segcls"].items()
    ) and list(metrics["segcls"]) == list(metrics["detectron2"])
    row = {
        "images": n, "size": [h, w], "classes": k,
        "segcls_images_per_s": n / t["segcls"], "detectron2_images_per_s": n / t["detectron2"],
        "speedup": t["detectron2"] / t["segcls"], "identical_metrics": bool(same), "mIoU": metrics["segcls"]["mIoU"],
        "argmax_s_per_image": t["argmax"] / n, "predicted_labels_s_per_image": t["predicted_labels"] / n,
        "speedup_beyond_labels": (t["detectron2"] - t["argmax"]) / max(t["segcls"] - t["predicted_labels"], 1e-9),
    }  # fmt: skip
    print(f"evaluation {n} x {h}x{w}, {k} classes: segcls {row['segcls_images_per_s']:.1f} img/s  detectron2 "
          f"{row['detectron2_images_per_s']:.1f} img/s  speed-up {row['speedup']:.2f}x  identical metrics: {same}; "
          f"labels: argmax {row['argmax_s_per_image']:.3f} s/image (detectron2), predicted_labels "
          f"{row['predicted_labels_s_per_image']:.3f} s/image (segcls); speed-up of the rest "
          f"{row['speedup_beyond_labels']:.2f}x", flush=True)
    return row


# ------------------------------------------------------------------------------------------------
# slide
# ------------------------------------------------------------------------------------------------
def slide_section(args):
    from detectron2.modeling import build_model

    from segcls.engine import load_config

    depth = 18
    if args.quick:
        (h, w), crop, stride = (64, 128), (32, 64), (21, 43)
    else:
        (h, w), crop, stride = tuple(args.slide_image), tuple(args.slide_crop), tuple(args.slide_stride)
    repeats = 1 if args.quick else max(args.repeats - 1, 1)
    base = [
        "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", str(depth), "MODEL.RESNETS.OUT_FEATURES", "['res5']",
        "MODEL.DECODE_HEAD.CHANNELS", "128", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19",
        "TEST.MODE", "slide", "TEST.CROP_SIZE", str(list(crop)), "TEST.STRIDE", str(list(stride)),
    ]  # fmt: skip
    variants = {
        "window_by_window": ["TEST.SLIDE_BATCH", "1"],
        "batched": ["TEST.SLIDE_BATCH", str(args.slide_batch)],
        "batched_fast": ["TEST.SLIDE_BATCH", str(args.slide_batch)] + FAST,
    }
    image = torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    models, outputs = {}, {}
    for name, opts in variants.items():
        torch.manual_seed(0)
        models[name] = build_model(load_config("", base + opts)).eval()

    def predict(name):
        with torch.no_grad():
            outputs[name] = models[name]([{"image": image}])[0]["sem_seg"]

    times = interleaved({name: (lambda name=name: predict(name)) for name in variants}, repeats, warmup=1)
    t = {name: statistics.median(v) for name, v in times.items()}
    ref = outputs["window_by_window"]
    row = {
        "image": [h, w], "crop": list(crop), "stride": list(stride), "slide_batch": args.slide_batch,
        **{f"{name}_s": t[name] for name in variants},
        "speedup_batched": t["window_by_window"] / t["batched"],
        "speedup_batched_fast": t["window_by_window"] / t["batched_fast"],
        "max_abs_diff_batched": (outputs["batched"] - ref).abs().max().item(),
        "label_agreement_fast": (outputs["batched_fast"].argmax(0) == ref.argmax(0)).float().mean().item(),
    }  # fmt: skip
    print(f"sliding window {h}x{w} (crop {crop}, stride {stride}, FCN-R{depth}-D8, 19 classes): window-by-window "
          f"{t['window_by_window']:.2f}s  batched({args.slide_batch}) {t['batched']:.2f}s ({row['speedup_batched']:.2f}x, "
          f"max |diff| {row['max_abs_diff_batched']:.1e})  batched+fast {t['batched_fast']:.2f}s "
          f"({row['speedup_batched_fast']:.2f}x, labels agree {100 * row['label_agreement_fast']:.2f}%)", flush=True)
    return row


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------
def demo_section(args):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from segcls.engine import load_config
    from segcls.solver import build_optimizer

    iterations = 1 if args.quick else args.demo_iterations
    path = str(CONFIGS / "synthetic_context" / "fcn_r18_demo.yaml")
    steps = {}
    for name, opts in (("float32", []), ("fast", FAST)):
        cfg = load_config(path, ["MODEL.DEVICE", "cpu"] + opts)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        optimizer = build_optimizer(cfg, model)
        size = tuple(cfg.INPUT.CROP.SIZE)
        g = torch.Generator().manual_seed(0)
        batch = [
            {"image": torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8), "sem_seg": torch.randint(0, 11, size, generator=g)}
            for _ in range(cfg.SOLVER.IMS_PER_BATCH)
        ]

        def block(model=model, optimizer=optimizer, batch=batch):
            for _ in range(iterations):
                optimizer.zero_grad()
                sum(model(batch).values()).backward()
                optimizer.step()

        steps[name] = block
    with EventStorage():
        times = interleaved(steps, 2, warmup=1)
    t = {name: statistics.median(v) / iterations for name, v in times.items()}
    row = {
        "iterations_per_block": iterations, "float32_it_per_s": 1 / t["float32"], "fast_it_per_s": 1 / t["fast"],
        "speedup": t["float32"] / t["fast"],
    }  # fmt: skip
    print(f"demo training step (fcn_r18_demo.yaml, batch 8 of 128x128): float32 {row['float32_it_per_s']:.2f} it/s  "
          f"fast {row['fast_it_per_s']:.2f} it/s  speed-up {row['speedup']:.2f}x", flush=True)
    return row


def main(argv=None):
    parser = argument_parser("speed", __doc__)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--archs", nargs="+", choices=("fcn", "deeplabv3"), default=["fcn", "deeplabv3"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the fast path (MODEL.COMPILE)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--slide-batch", type=int, default=3)
    parser.add_argument("--slide-image", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--slide-crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--slide-stride", type=int, nargs=2, default=[341, 683], metavar=("H", "W"))
    parser.add_argument("--demo-iterations", type=int, default=25, help="training steps per timed block")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat, no memory (the tests)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.memory = False
    results = {
        "setting": f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "bf16": cpu_bf16_support(),
    }
    print(results["setting"])
    print(results["bf16"], flush=True)
    start = time.perf_counter()
    for section in args.sections:
        results[section] = globals()[f"{section}_section"](args)
    results["seconds"] = time.perf_counter() - start
    write_json(args.json, results)
    return results
