#!/usr/bin/env python
"""
Prepare COCO-Stuff-10k (171 classes) from cocostuff-10k-v1.1.zip extracted to coco/coco_stuff_10k:
images/<id>.jpg -> images_detectron2/{train,test}/ and annotations/<id>.mat -> annotations_detectron2/
{train,test}/<id>.png (COCO id -> train ID 0..170, 0 = unlabeled -> 255), split by
imageLists/{train,test}.txt (9000 / 1000 images). Needs scipy to read the .mat files.

    python datasets/prepare_coco_stuff_10k_sem_seg.py                 # under $DETECTRON2_DATASETS, else ./datasets
    python datasets/prepare_coco_stuff_10k_sem_seg.py --root /data    # under /data

The split sizes are checked against the official counts first (any mismatch is named, and stops
the script unless --allow-size-mismatch). Progress is shown; files already written are skipped and
each file is written atomically, so the script can be re-run or resumed after an interruption.
See datasets/README.md for the directory trees.
"""
import os
import sys

# Import segcls from the checkout this script belongs to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segcls.data.datasets.coco_stuff import COCO_STUFF_10K_SPLIT_SIZES, coco_stuff_10k_preparation  # noqa: E402
from segcls.data.datasets.prepare import run_preparation  # noqa: E402


def main(argv=None):
    return run_preparation("COCO-Stuff-10k", coco_stuff_10k_preparation, COCO_STUFF_10K_SPLIT_SIZES, argv, description=__doc__)


if __name__ == "__main__":
    main()
