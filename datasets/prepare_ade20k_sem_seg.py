#!/usr/bin/env python
"""
Prepare ADE20K (SceneParsing, 150 classes): ADEChallengeData2016/annotations/{training,validation}/*.png
-> annotations_detectron2/... with 0 (other) -> 255 (ignore) and k -> k - 1 (20210 / 2000 images).

    python datasets/prepare_ade20k_sem_seg.py                 # under $DETECTRON2_DATASETS, else ./datasets
    python datasets/prepare_ade20k_sem_seg.py --root /data    # under /data

The split sizes are checked against the official counts first (any mismatch is named, and stops
the script unless --allow-size-mismatch). Progress is shown; files already written are skipped and
each file is written atomically, so the script can be re-run or resumed after an interruption.
See datasets/README.md for the directory trees.
"""
import os
import sys

# Import segcls from the checkout this script belongs to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segcls.data.datasets.ade20k import ADE20K_SPLIT_SIZES, ade20k_preparation  # noqa: E402
from segcls.data.datasets.prepare import run_preparation  # noqa: E402


def main(argv=None):
    return run_preparation("ADE20K", ade20k_preparation, ADE20K_SPLIT_SIZES, argv, description=__doc__)


if __name__ == "__main__":
    main()
