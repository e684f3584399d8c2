"""KSAC (thesis ch. 2, Algorithm 1): one shared kernel, BN per rate, parameter savings vs ASPP."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec

from segcls.engine.defaults import load_config
from segcls.modeling.heads import ASPPHead, DeepLabV3PlusHead, KSACHead
from segcls.modeling.heads.aspp import ASPP, SharedAtrousConv


def head(cls, in_channels, stride, *opts):
    cfg = load_config(opts=["MODEL.DEVICE", "cpu", *opts])
    return cls(cfg, {"res5": ShapeSpec(channels=in_channels, stride=stride)})


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def conv_weights(module):
    return [p for name, p in module.named_parameters() if p.dim() == 4]


@pytest.mark.parametrize("rates", [(6, 12, 18), (1, 6, 12, 18, 24), (3,)])
def test_exactly_one_shared_kernel(rates):
    ksac = SharedAtrousConv(5, 7, rates)
    assert [tuple(w.shape) for w in conv_weights(ksac)] == [(7, 5, 3, 3)]
    assert len(ksac.norms) == len(rates)


def test_atrous_part_equals_sum_of_relu_of_dilated_convs():
    """With identity BN statistics (eval mode, mean 0, var 1, eps 0, affine 1/0):
    KSAC(x) = sum_r relu(conv2d(x, W, dilation=r, padding=r)) (Algorithm 1)."""
    torch.manual_seed(0)
    rates = (1, 2, 5)
    ksac = SharedAtrousConv(3, 4, rates).double().eval()
    for bn in ksac.norms:
        bn.eps = 0.0
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    expected = sum(F.relu(F.conv2d(x, ksac.weight, padding=r, dilation=r)) for r in rates)
    torch.testing.assert_close(ksac(x), expected, rtol=0, atol=1e-12)
    # Per-rate BN is really applied: changing one rate's BN changes the output.
    ksac.norms[1].bias.data.fill_(1.0)
    assert not torch.allclose(ksac(x), expected)


def test_ksac_head_has_9568256_fewer_parameters_than_aspp():
    """in=2048, out=256, rates (6, 12, 18): 2 x 256*2048*9 kernel weights + (5 - 3) * 256 * 256 weights of
    the projection's input = 9,568,256 (thesis: "about 10M saved")."""
    opts = ["MODEL.DECODE_HEAD.CHANNELS", 256, "MODEL.DECODE_HEAD.ASPP.RATES", [6, 12, 18]]
    aspp, ksac = head(ASPPHead, 2048, 16, *opts), head(KSACHead, 2048, 16, *opts)
    assert num_params(aspp) - num_params(ksac) == 9_568_256
    assert sum(w.numel() for w in conv_weights(ksac.aspp.atrous)) == 256 * 2048 * 9


def test_extra_rates_add_only_one_norm_each():
    def build(rates):
        return head(KSACHead, 32, 16, "MODEL.DECODE_HEAD.CHANNELS", 8, "MODEL.DECODE_HEAD.ASPP.RATES", rates)

    assert num_params(build([1, 6, 12, 18, 24])) - num_params(build([6, 12, 18])) == 2 * (2 * 8)  # BN weight + bias


@pytest.mark.parametrize("stride, rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_default_rates_by_output_stride(stride, rates):
    for cls in (ASPPHead, KSACHead):
        module = head(cls, 8, stride, "MODEL.DECODE_HEAD.CHANNELS", 4).aspp.atrous
        got = module[0].rates if cls is KSACHead else [m.dilation[0] for m in module]
        assert list(got) == rates


def test_merge_modes():
    """concat_project: [1x1, shared-kernel sum, pooling] -> 1x1 projection (3 * C inputs);
    sum: the elementwise sum of the three branches, no projection."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 5)
    cat = ASPP(6, 4, (1, 2), shared_kernel=True).eval()
    assert cat.project[0].weight.shape == (4, 3 * 4, 1, 1)
    summed = ASPP(6, 4, (1, 2), shared_kernel=True, merge="sum").eval()
    assert summed.project is None
    expected = summed.conv1x1(x) + summed.atrous[0](x) + summed.image_pool(x)
    torch.testing.assert_close(summed(x), expected)
    concat_only = ASPP(6, 4, (1, 2), merge="concat")
    assert concat_only.out_channels == 4 * 4 and concat_only(x).shape == (2, 16, 5, 5)


def test_deeplabv3plus_with_ksac_encoder():
    """The thesis' "KSAC + D" (Table 2.1): DeepLabV3+ whose encoder shares one kernel."""
    cfg = load_config(
        opts=["MODEL.DECODE_HEAD.IN_FEATURES", ["res2", "res5"], "MODEL.DECODE_HEAD.CHANNELS", 8,
              "MODEL.DECODE_HEAD.DEEPLABV3PLUS.ENCODER", "KSAC"]
    )  # fmt: skip
    shapes = {"res2": ShapeSpec(channels=4, stride=4), "res5": ShapeSpec(channels=16, stride=16)}
    plus = DeepLabV3PlusHead(cfg, shapes)
    assert [tuple(w.shape) for w in conv_weights(plus.aspp.atrous)] == [(8, 16, 3, 3)]
    out = plus.eval()({"res2": torch.randn(2, 4, 12, 12), "res5": torch.randn(2, 16, 3, 3)})
    assert out.pixel_feature.shape == (2, 8, 12, 12)
    cfg.MODEL.DECODE_HEAD.ASPP.SEPARABLE = True
    with pytest.raises(ValueError, match="SEPARABLE"):
        DeepLabV3PlusHead(cfg, shapes)
