"""
segcls equals mmsegmentation 1.2.2 after weight transfer through ``segcls.converters`` (float64,
every parameter and BN statistic random): the real mmseg ResNetV1c backbone and decode / auxiliary
heads are built, their state dict converted, and the logits compared. Run with ``pytest -m peers``
(skipped without the peers, see conftest.py).
"""
import pytest
import torch
from torch.nn import functional as F

from segcls.converters import convert_state_dict
from segcls.modeling.losses import DiceLoss
from helpers import float64_segmentor, randomize

pytestmark = pytest.mark.peers
K, WIDTH = 5, 8  # classes; base width of the narrow ResNetV1c-50 (res2..res5: 32..256 channels)

BN = dict(type="BN", requires_grad=True)
CH = 16
V1C = ["MODEL.RESNETS.STEM_TYPE", "deeplab", "MODEL.RESNETS.STEM_OUT_CHANNELS", 64, "MODEL.RESNETS.RES2_OUT_CHANNELS",
       4 * WIDTH, "MODEL.RESNETS.WIDTH_PER_GROUP", WIDTH, "MODEL.DECODE_HEAD.CHANNELS", CH]  # fmt: skip
C = [4 * WIDTH, 8 * WIDTH, 16 * WIDTH, 32 * WIDTH]  # res2..res5 channels

CASES = {  # name: (segcls overrides, mmseg head factory (module, in_index), output stride)
    "fcn": (["MODEL.DECODE_HEAD.NUM_CONVS", 2, "MODEL.DECODE_HEAD.CONCAT_INPUT", "True"],
            lambda h: h.FCNHead(in_channels=C[3], in_index=3, channels=CH, num_convs=2, concat_input=True,
                                num_classes=K, norm_cfg=BN), 8),
    "pspnet": (["MODEL.DECODE_HEAD.NAME", "PSPHead"],
               lambda h: h.PSPHead(in_channels=C[3], in_index=3, channels=CH, pool_scales=(1, 2, 3, 6), num_classes=K,
                                   norm_cfg=BN), 8),
    "deeplabv3": (["MODEL.DECODE_HEAD.NAME", "ASPPHead", "MODEL.DECODE_HEAD.ASPP.MERGE", "concat"],
                  lambda h: h.ASPPHead(in_channels=C[3], in_index=3, channels=CH, dilations=(1, 12, 24, 36),
                                       num_classes=K, norm_cfg=BN), 8),
    "deeplabv3plus": (["MODEL.DECODE_HEAD.NAME", "DeepLabV3PlusHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res5"]',
                       "MODEL.DECODE_HEAD.ASPP.SEPARABLE", "True", "MODEL.DECODE_HEAD.ASPP.PROJECT_KERNEL", 3,
                       "MODEL.DECODE_HEAD.ASPP.DROPOUT", 0.0, "MODEL.DECODE_HEAD.DEEPLABV3PLUS.SEPARABLE_LAST_CONV", "True"],
                      lambda h: h.DepthwiseSeparableASPPHead(in_channels=C[3], in_index=3, channels=CH,
                                                             dilations=(1, 12, 24, 36), c1_in_channels=C[0], c1_channels=48,
                                                             num_classes=K, norm_cfg=BN), 8),
    "nonlocal": (["MODEL.DECODE_HEAD.NAME", "NonLocalHead", "MODEL.DECODE_HEAD.CONCAT_INPUT", "True"],
                 lambda h: h.NLHead(in_channels=C[3], in_index=3, channels=CH, num_classes=K, norm_cfg=BN), 8),
    "ccnet": (["MODEL.DECODE_HEAD.NAME", "CCHead", "MODEL.DECODE_HEAD.CONCAT_INPUT", "True"],
              lambda h: h.CCHead(in_channels=C[3], in_index=3, channels=CH, recurrence=2, num_classes=K, norm_cfg=BN), 8),
    "danet": (["MODEL.DECODE_HEAD.NAME", "DAHead"],
              lambda h: h.DAHead(in_channels=C[3], in_index=3, channels=CH, pam_channels=CH // 8, num_classes=K,
                                 norm_cfg=BN), 8),
    "upernet": (["MODEL.DECODE_HEAD.NAME", "UPerHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res3", "res4", "res5"]',
                 "MODEL.RESNETS.OUTPUT_STRIDE", 32],
                lambda h: h.UPerHead(in_channels=C, in_index=(0, 1, 2, 3), channels=CH, pool_scales=(1, 2, 3, 6),
                                     num_classes=K, norm_cfg=BN), 32),
}  # fmt: skip


