"""
Converters (issue 14): peer checkpoints -> segcls, equal outputs after the transfer, and the guard
that a conversion leaving expected tensors unmapped fails (issue 17, item 7).

torchvision is a dependency, so its segmentation models are compared directly (float64, every
parameter and BN statistic random). mmsegmentation checkpoints are written here in mmseg's exact
key layout (names listed from mmsegmentation 1.2.2's modules); the optional ``-m peers`` suite
(tests/peers/) builds the real mmseg modules.
"""
import re

import pytest
import torch
import torchvision
from detectron2.modeling import build_model

from segcls.converters import ConversionError, convert_state_dict, read_checkpoint
from segcls.engine.defaults import load_config
from segcls.modeling.layers import resize
from helpers import float64_segmentor, randomize, timm_model_kwargs

K = 5


def segcls_model(opts):
    return float64_segmentor(opts, K)


def segcls_logits(model, x):
    """Main logits via the public API and auxiliary logits (upsampled like torchvision's)."""
    with torch.no_grad():
        main = torch.stack([model([{"image": img}])[0]["sem_seg"] for img in x])
        aux = None
        if model.aux_head is not None:
            aux = model.aux_classifier(model.aux_head(model.backbone(x)).pixel_feature).logits
            aux = resize(aux, x.shape[-2:], False)
    return main, aux


TORCHVISION = {
    "fcn_resnet50": ["MODEL.DECODE_HEAD.CHANNELS", 512],
    "deeplabv3_resnet50": ["MODEL.DECODE_HEAD.NAME", "ASPPHead", "MODEL.DECODE_HEAD.CHANNELS", 256],
}
AUX = ["MODEL.AUX_HEAD.ENABLED", "True", "MODEL.AUX_HEAD.CHANNELS", 256, "MODEL.AUX_HEAD.IN_FEATURES", '["res4"]']


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_segmentation_model_converts_to_equal_outputs(tmp_path, name):
    tv = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=K, aux_loss=True)
    tv = randomize(tv).double().eval()
    path = str(tmp_path / f"{name}.pth")
    torch.save(tv.state_dict(), path)
    model = segcls_model(TORCHVISION[name] + AUX)
    conversion = convert_state_dict(read_checkpoint(path), model, path)
    assert conversion.layout == "torchvision_segmentation" and not conversion.unused
    result = model.load_state_dict(conversion.tensors, strict=False)
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    x = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = tv(x)
    main, aux = segcls_logits(model, x)
    scale = expected["out"].abs().max()
    assert scale > 1  # a meaningful comparison, not of near-zero logits
    torch.testing.assert_close(main, expected["out"], rtol=0, atol=1e-10 * scale)
    torch.testing.assert_close(aux, expected["aux"], rtol=0, atol=1e-10 * expected["aux"].abs().max())
    # The first-block dilation (MODEL.RESNETS.CONTRACT_DILATION) is what makes them equal: with
    # segcls's former all-blocks dilation the same weights compute other logits.
    for stage, dilation in (("res4", 2), ("res5", 4)):
        conv = getattr(model.backbone, stage)[0].conv2
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
    assert (segcls_logits(model, x)[0] - expected["out"]).abs().max() > 1e-3 * scale


def test_unmapped_tensors_are_an_error_naming_them_unless_partial():
    """A model file without the auxiliary head the config asks for, a backbone file missing its stem,
    or a file of another head shape fails, naming the tensors."""
    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=K)
    model = segcls_model(TORCHVISION["fcn_resnet50"] + AUX)
    with pytest.raises(ConversionError, match=r"'fcn.pth' leaves 7 of the \d+ tensors .* unmapped.*aux_head\.tail\.conv\.weight"):
        convert_state_dict(tv.state_dict(), model, "fcn.pth")
    with pytest.raises(ConversionError, match=r"other shapes, first: decode_head.tail.conv.weight: \(512, 2048, 3, 3\)"):
        convert_state_dict(tv.state_dict(), segcls_model(["MODEL.DECODE_HEAD.CHANNELS", 256]), "fcn.pth")
    resnet = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith(("conv1", "bn1"))}
    with pytest.raises(ConversionError, match=r"\(the backbone\) unmapped.*backbone\.stem\.conv1\.weight"):
        convert_state_dict(resnet, model, "r50.pth")
    conversion = convert_state_dict(resnet, model, "r50.pth", allow_partial=True)
    assert "backbone.stem.conv1.weight" in conversion.unmapped and conversion.scope == "backbone"


