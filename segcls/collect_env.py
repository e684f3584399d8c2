"""
Report the environment: ``python -m segcls.collect_env`` (``--short`` for the one-paragraph
summary printed by ``make setup``; the full report adds detectron2's own ``collect_env_info``).
"""
import argparse
import importlib
import os
import sys

from tabulate import tabulate


def detectron2_compiled_ops():
    """True if detectron2's ``_C`` is a compiled extension, False for segcls's pure-Python build."""
    from detectron2 import _C

    return bool(getattr(_C, "HAS_COMPILED_OPS", True))


def _version(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return "not installed"
    return getattr(module, "__version__", "?")


def summary_rows():
    import detectron2
    import torch

    import segcls

    rows = [
        ("Python", sys.version.split()[0]),
        ("segcls", f"{segcls.__version__} @ {os.path.dirname(segcls.__file__)}"),
        ("detectron2", f"{detectron2.__version__} @ {os.path.dirname(detectron2.__file__)}"),
        (
            "detectron2 compiled ops",
            "yes" if detectron2_compiled_ops() else "no (pure-Python build; not needed for semantic segmentation)",
        ),
        ("torch", f"{torch.__version__} (CUDA available: {torch.cuda.is_available()})"),
    ]
    rows += [(name, _version(name)) for name in ("torchvision", "numpy", "PIL", "cv2", "fvcore", "timm")]
    from segcls.modeling.precision import cpu_bf16_support

    rows.append(("CPU bf16", cpu_bf16_support().split(": ", 1)[1]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="only the segcls summary")
    args = parser.parse_args(argv)
    print(tabulate(summary_rows(), tablefmt="simple"))
    if not args.short:
        from detectron2.utils.collect_env import collect_env_info

        print(collect_env_info())


if __name__ == "__main__":
    main()
