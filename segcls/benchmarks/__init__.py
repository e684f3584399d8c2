"""
segcls's benchmarks, one module each, behind one entry point:

    python -m segcls.benchmarks                    # list the benchmarks
    python -m segcls.benchmarks NAME [options]     # run one (NAME --help: its options)
    python tools/benchmark.py NAME [options]       # the same

Shared measurement code (timing, peak memory, interleaving, FLOPs) is in
:mod:`segcls.benchmarks.measure`; every call into segcls model internals (beyond the public
``list[dict]`` forward) is in :mod:`segcls.benchmarks.model_api`. Measured numbers: BENCHMARKS.md.
"""
import argparse
import importlib
import sys
from pathlib import Path

# name -> what it measures (each is the module segcls.benchmarks.<name>, with a main(argv))
BENCHMARKS = {
    "fcn": "FCN-R50 speed/memory vs torchvision, demo iteration time",
    "heads": "decode heads: params/FLOPs, DeepLabV3 vs torchvision, CAA variants",
    "backbones": "params and FLOPs of the paper backbones (configs/backbones)",
    "data": "training data-loading throughput vs detectron2's DatasetMapper",
    "car": "training cost of CAR (time, memory, FLOPs) vs no CAR",
    "cac": "cost of the context-aware classifier vs the 1x1 classifier",
    "csfrn": "training cost of CSFRN (time, memory, FLOPs) vs the DeepLabV3+ baseline",
    "speed": "fast path (bf16, channels-last, compile) vs torchvision; fast evaluator; batched sliding windows; demo it/s",
}
PROG = "python -m segcls.benchmarks"
REPO = Path(__file__).resolve().parents[2]  # the checkout: configs/ lies there
CONFIGS = REPO / "configs"


def argument_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options parser of benchmark ``name`` (``description``: its module docstring)."""
    return argparse.ArgumentParser(
        prog=f"{PROG} {name}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def usage() -> str:
    lines = [f"usage: {PROG} NAME [options]   ({PROG} NAME --help: its options)", "", "benchmarks:"]
    lines += [f"  {name:<10} {what}" for name, what in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv=None):
    """Run benchmark ``argv[0]`` with the options ``argv[1:]``; returns what its ``main`` returns.
    No name (or -h/--help/list): prints the list of benchmarks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(usage())
        return None
    name, options = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(usage(), file=sys.stderr)
        hint = f" (the name comes first: {PROG} fcn {' '.join(argv)})" if name.startswith("-") else ""
        raise SystemExit(f"{PROG}: unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}{hint}")
    return importlib.import_module(f"{__name__}.{name}").main(options)
