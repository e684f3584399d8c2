#!/usr/bin/env python
"""segcls: class-level-context semantic segmentation on detectron2.

detectron2 is not on PyPI: `make setup` (or `python tools/install_detectron2.py`) installs it
before this package; see README.md.
"""
from setuptools import find_packages, setup

setup(
    name="segcls",
    version="0.1.0",
    description="Class-level-context semantic segmentation (CAR, CAC, CSFRN, ECENet, KSAC, CAA) on detectron2",
    packages=find_packages(include=("segcls", "segcls.*")),
    python_requires=">=3.9",
    install_requires=[
        "torch",
        "torchvision",
        "numpy>=1.24",
        "Pillow>=10",
        "opencv-python-headless",
        "fvcore",
        "tabulate",
        "cityscapesscripts",
        "scipy",  # reading COCO-Stuff-10k .mat annotations (datasets/prepare_coco_stuff_10k_sem_seg.py)
        "timm>=1.0.31",  # segcls patches its Swin block and loads through its filters: tested with 1.0.31
        "safetensors",
    ],
    extras_require={"dev": ["pytest", "pytest-timeout"]},
)
