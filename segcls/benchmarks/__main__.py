"""``python -m segcls.benchmarks NAME [options]``: see :mod:`segcls.benchmarks`."""
from . import main

main()