def assert_equal_after_conversion(peer, model, peer_logits):
    """Convert ``peer``'s state dict onto ``model`` (every file tensor used, every model tensor
    filled), load it, and compare the main logits on a random (2, 3, 64, 64) batch with
    ``peer_logits(x)`` (resized to the input) to 1e-10 of their scale; returns (x, model)."""
    conversion = convert_state_dict(peer.state_dict(), model, type(peer).__name__)
    assert conversion.unused == [] and set(conversion.tensors) == set(model.state_dict())
    model.load_state_dict(conversion.tensors)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = F.interpolate(peer_logits(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        got = torch.stack([model([{"image": img}])[0]["sem_seg"] for img in x])
    assert expected.abs().max() > 1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 * expected.abs().max())
    return x


def test_mmseg_ocrnet_cascade_equals_segcls_after_conversion(mmseg):
    """mmseg's OCRNet (CascadeEncoderDecoder: FCN on res4 -> OCR on res5), the coarse logits
    feeding the OCR head's spatial gather."""
    from mmseg.models import backbones, decode_heads

    peer = torch.nn.Module()
    peer.backbone = backbones.ResNetV1c(depth=50, base_channels=WIDTH, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                                        contract_dilation=True, norm_cfg=BN)  # fmt: skip
    peer.decode_head = torch.nn.ModuleList([
        decode_heads.FCNHead(in_channels=C[2], in_index=2, channels=CH, num_convs=1, concat_input=False,
                             num_classes=K, norm_cfg=BN),
        decode_heads.OCRHead(in_channels=C[3], in_index=3, channels=CH, ocr_channels=8, num_classes=K, norm_cfg=BN),
    ])  # fmt: skip
    peer = randomize(peer).double().eval()
    model = float64_segmentor(
        V1C + ["MODEL.DECODE_HEAD.NAME", "OCRHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res4", "res5"]',
               "MODEL.DECODE_HEAD.LAST_CONV_KERNEL", 1, "MODEL.DECODE_HEAD.OCR.KEY_CHANNELS", 8,
               "MODEL.DECODE_HEAD.OCR.COARSE_CHANNELS", CH],
        K,
    )  # fmt: skip
    assert_equal_after_conversion(
        peer, model, lambda x: peer.decode_head[1](peer.backbone(x), peer.decode_head[0](peer.backbone(x)))
    )


def mmseg_model(mmseg, name):
    from mmseg.models import backbones, decode_heads

    _, head, stride = CASES[name]
    dilations = {8: (1, 1, 2, 4), 32: (1, 1, 1, 1)}[stride]
    strides = {8: (1, 2, 1, 1), 32: (1, 2, 2, 2)}[stride]
    model = torch.nn.Module()
    model.backbone = backbones.ResNetV1c(depth=50, base_channels=WIDTH, dilations=dilations, strides=strides,
                                         contract_dilation=True, norm_cfg=BN)  # fmt: skip
    model.decode_head = head(decode_heads)
    model.auxiliary_head = decode_heads.FCNHead(in_channels=C[2], in_index=2, channels=CH, num_convs=1,
                                                concat_input=False, num_classes=K, norm_cfg=BN)  # fmt: skip
    return randomize(model).double().eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_mmseg_segmentor_equals_segcls_after_conversion(mmseg, name):
    peer = mmseg_model(mmseg, name)
    aux = ["MODEL.AUX_HEAD.ENABLED", "True", "MODEL.AUX_HEAD.CHANNELS", CH]
    model = float64_segmentor(CASES[name][0] + V1C + aux, K)
    def main_logits(x):
        out = peer.decode_head(peer.backbone(x))
        return out[0] if isinstance(out, tuple) else out  # DANet: (pam_cam, pam, cam)

    x = assert_equal_after_conversion(peer, model, main_logits)
    with torch.no_grad():
        expected_aux = peer.auxiliary_head(peer.backbone(x))
        got_aux = model.aux_classifier(model.aux_head(model.backbone(x)).pixel_feature).logits
    torch.testing.assert_close(got_aux, expected_aux, rtol=0, atol=1e-10 * expected_aux.abs().max())


