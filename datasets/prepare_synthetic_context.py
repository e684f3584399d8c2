#!/usr/bin/env python
"""
Generate the embedded "synthetic scenes with biased context" benchmark under
``<root>/synthetic_context`` (see :mod:`segcls.data.datasets.synthetic_context`) and print a
summary: image counts, time, class pixel frequencies and the fraction of objects standing on
their preferred ground, per split.

    python datasets/prepare_synthetic_context.py                 # $DETECTRON2_DATASETS or ./datasets
    python datasets/prepare_synthetic_context.py --root /data --context-bias 0.9

Running it again with the same arguments does nothing; an interrupted run is resumed.
"""
import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

# Import segcls from the checkout this script belongs to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segcls.data.datasets.sem_seg import get_datasets_root  # noqa: E402
from segcls.data.datasets.synthetic_context import (  # noqa: E402
    CONTEXT_BIAS,
    CUE_STRENGTH,
    SYNTHETIC_CONTEXT_CLASSES,
    SYNTHETIC_CONTEXT_DIRNAME,
    SYNTHETIC_CONTEXT_IGNORE_LABEL,
    SYNTHETIC_CONTEXT_SPLITS,
    SyntheticContextExistsError,
    generate_synthetic_context,
)


def class_pixel_frequencies(label_dir):
    """Fraction of pixels per train ID (K entries) and of ignored pixels in ``label_dir/*.png``."""
    counts = np.zeros(256, np.int64)
    for name in sorted(f for f in os.listdir(label_dir) if f.endswith(".png")):
        with Image.open(os.path.join(label_dir, name)) as im:
            counts += np.bincount(np.asarray(im).ravel(), minlength=256)
    freq = counts / max(counts.sum(), 1)
    return freq[: len(SYNTHETIC_CONTEXT_CLASSES)], freq[SYNTHETIC_CONTEXT_IGNORE_LABEL]


def print_summary(root, info, seconds):
    base = os.path.join(root, SYNTHETIC_CONTEXT_DIRNAME)
    print(f"{base}: {info['params']}, {seconds:.1f} s")
    splits = list(SYNTHETIC_CONTEXT_SPLITS)
    print(f"{'':<30}" + "".join(f"{s:>10}" for s in splits))
    stats = info["stats"]
    print(f"{'images':<30}" + "".join(f"{stats[s]['images']:>10}" for s in splits))
    print(f"{'objects':<30}" + "".join(f"{stats[s]['objects']:>10}" for s in splits))
    on_preferred = [stats[s]["objects_on_preferred_ground"] / max(stats[s]["objects"], 1) for s in splits]
    print(f"{'objects on preferred ground':<30}" + "".join(f"{f:>10.1%}" for f in on_preferred))
    freqs = [
        class_pixel_frequencies(os.path.join(base, "annotations_detectron2", SYNTHETIC_CONTEXT_SPLITS[s]))
        for s in splits
    ]
    print("class pixel frequencies:")
    for k, name in enumerate(SYNTHETIC_CONTEXT_CLASSES):
        print(f"  {k:>2} {name:<25}" + "".join(f"{f[k]:>10.2%}" for f, _ in freqs))
    print(f"  {SYNTHETIC_CONTEXT_IGNORE_LABEL} {'(ignore)':<24}" + "".join(f"{ign:>10.2%}" for _, ign in freqs))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=get_datasets_root(), help="datasets root (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--num-val-rare", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128, help="side of the square images in pixels")
    parser.add_argument(
        "--context-bias",
        type=float,
        default=CONTEXT_BIAS,
        help="probability that a train/val object stands on its preferred ground (default: %(default)s)",
    )
    parser.add_argument(
        "--cue-strength",
        type=float,
        default=CUE_STRENGTH,
        help="multiplier of the class colour cues within a group; larger = easier without context "
        "(default: %(default)s)",
    )
    args = parser.parse_args()

    def progress(done, total):
        print(f"\rgenerating images: {done}/{total}", end="" if done < total else "\n", flush=True)

    already = os.path.exists(os.path.join(args.root, SYNTHETIC_CONTEXT_DIRNAME, "generator.json"))
    start = time.perf_counter()
    try:
        info = generate_synthetic_context(
            args.root,
            num_train=args.num_train,
            num_val=args.num_val,
            num_val_rare=args.num_val_rare,
            image_size=args.image_size,
            context_bias=args.context_bias,
            cue_strength=args.cue_strength,
            seed=args.seed,
            progress=progress,
        )
    except SyntheticContextExistsError as e:
        sys.exit(f"error: {e}")
    if already:
        print("already generated, nothing written")
    print_summary(args.root, info, time.perf_counter() - start)


if __name__ == "__main__":
    main()
