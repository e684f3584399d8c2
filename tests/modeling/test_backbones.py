"""
Backbones (issue 5): the timm adapter for every paper variant, dilation, norms, frozen stages,
offline weights (timm, official Swin, torchvision -> detectron2 ResNet), the backbone configs and
the solver's layer decay / position-table weight decay. Small variants at 64x64, on CPU.
"""
import glob
import logging
import os

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformerBlock

import segcls  # noqa: F401
from segcls.engine.defaults import load_config
from segcls.modeling.backbone import TimmBackbone, load_backbone_weights
from segcls.modeling.backbone.timm_backbone import _PadFirstSwinBlock
from segcls.modeling.backbone.utils import get_backbone_stage_ids
from segcls.solver import get_param_groups
from helpers import REPO, load_script

ROOT = REPO
CONFIGS = os.path.join(ROOT, "configs", "backbones")
RES = ["res2", "res3", "res4", "res5"]
# A tiny Swin (official block structure: 2 blocks per stage, the second shifted).
TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))


def _cfg(config, *opts):
    return load_config(os.path.join(CONFIGS, config), list(opts))


def _check_outputs(backbone, size=64):
    """Forward a (1, 3, size, size) input; every output must have its declared channels and stride."""
    outputs = backbone(torch.randn(1, 3, size, size))
    shapes = backbone.output_shape()
    assert list(outputs) == list(shapes)
    for name, x in outputs.items():
        s = shapes[name]
        assert tuple(x.shape) == (1, s.channels, size // s.stride, size // s.stride), name
    return outputs


# (config, overrides to a small variant of the same family, expected {name: (channels, stride)})
SMALL_VARIANTS = {
    "swin": ("swin_tiny.yaml", [], {"res2": (96, 4), "res3": (192, 8), "res4": (384, 16), "res5": (768, 32)}),
    "convnext": (
        "convnext_large.yaml",
        ["MODEL.TIMM.NAME", "convnext_atto"],
        {"res2": (40, 4), "res3": (80, 8), "res4": (160, 16), "res5": (320, 32)},
    ),
    "efficientnet": (
        "efficientnet_b5.yaml",
        ["MODEL.TIMM.NAME", "efficientnet_b0"],
        {"res2": (24, 4), "res3": (40, 8), "res4": (112, 8), "res5": (320, 8)},
    ),
    "hrnet": (
        "hrnet_w18.yaml",
        ["MODEL.TIMM.NAME", "hrnet_w18_small"],
        {"res2": (16, 4), "res3": (32, 8), "res4": (64, 16), "res5": (128, 32), "hrnetv2": (240, 4)},
    ),
    "mobilenetv2": ("mobilenetv2.yaml", [], {"res2": (24, 4), "res3": (32, 8), "res4": (96, 8), "res5": (320, 8)}),
    "resnet50d": ("resnet50d.yaml", [], {"res2": (256, 4), "res3": (512, 8), "res4": (1024, 8), "res5": (2048, 8)}),
}


@pytest.mark.parametrize("family", sorted(SMALL_VARIANTS))
def test_small_variant_builds_from_config_with_declared_shapes(family):
    config, opts, expected = SMALL_VARIANTS[family]
    backbone = build_backbone(_cfg(config, *opts))
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == expected
    _check_outputs(backbone)


# Declared (channels of res2..res5, output stride) of every config at full size, built on the meta
# device (no memory, no init): the paper variants' names resolve and their shapes are right.
FULL_VARIANTS = {
    "swin_tiny.yaml": ([96, 192, 384, 768], 32),
    "swin_base.yaml": ([128, 256, 512, 1024], 32),
    "swin_large.yaml": ([192, 384, 768, 1536], 32),
    "convnext_large.yaml": ([192, 384, 768, 1536], 32),
    "efficientnet_b5.yaml": ([40, 64, 176, 512], 8),
    "efficientnet_b7.yaml": ([48, 80, 224, 640], 8),
    "hrnet_w18.yaml": ([18, 36, 72, 144], 32),
    "hrnet_w48.yaml": ([48, 96, 192, 384], 32),
    "mobilenetv2.yaml": ([24, 32, 96, 320], 8),
    "resnet50d.yaml": ([256, 512, 1024, 2048], 8),
    "resnet101d.yaml": ([256, 512, 1024, 2048], 8),
}


def test_every_backbone_config_is_covered():
    configs = {os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.yaml"))}
    assert {c for c in configs if not c.startswith("Base-")} == set(FULL_VARIANTS)


@pytest.mark.parametrize("config", sorted(FULL_VARIANTS))
def test_full_size_config_declares_paper_shapes(config):
    channels, output_stride = FULL_VARIANTS[config]
    cfg = _cfg(config)
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert [shapes[n].channels for n in RES] == channels
    assert [shapes[n].stride for n in RES] == [min(s, output_stride) for s in (4, 8, 16, 32)]
    if "hrnet" in config:
        assert (shapes["hrnetv2"].channels, shapes["hrnetv2"].stride) == (sum(channels), 4)
        assert cfg.MODEL.DECODE_HEAD.IN_FEATURES == ["hrnetv2"]


@pytest.mark.parametrize("name", ["convnext_atto", "mobilenetv2_100"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_dilation_gives_requested_output_stride(name, output_stride):
    backbone = TimmBackbone(name, output_stride=output_stride)
    outputs = _check_outputs(backbone)
    assert outputs["res5"].shape[-1] == 64 // output_stride
    assert outputs["res3"].shape[-1] == 64 // 8
    assert backbone.size_divisibility == output_stride


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "hrnet_w18_small"])
def test_dilation_of_undilatable_model_is_a_clear_error(name):
    with pytest.raises(ValueError, match="MODEL.TIMM.OUTPUT_STRIDE=8: .*cannot dilate"):
        TimmBackbone(name, output_stride=8, model_kwargs=TINY_SWIN if "swin" in name else None)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="MODEL.TIMM.NAME='no_such_net'"):
        TimmBackbone("no_such_net")
    with pytest.raises(ValueError, match=r"MODEL.TIMM.OUT_FEATURES=.*'res6'.*provides \['res2'"):
        TimmBackbone("convnext_atto", out_features=["res5", "res6"])
    with pytest.raises(ValueError, match="MODEL.TIMM.DROP_PATH_RATE=0.1: .*hrnet_w18_small"):
        TimmBackbone("hrnet_w18_small", drop_path_rate=0.1)


def test_only_the_requested_levels_are_built():
    backbone = TimmBackbone("convnext_atto", out_features=["res3"])
    assert list(_check_outputs(backbone)) == ["res3"]
    assert not any(n.startswith("model.stages_2") for n, _ in backbone.named_parameters())


def test_hrnetv2_is_the_upsampled_concatenation_of_the_branches():
    backbone = TimmBackbone("hrnet_w18_small", out_features=RES + ["hrnetv2"]).eval()
    out = backbone(torch.randn(1, 3, 64, 64))
    expected = torch.cat(
        [out["res2"]] + [F.interpolate(out[n], size=(16, 16), mode="bilinear") for n in RES[1:]], dim=1
    )
    torch.testing.assert_close(out["hrnetv2"], expected)
    # The branch outputs, not timm's classification "incre" features (128 channels at stride 4).
    assert out["res2"].shape[1] == 16


def test_segmentor_trains_on_the_hrnetv2_feature():
    """The HRNet config feeds "hrnetv2" to the decode head; inputs are padded to size_divisibility."""
    from detectron2.modeling import build_model

    opts = ["MODEL.TIMM.NAME", "hrnet_w18_small", "MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]
    model = build_model(_cfg("hrnet_w18.yaml", *opts, "MODEL.DECODE_HEAD.CHANNELS", 16))
    assert model.preprocessor.size_divisibility == 32
    batch = [{"image": torch.randint(0, 255, (3, 60, 52), dtype=torch.uint8), "sem_seg": torch.randint(0, 5, (60, 52))}]
    losses = model(batch)
    sum(losses.values()).backward()
    assert torch.isfinite(sum(losses.values()))
    assert (model.decode_head.in_feature, model.decode_head.out_stride) == ("hrnetv2", 4)
    with torch.no_grad():
        assert model.eval()(batch)[0]["sem_seg"].shape == (5, 60, 52)


# ------------------------------------------------------------------------------------------------
# Swin
# ------------------------------------------------------------------------------------------------
def test_swin_pads_before_the_shift_as_the_official_segmentation_backbone():
    backbone = TimmBackbone("swin_tiny_patch4_window7_224", model_kwargs=TINY_SWIN)
    blocks = [m for m in backbone.modules() if isinstance(m, SwinTransformerBlock)]
    assert blocks and all(type(b) is _PadFirstSwinBlock for b in blocks)
    block = blocks[1]  # the shifted block of stage 1
    assert block.shift_size == (3, 3) and block.window_size == (7, 7)
    x = torch.randn(2, 10, 12, 16)  # not a multiple of the window
    with torch.no_grad():
        ours = block._attn(x)
        # On a zero-padded, window-multiple input timm's own attention is exact: ours must equal it.
        reference = SwinTransformerBlock._attn(block, F.pad(x, (0, 0, 0, 2, 0, 4)))[:, :10, :12]
        timm_unpadded = SwinTransformerBlock._attn(block, x)
    torch.testing.assert_close(ours, reference)
    assert not torch.allclose(timm_unpadded, reference, atol=1e-4)  # timm pads after the shift


def test_swin_output_does_not_depend_on_img_size_and_is_nchw():
    small = TimmBackbone("swin_tiny_patch4_window7_224", img_size=(64, 64), model_kwargs=TINY_SWIN).eval()
    large = TimmBackbone("swin_tiny_patch4_window7_224", img_size=(512, 512), model_kwargs=TINY_SWIN).eval()
    large.load_state_dict(small.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = small(x), large(x)
    for name in RES:
        torch.testing.assert_close(a[name], b[name])
    assert a["res2"].shape == (1, 16, 16, 24)  # NCHW


# ------------------------------------------------------------------------------------------------
# Norms and frozen stages
# ------------------------------------------------------------------------------------------------
def test_frozen_bn_keeps_the_fused_activation_and_equals_eval_bn():
    bn = TimmBackbone("efficientnet_b0").eval()
    for m in bn.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    frozen = TimmBackbone("efficientnet_b0", norm="FrozenBN")
    frozen.load_state_dict(bn.state_dict(), strict=False)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in frozen.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = bn(x), frozen.train()(x)
    for name in RES:
        torch.testing.assert_close(got[name], expected[name])


def test_sync_bn_converts_every_batchnorm():
    backbone = TimmBackbone("mobilenetv2_100", norm="SyncBN")
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, torch.nn.SyncBatchNorm) for m in bns)
    _check_outputs(backbone.train())  # one process, no process group: plain BN statistics


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("convnext_atto", {}),
        ("efficientnet_b0", {}),
        ("hrnet_w18_small", {"out_features": RES + ["hrnetv2"]}),
        ("swin_tiny_patch4_window7_224", {"model_kwargs": TINY_SWIN}),
    ],
)
def test_frozen_stages_receive_no_gradient(name, kwargs):
    backbone = TimmBackbone(name, freeze_at=2, **kwargs)
    ids = backbone.stage_ids()
    assert sorted(set(ids.values())) == [0, 1, 2, 3, 4]
    frozen_bn = [m for m in backbone.modules() if type(m).__name__.startswith("FrozenBatchNorm")]
    assert bool(frozen_bn) == (name != "swin_tiny_patch4_window7_224" and name != "convnext_atto")
    sum(o.float().mean() for o in _check_outputs(backbone.train()).values()).backward()
    params = dict(backbone.named_parameters())
    for param_name, stage in ids.items():
        if param_name not in params:
            continue  # a BatchNorm turned into FrozenBatchNorm (buffers only)
        param = params[param_name]
        if stage < 2:
            assert not param.requires_grad and param.grad is None, param_name
        else:
            assert param.grad is not None, param_name