def test_mmseg_resnet_v1d_equals_segcls_avg_down_after_conversion(mmseg):
    """mmseg's ResNetV1d (deep stem + average-pool shortcut) with an FCN head -> segcls's
    V1c-stem ResNet with MODEL.RESNETS.AVG_DOWN; without AVG_DOWN the conversion is refused."""
    from mmseg.models import backbones, decode_heads

    peer = torch.nn.Module()
    peer.backbone = backbones.ResNetV1d(depth=50, base_channels=WIDTH, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                                        contract_dilation=True, norm_cfg=BN)  # fmt: skip
    peer.decode_head = CASES["fcn"][1](decode_heads)
    peer = randomize(peer).double().eval()
    with pytest.raises(Exception, match="AVG_DOWN True"):
        convert_state_dict(peer.state_dict(), float64_segmentor(CASES["fcn"][0] + V1C, K))
    model = float64_segmentor(CASES["fcn"][0] + V1C + ["MODEL.RESNETS.AVG_DOWN", "True"], K)
    assert_equal_after_conversion(peer, model, lambda x: peer.decode_head(peer.backbone(x)))


def test_deeplabv3plus_parameter_count_equals_mmseg(mmseg):
    from detectron2.modeling import build_model
    from mmseg.models.decode_heads import DepthwiseSeparableASPPHead

    from segcls.engine.defaults import load_config

    peer = DepthwiseSeparableASPPHead(in_channels=2048, in_index=3, channels=512, dilations=(1, 12, 24, 36),
                                      c1_in_channels=256, c1_channels=48, num_classes=150, norm_cfg=BN)  # fmt: skip
    cfg = load_config("configs/ade20k/deeplabv3plus_r50-d8_512x512_80k.yaml",
                      ["MODEL.RESNETS.NORM", "BN", "MODEL.DECODE_HEAD.NORM", "BN", "MODEL.AUX_HEAD.ENABLED", "False",
                       "MODEL.DEVICE", "cpu"])  # fmt: skip
    model = build_model(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.decode_head) + count(model.classifier) == count(peer) == 17_765_126


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_dice_mmseg_variant_equals_mmseg_dice(mmseg, activation):
    from mmseg.models.losses import DiceLoss as MMSegDice

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 6, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(0, K, (2, 6, 7), generator=g)
    targets[:, :2] = 255
    expected = MMSegDice(use_sigmoid=activation == "sigmoid")(logits, targets)
    got = DiceLoss(variant="mmseg", activation=activation)(logits, targets)
    # mmseg casts the one-hot target to float32, so its sum of squares + eps is rounded to float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("out_norm, delta", [(True, 0), (False, -2 * (96 + 192 + 384 + 768))])