# ------------------------------------------------------------------------------------------------
# mmsegmentation layouts (key names of mmsegmentation 1.2.2's modules)
# ------------------------------------------------------------------------------------------------
def mmseg_resnet_v1c(prefix, depth=50, width=64, avg_down=False):
    """{name: shape} of mmseg's ResNetV1c (stem_channels=64, deep stem 32-32-64), or with
    ``avg_down`` its ResNetV1d (``downsample.0`` the average pool, ``.1`` conv, ``.2`` BN)."""
    shapes = {}

    def bn(name, c):
        shapes.update({f"{name}.{s}": (c,) for s in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{name}.num_batches_tracked"] = ()

    shapes[f"{prefix}stem.0.weight"] = (32, 3, 3, 3); bn(f"{prefix}stem.1", 32)  # noqa: E702
    shapes[f"{prefix}stem.3.weight"] = (32, 32, 3, 3); bn(f"{prefix}stem.4", 32)  # noqa: E702
    shapes[f"{prefix}stem.6.weight"] = (64, 32, 3, 3); bn(f"{prefix}stem.7", 64)  # noqa: E702
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    cin = 64
    for i, n in enumerate(blocks):
        mid, out = width * 2**i, width * 4 * 2**i
        for j in range(n):
            p = f"{prefix}layer{i + 1}.{j}."
            shapes[p + "conv1.weight"] = (mid, cin if j == 0 else out, 1, 1); bn(p + "bn1", mid)  # noqa: E702
            shapes[p + "conv2.weight"] = (mid, mid, 3, 3); bn(p + "bn2", mid)  # noqa: E702
            shapes[p + "conv3.weight"] = (out, mid, 1, 1); bn(p + "bn3", out)  # noqa: E702
            if j == 0:
                conv = 1 if avg_down else 0
                shapes[p + f"downsample.{conv}.weight"] = (out, cin, 1, 1); bn(p + f"downsample.{conv + 1}", out)  # noqa: E702
        cin = out
    return shapes


def conv_module(name, cout, cin, k, depthwise=False):
    shapes = {f"{name}.conv.weight": (cout, 1 if depthwise else cin, k, k)}
    shapes.update({f"{name}.bn.{s}": (cout,) for s in ("weight", "bias", "running_mean", "running_var")})
    shapes[f"{name}.bn.num_batches_tracked"] = ()
    return shapes


def mmseg_fcn_head(prefix, cin, ch, num_convs, concat_input):
    shapes = {}
    for i in range(num_convs):
        shapes.update(conv_module(f"{prefix}.convs.{i}", ch, cin if i == 0 else ch, 3))
    if concat_input:
        shapes.update(conv_module(f"{prefix}.conv_cat", ch, cin + ch, 3))
    shapes.update({f"{prefix}.conv_seg.weight": (K, ch, 1, 1), f"{prefix}.conv_seg.bias": (K,)})
    return shapes


def mmseg_aspp_head(prefix, cin, ch, separable, c1_in=256):
    shapes = conv_module(f"{prefix}.image_pool.1", ch, cin, 1)
    shapes.update(conv_module(f"{prefix}.aspp_modules.0", ch, cin, 1))
    for i in (1, 2, 3):
        if separable:
            shapes.update(conv_module(f"{prefix}.aspp_modules.{i}.depthwise_conv", cin, cin, 3, depthwise=True))
            shapes.update(conv_module(f"{prefix}.aspp_modules.{i}.pointwise_conv", ch, cin, 1))
        else:
            shapes.update(conv_module(f"{prefix}.aspp_modules.{i}", ch, cin, 3))
    shapes.update(conv_module(f"{prefix}.bottleneck", ch, 5 * ch, 3))
    if separable:
        shapes.update(conv_module(f"{prefix}.c1_bottleneck", 48, c1_in, 1))
        for i, c in enumerate((ch + 48, ch)):
            shapes.update(conv_module(f"{prefix}.sep_bottleneck.{i}.depthwise_conv", c, c, 3, depthwise=True))
            shapes.update(conv_module(f"{prefix}.sep_bottleneck.{i}.pointwise_conv", ch, c, 1))
    shapes.update({f"{prefix}.conv_seg.weight": (K, ch, 1, 1), f"{prefix}.conv_seg.bias": (K,)})
    return shapes


def mmseg_ppm(prefix, cin, ch, bins=4):
    shapes = {}
    for i in range(bins):
        shapes.update(conv_module(f"{prefix}.psp_modules.{i}.1", ch, cin, 1))
    shapes.update(conv_module(f"{prefix}.bottleneck", ch, cin + bins * ch, 3))
    return shapes


def mmseg_psp_head(prefix, cin, ch):
    return {**mmseg_ppm(prefix, cin, ch), f"{prefix}.conv_seg.weight": (K, ch, 1, 1), f"{prefix}.conv_seg.bias": (K,)}


def mmseg_uper_head(prefix, in_channels, ch):
    shapes = mmseg_ppm(prefix, in_channels[-1], ch)
    for i, c in enumerate(in_channels[:-1]):
        shapes.update(conv_module(f"{prefix}.lateral_convs.{i}", ch, c, 1))
        shapes.update(conv_module(f"{prefix}.fpn_convs.{i}", ch, ch, 3))
    shapes.update(conv_module(f"{prefix}.fpn_bottleneck", ch, len(in_channels) * ch, 3))
    shapes.update({f"{prefix}.conv_seg.weight": (K, ch, 1, 1), f"{prefix}.conv_seg.bias": (K,)})
    return shapes


def mmseg_attention_fcn_head(prefix, cin, ch, kind):
    """mmseg's NLHead (nl_block: mmcv NonLocal2d, reduction 2) or CCHead (cca: mmcv
    CrissCrossAttention, a 0-d Scale gamma), both with concat_input."""
    shapes = {**conv_module(f"{prefix}.convs.0", ch, cin, 3), **conv_module(f"{prefix}.convs.1", ch, ch, 3),
              **conv_module(f"{prefix}.conv_cat", ch, cin + ch, 3)}  # fmt: skip
    if kind == "nonlocal":
        for part in ("g", "theta", "phi"):
            shapes[f"{prefix}.nl_block.{part}.conv.weight"] = (ch // 2, ch, 1, 1)
            shapes[f"{prefix}.nl_block.{part}.conv.bias"] = (ch // 2,)
        shapes.update(conv_module(f"{prefix}.nl_block.conv_out", ch, ch // 2, 1))
    else:
        for part, c in (("query", ch // 8), ("key", ch // 8), ("value", ch)):
            shapes.update({f"{prefix}.cca.{part}_conv.weight": (c, ch, 1, 1), f"{prefix}.cca.{part}_conv.bias": (c,)})
        shapes[f"{prefix}.cca.gamma.scale"] = ()
    shapes.update({f"{prefix}.conv_seg.weight": (K, ch, 1, 1), f"{prefix}.conv_seg.bias": (K,)})
    return shapes


def mmseg_da_head(prefix, cin, ch):
    """mmseg's DAHead: PAM (plain 1x1 query/key/value projects, 0-d Scale gamma) and CAM branches,
    each with its conv_seg, plus conv_seg on their sum."""
    shapes = {}
    for branch in ("pam", "cam"):
        shapes.update(conv_module(f"{prefix}.{branch}_in_conv", ch, cin, 3))
        shapes.update(conv_module(f"{prefix}.{branch}_out_conv", ch, ch, 3))
        shapes.update({f"{prefix}.{branch}_conv_seg.weight": (K, ch, 1, 1), f"{prefix}.{branch}_conv_seg.bias": (K,)})
        shapes[f"{prefix}.{branch}.gamma.scale"] = ()
    for part, c in (("query", ch // 8), ("key", ch // 8), ("value", ch)):
        shapes.update({f"{prefix}.pam.{part}_project.weight": (c, ch, 1, 1), f"{prefix}.pam.{part}_project.bias": (c,)})
    shapes.update({f"{prefix}.conv_seg.weight": (K, ch, 1, 1), f"{prefix}.conv_seg.bias": (K,)})
    return shapes


def random_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 5, s, generator=g) if not s else torch.randn(s, generator=g) for k, s in shapes.items()}


# A narrow ResNetV1c-50 (base width 8: res2..res5 have 32..256 channels) and 16-channel heads keep
# these layout tests fast; the names and the shape rules are those of the full-size models.
WIDTH, CH = 8, 16
MMSEG = {  # segcls config -> the mmseg checkpoint layout it must load completely
    "fcn": (
        ["MODEL.DECODE_HEAD.NUM_CONVS", 2, "MODEL.DECODE_HEAD.CONCAT_INPUT", "True"],
        lambda: mmseg_fcn_head("decode_head", 32 * WIDTH, CH, 2, True),
    ),
    "pspnet": (["MODEL.DECODE_HEAD.NAME", "PSPHead"], lambda: mmseg_psp_head("decode_head", 32 * WIDTH, CH)),
    "nonlocal": (["MODEL.DECODE_HEAD.NAME", "NonLocalHead", "MODEL.DECODE_HEAD.CONCAT_INPUT", "True"],
                 lambda: mmseg_attention_fcn_head("decode_head", 32 * WIDTH, CH, "nonlocal")),
    "ccnet": (["MODEL.DECODE_HEAD.NAME", "CCHead", "MODEL.DECODE_HEAD.CONCAT_INPUT", "True"],
              lambda: mmseg_attention_fcn_head("decode_head", 32 * WIDTH, CH, "ccnet")),
    "danet": (["MODEL.DECODE_HEAD.NAME", "DAHead"], lambda: mmseg_da_head("decode_head", 32 * WIDTH, CH)),
    "upernet": (
        ["MODEL.DECODE_HEAD.NAME", "UPerHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res3", "res4", "res5"]',
         "MODEL.RESNETS.OUTPUT_STRIDE", 32],
        lambda: mmseg_uper_head("decode_head", [4 * WIDTH, 8 * WIDTH, 16 * WIDTH, 32 * WIDTH], CH),
    ),
    "deeplabv3": (
        ["MODEL.DECODE_HEAD.NAME", "ASPPHead", "MODEL.DECODE_HEAD.ASPP.MERGE", "concat"],
        lambda: mmseg_aspp_head("decode_head", 32 * WIDTH, CH, separable=False),
    ),
    "deeplabv3plus": (
        ["MODEL.DECODE_HEAD.NAME", "DeepLabV3PlusHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res5"]',
         "MODEL.DECODE_HEAD.ASPP.SEPARABLE", "True", "MODEL.DECODE_HEAD.ASPP.PROJECT_KERNEL", 3,
         "MODEL.DECODE_HEAD.ASPP.DROPOUT", 0.0, "MODEL.DECODE_HEAD.DEEPLABV3PLUS.SEPARABLE_LAST_CONV", "True"],
        lambda: mmseg_aspp_head("decode_head", 32 * WIDTH, CH, separable=True, c1_in=4 * WIDTH),
    ),
}  # fmt: skip
V1C = ["MODEL.RESNETS.STEM_TYPE", "deeplab", "MODEL.RESNETS.STEM_OUT_CHANNELS", 64,
       "MODEL.RESNETS.RES2_OUT_CHANNELS", 4 * WIDTH, "MODEL.RESNETS.WIDTH_PER_GROUP", WIDTH,
       "MODEL.DECODE_HEAD.CHANNELS", CH, "MODEL.AUX_HEAD.ENABLED", "True", "MODEL.AUX_HEAD.CHANNELS", CH]  # fmt: skip


@pytest.mark.parametrize("name", sorted(MMSEG))
def test_mmseg_segmentor_layout_maps_every_tensor(tmp_path, name):
    opts, head = MMSEG[name]
    shapes = {**mmseg_resnet_v1c("backbone.", width=WIDTH), **head(),
              **mmseg_fcn_head("auxiliary_head", 16 * WIDTH, CH, 1, False)}  # fmt: skip
    state = random_state(shapes)
    path = str(tmp_path / f"{name}.pth")
    torch.save({"meta": {"mmseg_version": "1.2.2", "hook_msgs": {"last_ckpt": "x"}}, "state_dict": state}, path)
    model = segcls_model(opts + V1C)
    conversion = convert_state_dict(read_checkpoint(path), model, path)
    assert conversion.layout == "mmseg" and conversion.unused == []  # every file tensor used once ...
    assert len({id(t) for t in conversion.tensors.values()}) == len(conversion.tensors)
    # ... and every model tensor filled (num_batches_tracked included)
    assert set(conversion.tensors) == set(model.state_dict())


def test_mmseg_aspp_concatenation_order_is_permuted():
    """mmseg concatenates [pool, 1x1, atrous x3]; segcls [1x1, atrous x3, pool]: the converted
    bottleneck's input block b of segcls is mmseg's block (b + 1) % 5."""
    opts, head = MMSEG["deeplabv3"]
    state = random_state({**mmseg_resnet_v1c("backbone.", width=WIDTH), **head()})
    model = segcls_model(opts + V1C[:10])
    w = convert_state_dict(state, model).tensors["decode_head.tail.conv.weight"]
    src = state["decode_head.bottleneck.conv.weight"]
    for b in range(5):
        assert torch.equal(w[:, CH * b : CH * (b + 1)], src[:, CH * ((b + 1) % 5) : CH * ((b + 1) % 5 + 1)])


def test_mmseg_checkpoint_for_another_layout_fails_clearly():
    opts, head = MMSEG["deeplabv3plus"]
    state = random_state({**mmseg_resnet_v1c("backbone.", width=WIDTH), **head()})
    model = segcls_model(opts[:4] + V1C[:10])  # segcls's own DeepLabV3+ layout, not mmseg's
    with pytest.raises(ConversionError, match="PROJECT_KERNEL 3"):
        convert_state_dict(state, model)


def test_openmmlab_v1c_backbone_fills_the_deep_stem():
    """An ImageNet ResNetV1c file (open-mmlab names) maps onto the whole backbone, stem included."""
    state = random_state({k[len("backbone."):]: s for k, s in mmseg_resnet_v1c("backbone.", width=WIDTH).items()})
    state.update(random_state({"fc.weight": (1000, 32 * WIDTH), "fc.bias": (1000,)}))
    model = segcls_model(V1C[:8])
    conversion = convert_state_dict(state, model)
    assert conversion.layout == "openmmlab_resnet" and conversion.unused == ["fc.bias", "fc.weight"]
    assert torch.equal(conversion.tensors["backbone.stem.conv2.norm.running_var"], state["stem.4.running_var"])
    assert set(conversion.tensors) == {k for k in model.state_dict() if k.startswith("backbone.")}


# A narrow Swin-T for the Swin layouts: timm's swin_tiny_patch4_window7_224 with these arguments
# (helpers.timm_model_kwargs), the same depths / widths / heads in the peers.
TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
UPERNET_SWIN = ["MODEL.BACKBONE.NAME", "build_timm_backbone", "MODEL.TIMM.NAME", "swin_tiny_patch4_window7_224",
                "MODEL.TIMM.OUT_NORM", "True", "MODEL.DECODE_HEAD.NAME", "UPerHead",
                "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res3", "res4", "res5"]', "MODEL.DECODE_HEAD.CHANNELS", CH,
                "MODEL.AUX_HEAD.ENABLED", "True", "MODEL.AUX_HEAD.CHANNELS", 8]  # fmt: skip
# ConvNeXt "atto" (HF's config below, mmpretrain's arch) in place of the Swin
UPERNET_CONVNEXT_ATTO = ["convnext_atto" if o == "swin_tiny_patch4_window7_224" else o for o in UPERNET_SWIN]


def hf_uper_heads(in_channels, ch, aux_ch):
    """{name: shape} of HF UperNet's UperNetHead (``batch_norm``, ``classifier``) and auxiliary
    UperNetFCNHead on the third level: mmseg's names but the norm's and the classifier's."""
    hf = {k.replace(".bn.", ".batch_norm."): v for k, v in mmseg_uper_head("decode_head", list(in_channels), ch).items()}
    hf["decode_head.classifier.weight"], hf["decode_head.classifier.bias"] = hf.pop("decode_head.conv_seg.weight"), hf.pop("decode_head.conv_seg.bias")
    aux = {k.replace(".bn.", ".batch_norm.").replace("conv_seg", "classifier"): v
           for k, v in mmseg_fcn_head("auxiliary_head", in_channels[2], aux_ch, 1, False).items()}  # fmt: skip
    return {**hf, **aux}


def hf_upernet_convnext(widths=(40, 80, 160, 320), depths=(2, 2, 6, 2), ch=CH, aux_ch=8):
    """{name: shape} of HF's UperNetForSemanticSegmentation with a ConvNextBackbone (transformers 5.x
    names; the peers suite checks them against the real module)."""
    shapes = {"backbone.embeddings.patch_embeddings.weight": (widths[0], 3, 4, 4),
              "backbone.embeddings.patch_embeddings.bias": (widths[0],),
              "backbone.embeddings.layernorm.weight": (widths[0],), "backbone.embeddings.layernorm.bias": (widths[0],)}  # fmt: skip
    for i, (c, d) in enumerate(zip(widths, depths)):
        stage = f"backbone.encoder.stages.{i}"
        if i:
            shapes.update({f"{stage}.downsampling_layer.0.weight": (widths[i - 1],), f"{stage}.downsampling_layer.0.bias": (widths[i - 1],),
                           f"{stage}.downsampling_layer.1.weight": (c, widths[i - 1], 2, 2), f"{stage}.downsampling_layer.1.bias": (c,)})  # fmt: skip
        for j in range(d):
            layer = f"{stage}.layers.{j}"
            shapes.update({f"{layer}.layer_scale_parameter": (c,), f"{layer}.dwconv.weight": (c, 1, 7, 7), f"{layer}.dwconv.bias": (c,),
                           f"{layer}.layernorm.weight": (c,), f"{layer}.layernorm.bias": (c,), f"{layer}.pwconv1.weight": (4 * c, c),
                           f"{layer}.pwconv1.bias": (4 * c,), f"{layer}.pwconv2.weight": (c, 4 * c), f"{layer}.pwconv2.bias": (c,)})  # fmt: skip
        shapes.update({f"backbone.hidden_states_norms.stage{i + 1}.weight": (c,), f"backbone.hidden_states_norms.stage{i + 1}.bias": (c,)})
    return {**shapes, **hf_uper_heads(widths, ch, aux_ch)}


def test_hf_upernet_convnext_layout_maps_every_tensor():
    state = {k: v.float() if v.is_floating_point() else v for k, v in random_state(hf_upernet_convnext()).items()}
    model = segcls_model(UPERNET_CONVNEXT_ATTO)
    conversion = convert_state_dict(state, model, "hf")
    assert conversion.layout == "hf_upernet" and conversion.unused == []
    assert set(conversion.tensors) == set(model.state_dict())
    fc1 = "backbone.model." + model.backbone.full_to_features_names()["stages.2.blocks.5.mlp.fc1.weight"]
    assert torch.equal(conversion.tensors[fc1].flatten(1), state["backbone.encoder.stages.2.layers.5.pwconv1.weight"])
    del state["backbone.hidden_states_norms.stage3.bias"]
    with pytest.raises(ConversionError, match=r"unmapped.*backbone\.out_norms\.res4\.bias"):
        convert_state_dict(state, model, "hf")


def hf_upernet_swin(file_names, embed=16, depths=(2, 2, 2, 2), heads=(1, 1, 2, 2), window=7, ch=CH, aux_ch=8):
    """{name: shape} of HF's UperNetForSemanticSegmentation with a SwinBackbone: the module's names
    in transformers 5.x (``file_names`` False: ``swin.*``, ``attention.q/k/v/o_proj``, ``mlp.fc1/2``)
    or those 5.x writes to a file with ``save_pretrained``, as the 4.x files (``attention.self.query``
    .., ``attention.output.dense``, ``intermediate.dense``, ``output.dense``). Both have SwinModel's
    final ``layernorm``, which SwinBackbone does not use. The peers suite checks them."""
    swin = "backbone." if file_names else "backbone.swin."
    proj = (("self.query", "self.key", "self.value", "output.dense") if file_names
            else ("q_proj", "k_proj", "v_proj", "o_proj"))  # fmt: skip
    table = "self." if file_names else "relative_position_bias."
    fc1, fc2 = ("intermediate.dense", "output.dense") if file_names else ("mlp.fc1", "mlp.fc2")
    shapes = {f"{swin}embeddings.patch_embeddings.projection.weight": (embed, 3, 4, 4),
              f"{swin}embeddings.patch_embeddings.projection.bias": (embed,),
              f"{swin}embeddings.norm.weight": (embed,), f"{swin}embeddings.norm.bias": (embed,)}  # fmt: skip
    widths = [embed * 2**i for i in range(len(depths))]
    for i, (c, d) in enumerate(zip(widths, depths)):
        for j in range(d):
            block = f"{swin}encoder.layers.{i}.blocks.{j}"
            for p in proj:
                shapes.update({f"{block}.attention.{p}.weight": (c, c), f"{block}.attention.{p}.bias": (c,)})
            shapes[f"{block}.attention.{table}relative_position_bias_table"] = ((2 * window - 1) ** 2, heads[i])
            for norm in ("layernorm_before", "layernorm_after"):
                shapes.update({f"{block}.{norm}.weight": (c,), f"{block}.{norm}.bias": (c,)})
            shapes.update({f"{block}.{fc1}.weight": (4 * c, c), f"{block}.{fc1}.bias": (4 * c,),
                           f"{block}.{fc2}.weight": (c, 4 * c), f"{block}.{fc2}.bias": (c,)})  # fmt: skip
        if i < len(depths) - 1:
            down = f"{swin}encoder.layers.{i}.downsample"
            shapes.update({f"{down}.reduction.weight": (2 * c, 4 * c), f"{down}.norm.weight": (4 * c,), f"{down}.norm.bias": (4 * c,)})
        shapes.update({f"backbone.hidden_states_norms.stage{i + 1}.weight": (c,), f"backbone.hidden_states_norms.stage{i + 1}.bias": (c,)})
    shapes.update({"backbone.swin.layernorm.weight": (widths[-1],), "backbone.swin.layernorm.bias": (widths[-1],)})
    return {**shapes, **hf_uper_heads(widths, ch, aux_ch)}


@pytest.mark.parametrize("file_names", [False, True], ids=["module_names", "file_names"])
def test_hf_upernet_swin_layout_maps_every_tensor(monkeypatch, file_names):
    timm_model_kwargs(monkeypatch, **TINY_SWIN)
    state = random_state(hf_upernet_swin(file_names))
    model = segcls_model(UPERNET_SWIN)
    conversion = convert_state_dict(state, model, "hf")
    assert conversion.layout == "hf_upernet"
    assert conversion.unused == ["backbone.swin.layernorm.bias", "backbone.swin.layernorm.weight"]  # not in SwinBackbone's forward
    assert set(conversion.tensors) == set(model.state_dict())
    qkv = "backbone.model." + model.backbone.full_to_features_names()["layers.2.blocks.1.attn.qkv.weight"]
    attention = ("backbone.encoder.layers.2.blocks.1.attention.self." if file_names
                 else "backbone.swin.encoder.layers.2.blocks.1.attention.")  # fmt: skip
    parts = ("query", "key", "value") if file_names else ("q_proj", "k_proj", "v_proj")
    assert torch.equal(conversion.tensors[qkv], torch.cat([state[f"{attention}{p}.weight"] for p in parts]))
    reduction = "backbone.model." + model.backbone.full_to_features_names()["layers.1.downsample.reduction.weight"]
    encoder = attention.split("layers.")[0]  # HF's downsample closing stage 0 opens timm's stage 1
    assert torch.equal(conversion.tensors[reduction], state[encoder + "layers.0.downsample.reduction.weight"])
    del state[f"{attention}{parts[1]}.bias"]
    with pytest.raises(ConversionError, match=r"unmapped.*'backbone\.model\.layers_2\.blocks\.1\.attn\.qkv\.bias'"):
        convert_state_dict(state, model, "hf")


def mmpretrain_convnext(prefix, widths=(40, 80, 160, 320), depths=(2, 2, 6, 2)):
    """{name: shape} of mmpretrain 1.2.0's ConvNeXt (``out_indices=[0, 1, 2, 3]``,
    ``gap_before_final_norm=False``, the default ``linear_pw_conv``: Linear pointwise layers), as
    mmseg's UPerNet-ConvNeXt configs build it."""
    shapes = {f"{prefix}downsample_layers.0.0.weight": (widths[0], 3, 4, 4), f"{prefix}downsample_layers.0.0.bias": (widths[0],),
              f"{prefix}downsample_layers.0.1.weight": (widths[0],), f"{prefix}downsample_layers.0.1.bias": (widths[0],)}  # fmt: skip
    for i, (c, d) in enumerate(zip(widths, depths)):
        if i:
            down = f"{prefix}downsample_layers.{i}"
            shapes.update({f"{down}.0.weight": (widths[i - 1],), f"{down}.0.bias": (widths[i - 1],),
                           f"{down}.1.weight": (c, widths[i - 1], 2, 2), f"{down}.1.bias": (c,)})  # fmt: skip
        for j in range(d):
            block = f"{prefix}stages.{i}.{j}"
            shapes.update({f"{block}.gamma": (c,), f"{block}.depthwise_conv.weight": (c, 1, 7, 7), f"{block}.depthwise_conv.bias": (c,),
                           f"{block}.norm.weight": (c,), f"{block}.norm.bias": (c,), f"{block}.pointwise_conv1.weight": (4 * c, c),
                           f"{block}.pointwise_conv1.bias": (4 * c,), f"{block}.pointwise_conv2.weight": (c, 4 * c),
                           f"{block}.pointwise_conv2.bias": (c,)})  # fmt: skip
        shapes.update({f"{prefix}norm{i}.weight": (c,), f"{prefix}norm{i}.bias": (c,)})
    return shapes


def test_mmseg_upernet_convnext_layout_maps_every_tensor():
    widths = [40, 80, 160, 320]
    state = random_state({**mmpretrain_convnext("backbone.", widths), **mmseg_uper_head("decode_head", widths, CH),
                          **mmseg_fcn_head("auxiliary_head", widths[2], 8, 1, False)})  # fmt: skip
    model = segcls_model(UPERNET_CONVNEXT_ATTO)
    conversion = convert_state_dict(state, model, "mmseg")
    assert conversion.layout == "mmseg" and conversion.unused == []
    assert set(conversion.tensors) == set(model.state_dict())
    names = model.backbone.full_to_features_names()
    fc2 = conversion.tensors["backbone.model." + names["stages.2.blocks.5.mlp.fc2.weight"]]
    assert fc2.shape == (160, 640, 1, 1) and torch.equal(fc2.flatten(1), state["backbone.stages.2.5.pointwise_conv2.weight"])
    assert torch.equal(conversion.tensors["backbone.model." + names["stages.3.downsample.1.weight"]],
                       state["backbone.downsample_layers.3.1.weight"])  # fmt: skip
    del state["backbone.norm2.bias"]
    with pytest.raises(ConversionError, match=r"unmapped.*backbone\.out_norms\.res4\.bias"):
        convert_state_dict(state, model, "mmseg")


def test_patch_merging_unfold_order_to_timm_order():
    """mmseg's PatchMerging concatenates the 2x2 neighbours with nn.Unfold; timm's (the official
    Swin's) as [x(0,0), x(1,0), x(0,1), x(1,1)]: the permutation maps one onto the other."""
    from segcls.converters.convert import _unfold_to_timm_order

    x = torch.randn(1, 3, 4, 6)  # (B, C, H, W)
    unfold = torch.nn.Unfold(kernel_size=2, stride=2)(x).transpose(1, 2)  # (B, L, 4C), mmseg order
    nhwc = x.permute(0, 2, 3, 1)
    official = torch.cat([nhwc[:, 0::2, 0::2], nhwc[:, 1::2, 0::2], nhwc[:, 0::2, 1::2], nhwc[:, 1::2, 1::2]], -1)
    assert torch.equal(unfold[..., _unfold_to_timm_order(3)], official.flatten(1, 2))


def test_openmmlab_v1d_backbone_needs_avg_down_and_fills_it():
    """An open-mmlab ResNetV1d file (average-pool shortcut) maps onto MODEL.RESNETS.AVG_DOWN's
    shortcut (downsample.1/.2 -> shortcut/.norm); each shortcut layout is refused by the other
    model, naming the key to set, since the weights would load and compute other features."""
    v1d = random_state(mmseg_resnet_v1c("", width=WIDTH, avg_down=True))
    with pytest.raises(ConversionError, match="ResNetV1d.*set MODEL.RESNETS.AVG_DOWN True"):
        convert_state_dict(v1d, segcls_model(V1C[:8]), "v1d.pth")
    model = segcls_model(V1C[:8] + ["MODEL.RESNETS.AVG_DOWN", "True"])
    conversion = convert_state_dict(v1d, model, "v1d.pth")
    assert conversion.layout == "openmmlab_resnet" and conversion.unused == []
    assert set(conversion.tensors) == {k for k in model.state_dict() if k.startswith("backbone.")}
    assert torch.equal(conversion.tensors["backbone.res3.0.shortcut.weight"], v1d["layer2.0.downsample.1.weight"])
    assert torch.equal(conversion.tensors["backbone.res3.0.shortcut.norm.running_var"], v1d["layer2.0.downsample.2.running_var"])
    with pytest.raises(ConversionError, match="v1c.pth.*set MODEL.RESNETS.AVG_DOWN False"):
        convert_state_dict(random_state(mmseg_resnet_v1c("", width=WIDTH)), model, "v1c.pth")


def test_read_checkpoint_rejects_garbage_and_reads_safetensors(tmp_path):
    from safetensors.torch import save_file

    garbage = tmp_path / "x.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=re.escape(f"not a checkpoint: '{garbage}'")):
        read_checkpoint(str(garbage))
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"a.weight": torch.ones(2)}, str(folder / "model.safetensors"))
    assert torch.equal(read_checkpoint(str(folder))["a.weight"], torch.ones(2))


# ------------------------------------------------------------------------------------------------
# tools/convert_pretrained.py
# ------------------------------------------------------------------------------------------------
def test_tool_converts_an_mmseg_checkpoint_for_model_weights_and_refuses_a_partial_one(tmp_path, capsys):
    from detectron2.checkpoint import DetectionCheckpointer

    from helpers import load_script

    tool = load_script("tools/convert_pretrained.py")
    opts, head = MMSEG["pspnet"]
    opts = [str(o) for o in opts + V1C + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", K]]
    shapes = {**mmseg_resnet_v1c("backbone.", width=WIDTH), **head(),
              **mmseg_fcn_head("auxiliary_head", 16 * WIDTH, CH, 1, False)}  # fmt: skip
    state = {k: v.float() for k, v in random_state(shapes).items()}
    source, output = str(tmp_path / "psp_mmseg.pth"), str(tmp_path / "psp_segcls.pth")
    torch.save({"meta": {"env_info": "x"}, "state_dict": state}, source)
    assert tool.main(["--input", source, "--output", output] + opts) == 0
    assert "tensors mapped (mmseg layout, fills the model)" in capsys.readouterr().out
    model = build_model(load_config(opts=opts + ["MODEL.DEVICE", "cpu"]))
    DetectionCheckpointer(model).load(output)
    assert torch.equal(model.decode_head.tail.conv.weight, state["decode_head.bottleneck.conv.weight"])
    assert torch.equal(model.aux_classifier.conv.bias, state["auxiliary_head.conv_seg.bias"])
    # the same file without its stem: refused (exit 1, naming the tensors, no output) unless asked
    del state["backbone.stem.0.weight"]
    torch.save({"state_dict": state}, source)
    partial = str(tmp_path / "partial.pth")
    assert tool.main(["--input", source, "--output", partial] + opts) == 1
    assert "unmapped" in capsys.readouterr().err and not (tmp_path / "partial.pth").exists()
    assert tool.main(["--input", source, "--output", partial, "--allow-partial"] + opts) == 0
    assert "backbone.stem.conv1.weight" not in torch.load(partial, weights_only=True)["model"]
