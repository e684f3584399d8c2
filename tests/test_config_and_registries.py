"""Config wiring: every key has a default, unknown keys fail clearly, and forks extend every
registry from outside segcls/."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from segcls.utils.config import get_config_node
from segcls.engine import load_config
from segcls.modeling.outputs import MAIN, Prediction, SegOutputs
from segcls.modeling import (
    CLASSIFIER_REGISTRY,
    DECODE_HEAD_REGISTRY,
    PIXEL_LOSS_REGISTRY,
    REGULARIZER_REGISTRY,
)
from helpers import TINY_MODEL, REPO



def test_builtin_pieces_are_registered():
    assert "FCNHead" in DECODE_HEAD_REGISTRY
    assert "LinearClassifier" in CLASSIFIER_REGISTRY
    assert "CrossEntropyLoss" in PIXEL_LOSS_REGISTRY


def test_segcls_defaults():
    cfg = load_config()
    assert cfg.MODEL.META_ARCHITECTURE == "PerPixelSegmentor"
    assert cfg.MODEL.DECODE_HEAD.NAME == "FCNHead"
    assert cfg.DATALOADER.SAMPLER_TRAIN == "ResumableTrainingSampler"
    assert get_config_node(cfg, "MODEL.AUX_HEAD").LOSS_WEIGHTS == [0.4]


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  DECODE_HEAD:\n    CHANNELZ: 3\n")
    with pytest.raises(KeyError, match=r"bad\.yaml.*MODEL\.DECODE_HEAD\.CHANNELZ"):
        load_config(str(bad))


def test_unknown_key_on_command_line_is_named():
    with pytest.raises(KeyError, match=r"command-line.*SOLVER\.LEARNING_RATE"):
        load_config("", ["SOLVER.LEARNING_RATE", "0.1"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_every_shipped_config_loads():
    files = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    assert files, "no configs found"
    for f in files:
        cfg = load_config(f)
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES > 0, f
        for line in open(f):
            if line.startswith("_BASE_"):
                base = os.path.normpath(os.path.join(os.path.dirname(f), line.split(":", 1)[1].strip().strip("\"'")))
                assert base.startswith(os.path.normpath(os.path.join(REPO, "configs"))), f"{f}: _BASE_ leaves configs/"


# A "fork" adds its own head, classifier, loss and regularizer without touching segcls/.
@DECODE_HEAD_REGISTRY.register()
class _TestIdentityHead(nn.Module):
    def __init__(self, cfg, input_shape, prefix):
        super().__init__()
        self.out_channels = input_shape["res5"].channels
        self.out_stride = input_shape["res5"].stride

    def forward(self, features, targets=None):
        return SegOutputs(pixel_feature=features["res5"], losses={"loss_test_head": features["res5"].sum() * 0})


@CLASSIFIER_REGISTRY.register()
class _TestTwoPredClassifier(nn.Module):
    def __init__(self, cfg, in_channels, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x, targets=None):
        out = SegOutputs(predictions={MAIN: Prediction(self.conv(x))})
        if self.training:  # no loss spec of its own: scored with MODEL.DECODE_HEAD.LOSSES
            out.predictions["extra"] = Prediction(2 * out.logits)
        return out


@PIXEL_LOSS_REGISTRY.register()
class _TestMeanLogitLoss(nn.Module):
    name = "meanlogit"

    def __init__(self, cfg, ignore_value):
        super().__init__()

    def forward(self, logits, targets):
        return logits.mean()


@REGULARIZER_REGISTRY.register()
class _TestFeatureNorm(nn.Module):
    def __init__(self, cfg, in_channels, num_classes):
        super().__init__()

    def forward(self, outputs, targets):
        return {"loss_featnorm": outputs.pixel_feature.pow(2).mean()}


def test_fork_pieces_are_selected_from_config():
    cfg = load_config(
        "",
        TINY_MODEL
        + [
            "MODEL.DECODE_HEAD.NAME", "_TestIdentityHead",
            "MODEL.CLASSIFIER.NAME", "_TestTwoPredClassifier",
            "MODEL.DECODE_HEAD.LOSSES", "['CrossEntropyLoss', '_TestMeanLogitLoss']",
            "MODEL.DECODE_HEAD.LOSS_WEIGHTS", "[1.0, 0.5]",
            "MODEL.REGULARIZERS.NAMES", "['_TestFeatureNorm']",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4",
        ],
    )
    model = build_model(cfg)
    batch = [{"image": torch.rand(3, 24, 24) * 255, "sem_seg": torch.randint(0, 4, (24, 24))}]
    losses = model(batch)
    assert set(losses) == {
        "loss_ce", "loss_meanlogit", "loss_extra_ce", "loss_extra_meanlogit", "loss_test_head", "loss_featnorm"
    }
    assert torch.allclose(losses["loss_extra_meanlogit"], 2 * losses["loss_meanlogit"])
