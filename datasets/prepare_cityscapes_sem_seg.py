#!/usr/bin/env python
"""
Prepare Cityscapes (19 classes): write cityscapes/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png
next to each *_gtFine_labelIds.png, mapping label IDs to train IDs with cityscapesscripts' table
(2975 / 500 images).

    python datasets/prepare_cityscapes_sem_seg.py                 # under $DETECTRON2_DATASETS, else ./datasets
    python datasets/prepare_cityscapes_sem_seg.py --root /data    # under /data

The split sizes are checked against the official counts first (any mismatch is named, and stops
the script unless --allow-size-mismatch). Progress is shown; files already written are skipped and
each file is written atomically, so the script can be re-run or resumed after an interruption.
See datasets/README.md for the directory trees.
"""
import os
import sys

# Import segcls from the checkout this script belongs to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segcls.data.datasets.cityscapes import CITYSCAPES_SPLIT_SIZES, cityscapes_preparation  # noqa: E402
from segcls.data.datasets.prepare import run_preparation  # noqa: E402


def main(argv=None):
    return run_preparation("Cityscapes", cityscapes_preparation, CITYSCAPES_SPLIT_SIZES, argv, description=__doc__)


if __name__ == "__main__":
    main()
