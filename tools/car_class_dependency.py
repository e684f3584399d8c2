#!/usr/bin/env python
"""
CAR Fig. 4: the class-dependency map of a trained model on a dataset split -- dot-product
similarity of the class centers of the regularized feature, computed over the whole split, with
class names on the axes.

    python tools/car_class_dependency.py --config-file configs/car/pascal_context_59/nonlocal_r50_car.yaml \\
        --dataset pascal_context_59_sem_seg_val --output class_dependency.png MODEL.WEIGHTS model_final.pth

Writes the PNG and, next to it, ``<output>.json`` with the matrix, the class names, the pixel count
per class and ``mean_inter_class_dependency``: over the classes present, the mean off-diagonal
mass of ``softmax(mu mu^T / sqrt(C))`` (Eq. 4), one number for how much classes depend on others.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402

import segcls  # noqa: E402,F401  (registers datasets and modules)
from segcls.analysis.car import (  # noqa: E402
    car_view,
    class_dependency,
    dataset_inputs,
    load_model,
    split_class_centers,
)
from segcls.engine import load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument("--dataset", required=True, help="registered dataset split, e.g. pascal_context_59_sem_seg_val")
    parser.add_argument("--output", required=True, help="PNG path")
    parser.add_argument("--max-images", type=int, default=0, help="use the first N images only (0 = all)")
    parser.add_argument("--feature-key", default="", help="head output to analyse (default MODEL.CAR.FEATURE_KEYS[0])")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model_final.pth")
    return parser.parse_args(argv)


def plot(similarity, names, path, title):
    k = len(names)
    size = max(6.0, 0.14 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(similarity, cmap="jet")
    ax.set_xticks(range(k), names, rotation=90, fontsize=max(3, min(8, 400 // k)))
    ax.set_yticks(range(k), names, fontsize=max(3, min(8, 400 // k)))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    if args.feature_key:
        cfg.MODEL.CAR.FEATURE_KEYS = [args.feature_key]
    model, car = load_model(cfg), car_view(cfg)
    indices = range(args.max_images) if args.max_images > 0 else None
    centers, counts = split_class_centers(model, car, dataset_inputs(cfg, args.dataset, indices))
    similarity, inter = class_dependency(centers, counts)
    k = similarity.shape[0]
    names = list(getattr(MetadataCatalog.get(args.dataset), "stuff_classes", None) or [str(i) for i in range(k)])
    if len(names) != k:
        raise ValueError(
            f"dataset '{args.dataset}' has {len(names)} classes, the config {k} (MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    title = f"class dependency ({car.feature_keys[0]}), {args.dataset}"
    plot(similarity.numpy(), names, args.output, title)
    present = counts > 0
    summary = {
        "dataset": args.dataset,
        "feature_key": car.feature_keys[0],
        "classes": names,
        "pixel_counts": counts.long().tolist(),
        "similarity": similarity.tolist(),
        "mean_inter_class_dependency": inter,
    }
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump(summary, f)
    print(f"wrote {args.output}: {int(present.sum())}/{k} classes present, mean inter-class dependency {inter:.4f}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
