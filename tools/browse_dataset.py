#!/usr/bin/env python
"""
Draw samples of a registered dataset split to PNGs, to check its labels before training
(reduce-zero-label mistakes, palette vs RGB masks, ignore regions, what the augmentations do).

    python tools/browse_dataset.py --config-file configs/synthetic_context/fcn_r18_demo.yaml \\
        --output browse/ --num 8                       # DATASETS.TRAIN[0] after the training mapper
    python tools/browse_dataset.py --config-file CFG --dataset synthetic_context_val --source raw --output browse/

Each sample ``<output>/<index>_<image name>.png`` is ``image | label overlay`` (detectron2's
``Visualizer.draw_sem_seg``, class names on the regions, ignored pixels left undrawn) over a
legend of the classes present. ``--source mapper`` (default) applies the config's training
mapper (rescale, crop, flip, colour jitter; sample ``i`` drawn with ``numpy.random.default_rng([seed, i])``,
so a run repeats); ``--source raw`` shows the files as stored. Samples are the first ``--num``
records, or with ``--shuffle`` a random choice (``--seed``). Trailing ``KEY VALUE`` pairs override the config.
"""
import argparse
import os
import sys

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.visualizer import Visualizer

import segcls  # noqa: F401  (registers datasets and modules)
from segcls.data import build_mapper
from segcls.data.dataset_mapper import read_image, read_label
from segcls.engine import load_config
from segcls.utils.io import atomic_save_image
from segcls.utils.visualization import draw_legend, drawing_metadata


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", default=None, help="registered split (default DATASETS.TRAIN[0])")
    parser.add_argument("--source", choices=["mapper", "raw"], default="mapper")
    parser.add_argument("--num", type=int, default=8, help="number of samples")
    parser.add_argument("--shuffle", action="store_true", help="a random choice of records instead of the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the label masks")
    parser.add_argument("--output", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def sample_panel(image_rgb, label, metadata, ignore_value, alpha):
    """``image | label overlay`` over a legend of the classes in ``label``: (H + legend, 2W, 3) uint8."""
    overlay = Visualizer(image_rgb, metadata).draw_sem_seg(label, alpha=alpha).get_image()
    row = np.concatenate([image_rgb, overlay], axis=1)
    present = [int(v) for v in np.unique(label) if v != ignore_value and 0 <= v < len(metadata.stuff_classes)]
    legend = draw_legend(present, metadata.stuff_classes, np.asarray(metadata.stuff_colors, dtype=np.uint8), row.shape[1])
    return np.concatenate([row, legend], axis=0)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    name = args.dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None)
    if name is None:
        raise ValueError("no dataset: give --dataset or set DATASETS.TRAIN")
    if name not in DatasetCatalog.list():
        raise KeyError(f"dataset '{name}' is not registered (see datasets/README.md)")
    records = DatasetCatalog.get(name)
    if not records:
        raise ValueError(f"dataset '{name}' holds no records")
    records = [r for r in records if "sem_seg_file_name" in r]
    if not records:
        raise ValueError(f"dataset '{name}' has no labels ('sem_seg_file_name') to draw")
    order = np.random.default_rng(args.seed).permutation(len(records)) if args.shuffle else np.arange(len(records))
    num_classes, ignore = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    metadata = drawing_metadata(MetadataCatalog.get(name), num_classes)
    mapper = build_mapper(cfg, is_train=True) if args.source == "mapper" else None
    written = []
    for i in order[: args.num]:
        record = records[int(i)]
        if mapper is not None:
            inp = mapper(record, rng=np.random.default_rng([args.seed, int(i)]))
            image, label = inp["image"].permute(1, 2, 0).numpy(), inp["sem_seg"].numpy()
            if cfg.INPUT.FORMAT == "BGR":
                image = image[..., ::-1]
        else:
            image = read_image(record["file_name"], "RGB")
            label = read_label(record["sem_seg_file_name"], num_classes, ignore, image.shape[:2])
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(args.output, f"{int(i):05d}_{stem}.png")
        atomic_save_image(sample_panel(np.ascontiguousarray(image), label, metadata, ignore, args.alpha), path)
        written.append(path)
    print(f"{len(written)} samples of '{name}' ({args.source}) written to {args.output}")
    return written


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, KeyError, ImportError) as e:  # bad input: the message, not a traceback
        sys.exit(f"browse_dataset.py: error: {e.args[0] if isinstance(e, KeyError) else e}")
