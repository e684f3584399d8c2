#!/usr/bin/env python
"""
segcls's benchmarks (the package segcls/benchmarks/, one module per benchmark):

    python tools/benchmark.py                  # list them
    python tools/benchmark.py NAME [options]   # run one: fcn, heads, backbones, data, car, cac
    python tools/benchmark.py NAME --help      # its options

Same as ``python -m segcls.benchmarks NAME [options]``; ``make benchmark`` runs ``fcn``.
"""
import os
import sys

# segcls from the checkout this script belongs to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segcls.benchmarks import main  # noqa: E402

if __name__ == "__main__":
    main()
