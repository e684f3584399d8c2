"""The one head-config schema (segcls.modeling.heads.config): both head nodes have the same keys,
each head's keys come from its own file, and keys that nothing reads are rejected."""
import pytest
from detectron2.modeling import build_model

from segcls.engine.defaults import load_config
from segcls.modeling.heads.config import HEAD_NODES, registered_head_keys, validate_head_config
from helpers import TINY_MODEL


def test_both_nodes_have_the_same_keys_and_the_aux_defaults():
    cfg = load_config()
    decode, aux = cfg.MODEL.DECODE_HEAD, cfg.MODEL.AUX_HEAD
    assert set(aux) == set(decode) | {"ENABLED", "DROPOUT"}
    assert (aux.CHANNELS, aux.IN_FEATURES, aux.DROPOUT, aux.LOSS_WEIGHTS) == (256, ["res4"], 0.1, [0.4])
    assert (decode.CHANNELS, decode.IN_FEATURES, decode.LOSS_WEIGHTS) == (512, ["res5"], [1.0])
    assert not aux.ENABLED
    for key in set(decode) - {"CHANNELS", "IN_FEATURES", "LOSS_WEIGHTS"}:
        assert aux[key] == decode[key], key


def test_each_head_declares_its_keys_in_its_own_file():
    modules = {entry.subnode: entry.declare.__module__ for entry in registered_head_keys() if entry.subnode}
    assert modules["DANET"] == "segcls.modeling.heads.danet"
    assert modules["OCR"] == "segcls.modeling.heads.ocr"
    assert modules["CPNET"] == "segcls.modeling.heads.cpnet"
    assert modules["CAA"] == "segcls.modeling.heads.caa"
    assert modules["PPM"] == "segcls.modeling.heads.psp"
    assert modules["NONLOCAL"] == modules["CCNET"] == "segcls.modeling.heads.self_attention"
    cfg = load_config()
    for node in HEAD_NODES:
        assert set(modules) <= set(cfg.MODEL[node])


@pytest.mark.parametrize("key, value", [("NORM", "BN"), ("CONVS_DIM", "64"), ("NAME", "DAHead"),
                                        ("IN_FEATURES", "['res5']"), ("LOSS_WEIGHT", "0.5")])
def test_dead_sem_seg_head_key_is_an_error(key, value):
    with pytest.raises(ValueError, match=rf"MODEL\.SEM_SEG_HEAD\.{key} is set .*MODEL\.DECODE_HEAD\.{key}"):
        load_config(opts=["MODEL.SEM_SEG_HEAD." + key, value])


def test_sem_seg_head_keys_that_segcls_reads_and_defaults_are_fine():
    cfg = load_config(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "0",
                            "MODEL.SEM_SEG_HEAD.NORM", "GN"])  # GN is detectron2's default
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 7


def test_key_of_another_head_is_an_error():
    with pytest.raises(ValueError) as e:
        validate_head_config(load_config(opts=["MODEL.AUX_HEAD.DANET.BRANCH_LOSS_WEIGHT", "0.5"]))
    assert "MODEL.AUX_HEAD.DANET.BRANCH_LOSS_WEIGHT is set" in str(e.value)
    assert "MODEL.AUX_HEAD.NAME is FCNHead, which does not read it" in str(e.value)
    with pytest.raises(ValueError, match=r"MODEL\.DECODE_HEAD\.OCR\.KEY_CHANNELS is set .* PSPHead"):
        validate_head_config(
            load_config(opts=["MODEL.DECODE_HEAD.NAME", "PSPHead", "MODEL.DECODE_HEAD.OCR.KEY_CHANNELS", "64"])
        )
    with pytest.raises(ValueError, match=r"MODEL\.DECODE_HEAD\.NUM_CONVS is set .* DAHead"):
        validate_head_config(load_config(opts=["MODEL.DECODE_HEAD.NAME", "DAHead", "MODEL.DECODE_HEAD.NUM_CONVS", "2"]))


def test_keys_the_selected_head_reads_are_fine():
    for opts in (
        ["MODEL.DECODE_HEAD.NAME", "DAHead", "MODEL.DECODE_HEAD.DANET.BRANCH_LOSS_WEIGHT", "0.5"],
        ["MODEL.DECODE_HEAD.NAME", "DeepLabV3PlusHead", "MODEL.DECODE_HEAD.ASPP.RATES", "[1, 2]",
         "MODEL.DECODE_HEAD.DEEPLABV3PLUS.NUM_CONVS", "1"],
        ["MODEL.DECODE_HEAD.NAME", "CCHead", "MODEL.DECODE_HEAD.CONCAT_INPUT", "True"],
    ):
        validate_head_config(load_config(opts=opts))


def test_the_check_also_runs_when_the_model_is_built():
    cfg = load_config(opts=TINY_MODEL + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    cfg.MODEL.AUX_HEAD.ENABLED = True
    cfg.MODEL.AUX_HEAD.CPNET.PRIOR_SIZE = 8
    with pytest.raises(ValueError, match=r"MODEL\.AUX_HEAD\.CPNET\.PRIOR_SIZE is set .* FCNHead"):
        build_model(cfg)
    cfg.MODEL.AUX_HEAD.CPNET.PRIOR_SIZE = 64
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 8
    with pytest.raises(ValueError, match=r"MODEL\.SEM_SEG_HEAD\.COMMON_STRIDE"):
        build_model(cfg)