def test_swin_t_parameter_count_equals_mmseg_with_out_norm(mmseg, out_norm, delta):
    from detectron2.modeling import build_backbone
    from mmseg.models.backbones import SwinTransformer

    from segcls.engine.defaults import load_config

    peer = SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
    cfg = load_config("configs/ade20k/cac_upernet_swin_t.yaml", ["MODEL.TIMM.OUT_NORM", out_norm, "MODEL.DEVICE", "cpu"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_backbone(cfg)) == count(peer) + delta  # mmseg: 27,520,698


def test_mmseg_upernet_swin_equals_segcls_after_conversion(mmseg):
    """mmseg's UPerNet-Swin-T (SwinTransformer with norm0..3, UPerHead, FCN auxiliary head) ->
    segcls's timm Swin-T with MODEL.TIMM.OUT_NORM; 64x64 input, so the stage-1 map (16x16) is
    padded to the window (7) before the shift, as in mmseg."""
    from mmseg.models import backbones, decode_heads

    peer = torch.nn.Module()
    peer.backbone = backbones.SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
    peer.decode_head = decode_heads.UPerHead(in_channels=[96, 192, 384, 768], in_index=(0, 1, 2, 3), channels=CH,
                                             pool_scales=(1, 2, 3, 6), num_classes=K, norm_cfg=BN)  # fmt: skip
    peer.auxiliary_head = decode_heads.FCNHead(in_channels=384, in_index=2, channels=CH, num_convs=1,
                                               concat_input=False, num_classes=K, norm_cfg=BN)  # fmt: skip
    peer = randomize(peer).double().eval()
    model = float64_segmentor(
        ["MODEL.BACKBONE.NAME", "build_timm_backbone", "MODEL.TIMM.NAME", "swin_tiny_patch4_window7_224",
         "MODEL.TIMM.OUT_NORM", "True", "MODEL.DECODE_HEAD.NAME", "UPerHead",
         "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res3", "res4", "res5"]', "MODEL.DECODE_HEAD.CHANNELS", CH,
         "MODEL.AUX_HEAD.ENABLED", "True", "MODEL.AUX_HEAD.CHANNELS", CH],
        K,
    )  # fmt: skip
    assert_equal_after_conversion(peer, model, lambda x: peer.decode_head(peer.backbone(x)))


def mmseg_upernet_convnext(mmpretrain, dtype=torch.float64):
    """mmseg's UPerNet-ConvNeXt as its configs build it (``mmpretrain.ConvNeXt``, ``out_indices``
    0..3, ``gap_before_final_norm=False``), arch "atto", with a UPerHead and an FCN auxiliary head
    on stage 3; random weights, eval mode."""
    from mmseg.models import decode_heads

    peer = torch.nn.Module()
    peer.backbone = mmpretrain.backbones.ConvNeXt(arch="atto", out_indices=[0, 1, 2, 3], gap_before_final_norm=False)
    peer.decode_head = decode_heads.UPerHead(in_channels=[40, 80, 160, 320], in_index=(0, 1, 2, 3), channels=CH,
                                             pool_scales=(1, 2, 3, 6), num_classes=K, norm_cfg=BN)  # fmt: skip
    peer.auxiliary_head = decode_heads.FCNHead(in_channels=160, in_index=2, channels=8, num_convs=1,
                                               concat_input=False, num_classes=K, norm_cfg=BN)  # fmt: skip
    return randomize(peer).to(dtype).eval()


def test_mmseg_upernet_convnext_equals_segcls_after_conversion(mmseg, mmpretrain):
    """mmseg's UPerNet-ConvNeXt -> segcls's timm ``convnext_atto`` with MODEL.TIMM.OUT_NORM (mmpretrain's
    norm0..3, LayerNorm2d of eps 1e-6 like every other norm of both), UPerHead and FCN aux head."""
    from helpers import load_script

    peer = mmseg_upernet_convnext(mmpretrain)
    model = float64_segmentor(load_script("tests/modeling/test_converters.py").UPERNET_CONVNEXT_ATTO, K)
    x = assert_equal_after_conversion(peer, model, lambda x: peer.decode_head(peer.backbone(x)))
    with torch.no_grad():
        expected_aux = peer.auxiliary_head(peer.backbone(x))
        got_aux = model.aux_classifier(model.aux_head(model.backbone(x)).pixel_feature).logits
    torch.testing.assert_close(got_aux, expected_aux, rtol=0, atol=1e-10 * expected_aux.abs().max())


def test_normal_suite_upernet_convnext_layout_is_the_real_module(mmseg, mmpretrain):
    from helpers import load_script

    layouts = load_script("tests/modeling/test_converters.py")
    widths = [40, 80, 160, 320]
    expected = {**layouts.mmpretrain_convnext("backbone.", widths), **layouts.mmseg_uper_head("decode_head", widths, CH),
                **layouts.mmseg_fcn_head("auxiliary_head", widths[2], 8, 1, False)}  # fmt: skip
    peer = mmseg_upernet_convnext(mmpretrain, torch.float32)
    assert {k: tuple(v.shape) for k, v in peer.state_dict().items()} == expected
