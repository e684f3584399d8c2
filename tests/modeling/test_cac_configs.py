"""The CAC yaml files: Table 1 rows (ADE20K, COCO-Stuff-164k), the ablations and the synthetic demo."""
import glob
import os

import pytest
import yaml
from detectron2.config import CfgNode as CN

import segcls  # noqa: F401
from segcls.engine import load_config
from segcls.modeling.classifiers import ContextAwareClassifier
from helpers import REPO

ROOT = os.path.join(REPO, "configs")
TABLE1 = sorted(glob.glob(os.path.join(ROOT, "ade20k", "cac_*.yaml")) + glob.glob(os.path.join(ROOT, "coco_stuff", "cac_*.yaml")))
TABLE1 = [f for f in TABLE1 if not f.endswith("cac_base.yaml")]
ABLATIONS = sorted(glob.glob(os.path.join(ROOT, "ade20k", "cac_ablations", "*.yaml")))
SYNTHETIC = os.path.join(ROOT, "synthetic_context", "fcn_r18_cac.yaml")
def _name(path):
    return os.path.relpath(path, ROOT)


def test_every_table1_row_on_both_datasets():
    rows = {os.path.basename(f) for f in TABLE1}
    expected = {f"cac_{m}.yaml" for m in (
        "fcn_mobilenetv2", "deeplabv3plus_r50", "deeplabv3plus_r101", "upernet_r50", "upernet_r101",
        "upernet_swin_t", "upernet_swin_b", "upernet_swin_l", "ocr_hrnet_w18", "ocr_hrnet_w48")}
    assert rows == expected
    assert len(TABLE1) == 2 * len(expected)


@pytest.mark.parametrize("path", TABLE1, ids=_name)
def test_table1_config(path):
    cfg = load_config(path)
    ade = "/ade20k/" in path
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == (150 if ade else 171)
    prefix = "ade20k_sem_seg" if ade else "coco_stuff_164k_sem_seg"
    assert cfg.DATASETS.TRAIN == (f"{prefix}_train",) and cfg.DATASETS.TEST == (f"{prefix}_val",)
    assert cfg.MODEL.CLASSIFIER.NAME == "ContextAwareClassifier"
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, list(cfg.INPUT.CROP.SIZE)) == (160000, 16, [512, 512])
    swin = "swin" in path
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR) == (("ADAMW", 6e-5) if swin else ("SGD", 0.01))
    assert cfg.MODEL.DECODE_HEAD.CHANNELS == 512  # d = 512: the paper's +0.79M parameters
    ContextAwareClassifier(cfg, cfg.MODEL.DECODE_HEAD.CHANNELS, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)


@pytest.mark.parametrize("path", ABLATIONS, ids=_name)
def test_ablation_keys_are_valid_and_build(path):
    """The ablation's own keys on the default config (its Swin-T base needs the timm backbone)."""
    with open(path) as f:
        own = yaml.safe_load(f)
    assert own.pop("_BASE_") == "../cac_upernet_swin_t.yaml"
    cfg = load_config("", ["MODEL.CLASSIFIER.NAME", "ContextAwareClassifier"])
    cfg.merge_from_other_cfg(CN(own))
    if cfg.MODEL.CLASSIFIER.NAME == "ContextAwareClassifier":
        ContextAwareClassifier(cfg, 16, 150)


@pytest.mark.parametrize("path", ABLATIONS, ids=_name)
def test_ablation_config_loads(path):
    assert load_config(path).MODEL.CLASSIFIER.NAME in ("ContextAwareClassifier", "LinearClassifier")


def test_synthetic_demo_config():
    cfg = load_config(SYNTHETIC)
    assert cfg.MODEL.CLASSIFIER.NAME == "ContextAwareClassifier"
