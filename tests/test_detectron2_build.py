"""The detectron2 that segcls installs: importable, honest about its missing compiled operators,
patched for Pillow >= 10 and NumPy >= 1.24, an ordinary pip distribution."""
import importlib.metadata
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2 import _C
from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import install_detectron2  # noqa: E402

pytestmark = pytest.mark.skipif(
    getattr(_C, "HAS_COMPILED_OPS", True),
    reason="a compiled detectron2 is installed (segcls uses it untouched); these tests cover segcls's pure-Python build",
)


def test_C_imports_and_reports_no_compiled_ops():
    assert _C.HAS_COMPILED_OPS is False
    from segcls.collect_env import detectron2_compiled_ops

    assert detectron2_compiled_ops() is False


@pytest.mark.parametrize("op", ["deform_conv_forward", "box_iou_rotated", "roi_align_rotated_forward"])
def test_compiled_op_attribute_raises_clear_error(op):
    with pytest.raises(_C.CompiledOperatorUnavailable, match=f"'{op}'.*[Bb]uild detectron2 from source"):
        getattr(_C, op)


def test_layers_using_compiled_ops_raise_clear_error():
    from detectron2.layers import ROIAlignRotated, nms_rotated

    pooler = ROIAlignRotated((2, 2), spatial_scale=1.0, sampling_ratio=0)
    with pytest.raises(_C.CompiledOperatorUnavailable, match="roi_align_rotated_forward"):
        pooler(torch.rand(1, 2, 8, 8), torch.tensor([[0.0, 4.0, 4.0, 2.0, 2.0, 0.0]]))
    with pytest.raises(_C.CompiledOperatorUnavailable, match="nms_rotated"):
        nms_rotated(torch.rand(3, 5), torch.rand(3), 0.5)


def test_deformable_conv_runs_on_cpu_through_torchvision():
    from detectron2.layers import DeformConv

    conv = DeformConv(4, 4, kernel_size=3, padding=1)
    assert conv(torch.rand(1, 4, 5, 5), torch.zeros(1, 18, 5, 5)).shape == (1, 4, 5, 5)


def test_pillow10_fix():
    from detectron2.data.transforms import ExtentTransform

    assert ExtentTransform((0, 0, 4, 4), (4, 4)).interp == Image.BILINEAR


def test_numpy124_fixes():
    from detectron2.structures.masks import polygons_to_bitmask

    mask = polygons_to_bitmask([], 3, 4)  # used np.bool
    assert mask.dtype == bool and mask.shape == (3, 4) and not mask.any()
    src = importlib.util.find_spec("detectron2.evaluation.sem_seg_evaluation").origin
    text = open(src).read()
    assert "np.int)" not in text and "np.float)" not in text and "dtype=int" in text


def test_is_an_ordinary_pip_distribution_without_the_black_pin():
    dist = importlib.metadata.distribution("pb1-detectron2")
    assert dist.version == "0.6"
    requires = dist.requires or []
    assert not any(r.replace(" ", "").startswith("black") for r in requires)
    assert any(r.startswith("fvcore") for r in requires)
    assert any(str(f).endswith("detectron2/_C.py") for f in dist.files)


def test_installer_refuses_an_sdist_with_the_wrong_hash(tmp_path, monkeypatch):
    fake = tmp_path / install_detectron2.SDIST_NAME
    fake.write_bytes(b"not the real sdist")
    monkeypatch.setenv("SEGCLS_DETECTRON2_SDIST", str(fake))
    with pytest.raises(SystemExit, match="does not match"):
        install_detectron2.fetch_sdist()
    monkeypatch.setenv("SEGCLS_DETECTRON2_SDIST", str(tmp_path / "missing.tar.gz"))
    with pytest.raises(SystemExit, match="no such file"):
        install_detectron2.fetch_sdist()


def test_patch_only_touches_the_documented_files():
    patch = open(install_detectron2.PATCH).read()
    touched = sorted(line.split()[1].split("/", 2)[2] for line in patch.splitlines() if line.startswith("+++ "))
    assert touched == [
        "detectron2/_C.py",
        "detectron2/data/build.py",
        "detectron2/data/transforms/transform.py",
        "detectron2/evaluation/pascal_voc_evaluation.py",
        "detectron2/evaluation/sem_seg_evaluation.py",
        "detectron2/structures/masks.py",
        "detectron2/utils/video_visualizer.py",
        "detectron2/utils/visualizer.py",
        "setup.py",
    ]
    assert np.__version__ >= "1.24"
