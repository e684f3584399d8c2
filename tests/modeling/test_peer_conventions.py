"""
Conventions segcls shares with mmsegmentation / torchvision (issue 14): dilated ResNet block
dilations, the V1c stem width, ResNet-D's average-pool shortcut, and the configs that claim mmsegmentation's recipe.
"""
import pytest
import torch
from detectron2.modeling import build_backbone

from segcls.engine.defaults import load_config


def _dilations(backbone, stage):
    return [block.conv2.dilation[0] for block in getattr(backbone, stage)]


@pytest.mark.parametrize(
    "contract, stride, res4, res5",
    [
        (True, 8, [1, 2, 2, 2, 2, 2], [2, 4, 4]),  # torchvision / mmseg contract_dilation=True
        (False, 8, [2] * 6, [4, 4, 4]),  # segcls before issue 14
        (True, 16, [1] * 6, [1, 2, 2]),
    ],
)
def test_first_block_of_a_dilated_stage(contract, stride, res4, res5):
    cfg = load_config(
        opts=["MODEL.RESNETS.OUTPUT_STRIDE", stride, "MODEL.RESNETS.CONTRACT_DILATION", contract,
              "MODEL.RESNETS.RES2_OUT_CHANNELS", 16, "MODEL.RESNETS.WIDTH_PER_GROUP", 4]
    )  # fmt: skip
    backbone = build_backbone(cfg)
    assert _dilations(backbone, "res4") == res4 and _dilations(backbone, "res5") == res5
    assert [b.conv2.padding[0] for b in backbone.res5] == res5


def test_multi_grid_multiplies_the_stage_dilation_without_contraction():
    cfg = load_config(
        opts=["MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2, 4]", "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
              "MODEL.RESNETS.WIDTH_PER_GROUP", 4]
    )  # fmt: skip
    assert _dilations(build_backbone(cfg), "res5") == [4, 8, 16]
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [0.25, 0.5, 1]  # mmseg's absolute multi_grid=(1, 2, 4)
    assert _dilations(build_backbone(cfg), "res5") == [1, 2, 4]
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [0.1, 1, 1]
    with pytest.raises(ValueError, match="RES5_MULTI_GRID.*positive integers"):
        build_backbone(cfg)


def _avg_down_reference(x, conv, bn, stride):
    """ResNet-D / mmseg avg_down shortcut, written out: each output pixel is the mean of the input
    pixels of its stride x stride window that lie inside the image (ceil_mode, padding not
    counted), then the 1x1 conv (weight (C_out, C_in)) and the eval-mode BN."""
    n, c, h, w = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    pooled = torch.empty(n, c, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            pooled[:, :, i, j] = x[:, :, i * stride : (i + 1) * stride, j * stride : (j + 1) * stride].mean((2, 3))
    y = torch.einsum("oc,nchw->nohw", conv, pooled)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


@pytest.mark.parametrize("depth", [18, 50])
def test_avg_down_shortcut_equals_resnet_d_formula(depth):
    """MODEL.RESNETS.AVG_DOWN: res3's first shortcut average-pools 2x2 (odd sizes: the border
    window averages its in-image pixels) before a stride-1 1x1 conv; stride-1 shortcuts (res2 and
    the dilated res4/res5) have no pool; the other blocks are unchanged."""
    opts = ["MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16 if depth == 50 else 8,
            "MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.RESNETS.STEM_OUT_CHANNELS", 8]  # fmt: skip
    torch.manual_seed(0)
    backbone = build_backbone(load_config(opts=opts + ["MODEL.RESNETS.AVG_DOWN", "True"])).double().eval()
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    shortcut = backbone.res3[0].shortcut
    x = torch.randn(2, shortcut.in_channels, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        expected = _avg_down_reference(x, shortcut.weight[:, :, 0, 0], shortcut.norm, 2)
        torch.testing.assert_close(shortcut(x), expected, rtol=1e-12, atol=1e-12)
        assert shortcut(x).shape[-2:] == (5, 6)
    assert shortcut.stride == (1, 1) and shortcut.pool is not None
    for stage in ("res4", "res5") + (("res2",) if depth == 50 else ()):
        first = getattr(backbone, stage)[0].shortcut
        assert first.pool is None and first.stride == (1, 1)
    plain = build_backbone(load_config(opts=opts))
    assert plain.res3[0].shortcut.stride == (2, 2)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in backbone.state_dict().items()}


@pytest.mark.parametrize("config", ["configs/ade20k/Base-R50-D8.yaml", "configs/pascal_context_59/Base-R101-D8.yaml"])
def test_deeplab_stem_is_mmseg_v1c_32_32_64(config):
    cfg = load_config(config, ["MODEL.RESNETS.NORM", "BN", "MODEL.DEVICE", "cpu"])
    stem = build_backbone(cfg).stem
    assert [stem.conv1.out_channels, stem.conv2.out_channels, stem.conv3.out_channels] == [32, 32, 64]


def test_mmseg_deeplabv3plus_layout_has_mmseg_parameter_count():
    """mmsegmentation 1.2.2's DepthwiseSeparableASPPHead(in_channels=2048, channels=512,
    dilations=(1, 12, 24, 36), c1_in_channels=256, c1_channels=48, num_classes=150) has 17,765,126
    parameters (image_pool 1,049,600, aspp_modules 4,265,984, bottleneck 11,797,504, c1_bottleneck
    12,384, sep_bottleneck 562,704, conv_seg 76,950; counted on the real module)."""
    from detectron2.modeling import build_model

    cfg = load_config(
        "configs/ade20k/deeplabv3plus_r50-d8_512x512_80k.yaml",
        ["MODEL.RESNETS.NORM", "BN", "MODEL.DECODE_HEAD.NORM", "BN", "MODEL.AUX_HEAD.ENABLED", "False",
         "MODEL.DEVICE", "cpu"],
    )  # fmt: skip
    model = build_model(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    head = model.decode_head
    assert count(head.aspp.image_pool) == 1_049_600 and count(head.aspp.project) == 11_797_504
    assert count(head.convs) + count(head.tail) == 562_704
    assert count(head) + count(model.classifier) == 17_765_126
