"""
Training data-loading throughput (images/s) of segcls's ``SemSegDatasetMapper`` against
detectron2's stock ``DatasetMapper`` with the equivalent augmentations, in the same run, on
generated data (random 1024x512 JPEGs with label PNGs of random rectangles, in a temporary folder):

- segcls: keep-ratio rescale of 2048x512 by a ratio in [0.5, 2.0] (short side 256..1024 for these
  images), 512x512 crop with the category-area constraint 0.75, flip, padding to 512x512;
- detectron2: ``ResizeShortestEdge((256, 1024), sample_style="range")``,
  ``RandomCrop_CategoryAreaConstraint("absolute", (512, 512), 0.75)``, ``RandomFlip()``.

Both read the same files through a ``torch.utils.data.DataLoader`` with ``--workers`` workers
(batch size 1, worker start-up excluded); the two loaders alternate for ``--rounds`` rounds and the
median of each is reported, with the ratio segcls / detectron2 (>= 1.0: segcls is not slower).

    python -m segcls.benchmarks data --quick     # 20 images, 2 rounds of 40 samples
    python -m segcls.benchmarks data             # 20 images, 3 rounds of 200 samples
"""
import os
import statistics
import tempfile
import time

import numpy as np
import torch.utils.data as torchdata
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from PIL import Image

from segcls.data.build import PositionSeededDataset
from segcls.data.dataset_mapper import SemSegDatasetMapper

from . import argument_parser

NUM_CLASSES = 150
CROP = 512


def generate_data(folder, num_images, seed=0, width=1024, height=512):
    """Write ``num_images`` smooth random JPEGs and label PNGs (random rectangles of classes
    0..NUM_CLASSES-1 and 255 on a background class); returns detectron2 records."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_images):
        coarse = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR)).astype(np.int16)
        image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
        label = np.full((height, width), rng.integers(NUM_CLASSES), np.uint8)
        for _ in range(12):
            y, x = rng.integers(0, height), rng.integers(0, width)
            h, w = rng.integers(32, height // 2), rng.integers(32, width // 2)
            label[y : y + h, x : x + w] = rng.choice([*range(NUM_CLASSES), 255])
        record = {"file_name": os.path.join(folder, f"{i:04d}.jpg"), "sem_seg_file_name": os.path.join(folder, f"{i:04d}.png")}
        Image.fromarray(image).save(record["file_name"], quality=90)
        Image.fromarray(label).save(record["sem_seg_file_name"])
        records.append(record)
    return records


class IndexedDataset(torchdata.Dataset):
    """``mapper(records[i % len(records)])`` (detectron2's mapper draws from the global RNGs)."""

    def __init__(self, records, mapper):
        self.records = records
        self.mapper = mapper

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.mapper(self.records[i % len(self.records)])


def segcls_mapper():
    return SemSegDatasetMapper(
        True,
        num_classes=NUM_CLASSES,
        base_size=[2048, 512],
        ratio_range=(0.5, 2.0),
        crop_size=[CROP, CROP],
        cat_max_ratio=0.75,
        flip=True,
        color_aug=False,
    )


def detectron2_mapper():
    augmentations = [
        T.ResizeShortestEdge((256, 1024), max_size=4096, sample_style="range"),
        T.RandomCrop_CategoryAreaConstraint("absolute", (CROP, CROP), 0.75, 255),
        T.RandomFlip(),
    ]
    return DatasetMapper(is_train=True, augmentations=augmentations, image_format="RGB")


def loaders(records, num_samples, workers):
    """{name: DataLoader yielding ``num_samples`` mapped samples} for both mappers."""
    segcls_keys = [(p, p % len(records)) for p in range(num_samples)]
    common = {"batch_size": 1, "num_workers": workers, "collate_fn": lambda batch: batch}
    return {
        "segcls SemSegDatasetMapper": torchdata.DataLoader(
            PositionSeededDataset(records, segcls_mapper(), seed=0), sampler=segcls_keys, **common
        ),
        "detectron2 DatasetMapper": torchdata.DataLoader(
            IndexedDataset(records, detectron2_mapper()), sampler=range(num_samples), **common
        ),
    }


def throughput(loader, warmup):
    """Images/s after the first ``warmup`` samples (worker start-up and first decodes excluded)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch)
        assert batch[0]["image"].shape[0] == 3 and batch[0]["sem_seg"].ndim == 2
    return n / (time.perf_counter() - start)


def main(argv=None):
    parser = argument_parser("data", __doc__)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 40 samples (a smoke run)")
    parser.add_argument("--num-images", type=int, default=20)
    parser.add_argument("--samples", type=int, default=None, help="samples per round (default 200; 40 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 2 with --quick)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    samples = args.samples or (40 if args.quick else 200)
    rounds = args.rounds or (2 if args.quick else 3)
    warmup = 2 * max(args.workers, 1)
    with tempfile.TemporaryDirectory(prefix="segcls_benchmark_data_") as folder:
        records = generate_data(folder, args.num_images)
        results = {}
        for _ in range(rounds):
            for name, loader in loaders(records, samples + warmup, args.workers).items():
                results.setdefault(name, []).append(throughput(loader, warmup))
    print(f"{args.num_images} generated 1024x512 images, {CROP}x{CROP} crops, {args.workers} workers, "
          f"{rounds} rounds of {samples} samples (median):")
    for name, values in results.items():
        print(f"  {name:<28} {statistics.median(values):7.1f} images/s  (rounds: {', '.join(f'{v:.1f}' for v in values)})")
    segcls, d2 = (statistics.median(v) for v in results.values())
    print(f"  ratio segcls / detectron2: {segcls / d2:.2f}")
    return {"segcls": segcls, "detectron2": d2, "ratio": segcls / d2}