def test_stage_ids_of_detectron2_resnet():
    cfg = load_config(opts=["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    ids = get_backbone_stage_ids(build_backbone(cfg))
    assert ids["stem.conv1.weight"] == 0 and ids["res2.0.conv1.weight"] == 1 and ids["res5.1.conv2.weight"] == 4


# ------------------------------------------------------------------------------------------------
# Offline weights
# ------------------------------------------------------------------------------------------------
def _timm_reference(name, path):
    """timm's own features model loaded by timm's own loader from ``path`` (independent reference)."""
    return timm.create_model(name, features_only=True, pretrained=True, pretrained_cfg_overlay={"file": path}).eval()


def test_timm_checkpoint_round_trip_pth(tmp_path):
    full = timm.create_model("convnext_atto")
    path = str(tmp_path / "convnext_atto.pth")
    torch.save(full.state_dict(), path)
    prefixed = str(tmp_path / "prefixed.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in full.state_dict().items()}}, prefixed)
    backbone = TimmBackbone("convnext_atto", weights=prefixed).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _timm_reference("convnext_atto", path)(x)
        got = backbone(x)
    for name, ref in zip(RES, expected):
        torch.testing.assert_close(got[name], ref)


def test_features_checkpoint_round_trip_safetensors(tmp_path, caplog):
    source = TimmBackbone("efficientnet_b0")
    path = str(tmp_path / "b0.safetensors")
    state = {"backbone." + k: v.contiguous() for k, v in source.state_dict().items()}
    state["backbone.model.extra.weight"] = torch.zeros(3)
    del state["backbone.model.conv_stem.weight"]
    save_file(state, path)
    with caplog.at_level(logging.INFO, logger="segcls"):
        target = TimmBackbone("efficientnet_b0", weights=path)
    for k, v in target.state_dict().items():
        if k != "model.conv_stem.weight":
            torch.testing.assert_close(v, source.state_dict()[k])
    log = caplog.text
    assert "conv_stem.weight" in log and "extra.weight" in log  # missing and unexpected, reported


def test_official_swin_checkpoint_is_converted(tmp_path):
    """An official-release Swin checkpoint (downsample at the end of a stage, "head.weight",
    index/mask buffers, under "model") loads like timm's layout."""
    full = timm.create_model("swin_tiny_patch4_window7_224", **TINY_SWIN)  # 224: every window 7x7
    timm_path = str(tmp_path / "timm.pth")
    torch.save(full.state_dict(), timm_path)
    official = {}
    for k, v in full.state_dict().items():
        if ".downsample." in k:
            stage = int(k.split(".")[1])
            k = k.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        official[k.replace("head.fc.", "head.")] = v
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    official_path = str(tmp_path / "official.pth")
    torch.save({"model": official}, official_path)
    a = TimmBackbone("swin_tiny_patch4_window7_224", weights=timm_path, model_kwargs=TINY_SWIN).eval()
    b = TimmBackbone("swin_tiny_patch4_window7_224", weights=official_path, model_kwargs=TINY_SWIN).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k])
    downsample = full.layers[1].downsample.reduction.weight
    torch.testing.assert_close(sa["model.layers_1.downsample.reduction.weight"], downsample)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    path = str(tmp_path / "femto.pth")
    torch.save(timm.create_model("convnext_femto").state_dict(), path)
    message = r"femto.pth' does not match timm convnext_atto.*first: stem_0.weight: \(48, 3, 4, 4\) in the file"
    with pytest.raises(ValueError, match=message):
        TimmBackbone("convnext_atto", weights=path)


def test_unrelated_checkpoint_is_a_clear_error(tmp_path):
    path = str(tmp_path / "mobilenet.pth")
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    with pytest.raises(ValueError, match="mobilenet.pth' does not fit timm mobilenetv2_100.*none of its"):
        TimmBackbone("mobilenetv2_100", weights=path)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    path = str(tmp_path / "absent.safetensors")
    cfg = _cfg("mobilenetv2.yaml", "MODEL.TIMM.WEIGHTS", path)
    with pytest.raises(FileNotFoundError, match=f"MODEL.TIMM.WEIGHTS: weights file '{path}' does not exist"):
        build_backbone(cfg)


def _random_bn_stats(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_to_detectron2_resnet(tmp_path, depth):
    tv = _random_bn_stats(getattr(torchvision.models, f"resnet{depth}")()).eval()
    path = str(tmp_path / f"resnet{depth}.pth")
    torch.save(tv.state_dict(), path)
    cfg = load_config(
        opts=["MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.OUTPUT_STRIDE", 32]
        + (["MODEL.RESNETS.RES2_OUT_CHANNELS", 64] if depth == 18 else [])
    )
    backbone = build_backbone(cfg)
    load_backbone_weights(backbone, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(tv.children())[:-2])(x)  # up to layer4
        got = backbone.eval()(x)["res5"]
    torch.testing.assert_close(got, expected)


def test_convert_pretrained_tool_feeds_model_weights(tmp_path):
    """tools/convert_pretrained.py: torchvision ResNet-18 -> detectron2 checkpoint -> MODEL.WEIGHTS
    through detectron2's checkpointer into a full segmentor."""
    tv = _random_bn_stats(torchvision.models.resnet18()).eval()
    source, output = str(tmp_path / "r18.pth"), str(tmp_path / "r18_d2.pth")
    torch.save(tv.state_dict(), source)
    opts = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.OUTPUT_STRIDE", "32"]
    tool = load_script("tools/convert_pretrained.py")
    tool.main(["--input", source, "--output", output] + opts)
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["matching_heuristics"] is False and "segcls" in checkpoint["__author__"]
    assert "backbone.stem.conv1.norm.running_var" in checkpoint["model"]

    from detectron2.modeling import build_model

    model = build_model(load_config(opts=opts + ["MODEL.DEVICE", "cpu"]))
    DetectionCheckpointer(model).load(output)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model.backbone.eval()(x)["res5"], torch.nn.Sequential(*list(tv.children())[:-2])(x)
        )


# ------------------------------------------------------------------------------------------------
# Solver: layer decay, no weight decay on position tables
# ------------------------------------------------------------------------------------------------
class _Segmentor(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Conv2d(8, 2, 1)


def test_layer_decay_and_position_table_weight_decay():
    model = _Segmentor(TimmBackbone("swin_tiny_patch4_window7_224", model_kwargs=TINY_SWIN))
    cfg = _cfg("swin_tiny.yaml", "SOLVER.BASE_LR", 1.0, "SOLVER.LAYER_DECAY", 0.5)
    groups = get_param_groups(cfg, model)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    b = model.backbone.model
    assert lr[id(b.patch_embed.proj.weight)] == 0.5**5  # stem
    assert lr[id(b.layers_0.blocks[0].attn.qkv.weight)] == 0.5**4
    assert lr[id(b.layers_3.blocks[1].mlp.fc2.weight)] == 0.5**1
    assert lr[id(model.head.weight)] == 1.0
    assert wd[id(b.layers_0.blocks[0].attn.relative_position_bias_table)] == 0.0
    assert wd[id(b.layers_0.blocks[0].norm1.weight)] == 0.0
    assert wd[id(b.layers_0.blocks[0].attn.qkv.weight)] == 0.01
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_layer_decay_off_keeps_the_default_groups():
    model = _Segmentor(TimmBackbone("convnext_atto"))
    cfg = load_config(opts=["SOLVER.BASE_LR", 0.01, "SOLVER.WEIGHT_DECAY", 0.1])
    assert sorted((g["lr"], g["weight_decay"]) for g in get_param_groups(cfg, model)) == [(0.01, 0.0), (0.01, 0.1)]


# ------------------------------------------------------------------------------------------------
# Per-stage output norms (MODEL.TIMM.OUT_NORM, issue 14)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs, eps", [("convnext_atto", {}, 1e-6), ("swin_tiny_patch4_window7_224", TINY_SWIN, 1e-5)])
def test_out_norm_is_a_layer_norm_over_channels_and_loads_from_norm_i(tmp_path, name, kwargs, eps):
    full = timm.create_model(name, **kwargs)
    # an mmseg/official segmentation-backbone file: the trunk + norm0..norm3 (random affine)
    channels = TimmBackbone(name, model_kwargs=kwargs).output_shape()
    norms = {f"norm{i}.{p}": torch.randn(channels[r].channels) for i, r in enumerate(RES) for p in ("weight", "bias")}
    path = str(tmp_path / "seg_backbone.pth")
    torch.save({"state_dict": {"backbone." + k: v for k, v in {**full.state_dict(), **norms}.items()}}, path)
    plain = TimmBackbone(name, model_kwargs=kwargs, weights=path).double().eval()  # norms unused
    loaded = TimmBackbone(name, model_kwargs=kwargs, out_norm=True, weights=path).double().eval()
    assert set(loaded.state_dict()) - set(plain.state_dict()) == {
        f"out_norms.{r}.{p}" for r in RES for p in ("weight", "bias")
    }
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref, got = plain(x), loaded(x)
    for i, r in enumerate(RES):  # direct formula: normalise each pixel's channel vector
        f = ref[r]
        mean, var = f.mean(1, keepdim=True), f.var(1, unbiased=False, keepdim=True)
        w, b = (norms[f"norm{i}.{p}"].double().view(1, -1, 1, 1) for p in ("weight", "bias"))
        torch.testing.assert_close(got[r], (f - mean) / torch.sqrt(var + eps) * w + b, rtol=0, atol=1e-10)
    assert loaded.stage_ids()["out_norms.res2.weight"] == 1 and loaded.stage_ids()["out_norms.res5.bias"] == 4


def test_out_norm_from_a_classification_checkpoint_keeps_init_and_partial_norms_fail(tmp_path):
    full = timm.create_model("convnext_atto")
    path = str(tmp_path / "cls.pth")
    torch.save(full.state_dict(), path)
    backbone = TimmBackbone("convnext_atto", out_norm=True, weights=path)
    assert torch.equal(backbone.out_norms.res3.weight, torch.ones(80))
    torch.save({**full.state_dict(), "norm0.weight": torch.ones(40), "norm0.bias": torch.zeros(40)}, path)
    with pytest.raises(ValueError, match=r"lacks the output norms \['res3.bias'"):
        TimmBackbone("convnext_atto", out_norm=True, weights=path)
