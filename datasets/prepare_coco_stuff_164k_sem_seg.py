#!/usr/bin/env python
"""
Prepare COCO-Stuff-164k (171 classes): coco/stuffthingmaps/{train2017,val2017}/*.png (COCO id - 1,
255 = unlabeled) -> coco/stuffthingmaps_detectron2/... with train IDs 0..170 (118287 / 5000 images).

    python datasets/prepare_coco_stuff_164k_sem_seg.py                 # under $DETECTRON2_DATASETS, else ./datasets
    python datasets/prepare_coco_stuff_164k_sem_seg.py --root /data    # under /data

The split sizes are checked against the official counts first (any mismatch is named, and stops
the script unless --allow-size-mismatch). Progress is shown; files already written are skipped and
each file is written atomically, so the script can be re-run or resumed after an interruption.
See datasets/README.md for the directory trees.
"""
import os
import sys

# Import segcls from the checkout this script belongs to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segcls.data.datasets.coco_stuff import COCO_STUFF_164K_SPLIT_SIZES, coco_stuff_164k_preparation  # noqa: E402
from segcls.data.datasets.prepare import run_preparation  # noqa: E402


def main(argv=None):
    return run_preparation("COCO-Stuff-164k", coco_stuff_164k_preparation, COCO_STUFF_164K_SPLIT_SIZES, argv, description=__doc__)


if __name__ == "__main__":
    main()
