#!/usr/bin/env python
"""
Prepare PASCAL-Context 59 from mmsegmentation's layout: VOCdevkit/VOC2010/SegmentationClassContext/<id>.png
(0 = background, 1..59) -> SegmentationClassContext_detectron2/<id>.png (0 -> 255 ignore, k -> k - 1)
for the IDs of ImageSets/SegmentationContext/{train,val}.txt (4996 / 5104 images). The pascal_ctx_d2
layout needs no preparation.

    python datasets/prepare_pascal_context_59_sem_seg.py                 # under $DETECTRON2_DATASETS, else ./datasets
    python datasets/prepare_pascal_context_59_sem_seg.py --root /data    # under /data

The split sizes are checked against the official counts first (any mismatch is named, and stops
the script unless --allow-size-mismatch). Progress is shown; files already written are skipped and
each file is written atomically, so the script can be re-run or resumed after an interruption.
See datasets/README.md for the directory trees.
"""
import os
import sys

# Import segcls from the checkout this script belongs to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segcls.data.datasets.pascal_context import PASCAL_CONTEXT_SPLIT_SIZES, pascal_context_59_preparation  # noqa: E402
from segcls.data.datasets.prepare import run_preparation  # noqa: E402


def main(argv=None):
    return run_preparation("Pascal Context 59", pascal_context_59_preparation, PASCAL_CONTEXT_SPLIT_SIZES, argv, description=__doc__)


if __name__ == "__main__":
    main()
