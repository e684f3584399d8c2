"""Decode heads ASPP (DeepLabV3), KSAC, DeepLabV3+, PSP, UperNet and CAA through the full
PerPixelSegmentor on a tiny ResNet-18: shapes in train/eval mode, use as the auxiliary head, CAR's
projection and change "A", a few training iterations, and configuration errors."""
from pathlib import Path

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from segcls.engine.defaults import load_config
from segcls.modeling.heads import ASPPHead, CAAHead, DeepLabV3PlusHead, PSPHead, UPerHead
from segcls.modeling.heads.blocks import PyramidPooling
from segcls.modeling.heads.tail import HeadTail
from segcls.modeling.registry import build_decode_head
from helpers import REPO

K = 5
SIZE = 64
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", K,
    "MODEL.DECODE_HEAD.CHANNELS", 16,
    "MODEL.AUX_HEAD.CHANNELS", 8,
]  # fmt: skip
# Per head: extra keys (as "NODE.KEY", value pairs relative to the head node) for the main head, and
# the auxiliary head's IN_FEATURES.
HEADS = {
    "ASPPHead": ([], ["res4"]),
    "KSACHead": ([], ["res4"]),
    "DeepLabV3PlusHead": (["IN_FEATURES", ["res2", "res5"], "DEEPLABV3PLUS.LOW_LEVEL_CHANNELS", 8], ["res2", "res4"]),
    "PSPHead": ([], ["res4"]),
    "UPerHead": (["IN_FEATURES", ["res2", "res3", "res4", "res5"]], ["res2", "res3", "res4"]),
    "CAAHead": (["CAA.KEY_CHANNELS", 8, "CAA.OUT_CHANNELS", 12], ["res4"]),
}


def head_opts(node, name, extra):
    opts = [f"{node}.NAME", name]
    for key, value in zip(extra[::2], extra[1::2]):
        opts += [f"{node}.{key}", value]
    return opts


def build(*opts):
    return build_model(load_config(opts=TINY + list(opts)))


def toy_batch(n=2, seed=0):
    """Images whose four quadrants have class-specific colours (+ noise), labelled by quadrant."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(K, 3, generator=g) * 255
    batch = []
    for _ in range(n):
        classes = torch.randint(0, K, (2, 2), generator=g)
        label = classes.repeat_interleave(SIZE // 2, 0).repeat_interleave(SIZE // 2, 1)
        image = colours[label].permute(2, 0, 1) + 20 * torch.randn(3, SIZE, SIZE, generator=g)
        batch.append({"image": image.clamp(0, 255), "sem_seg": label})
    return batch


@pytest.mark.parametrize("name", list(HEADS))
def test_head_shapes_train_and_eval(name):
    torch.manual_seed(0)
    model = build(*head_opts("MODEL.DECODE_HEAD", name, HEADS[name][0]))
    head = model.decode_head
    assert type(head).__name__ == name and isinstance(head.tail, HeadTail)
    batch = toy_batch()
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_ce"} and torch.isfinite(losses["loss_ce"])
    model.eval()
    with torch.no_grad():
        images, _ = model.preprocessor(batch)
        out = head(model.backbone(images.tensor))
        results = model(batch)
    h = SIZE // head.out_stride
    assert out.pixel_feature.shape == (2, head.out_channels, h, h)
    assert "reg_feature" not in out.reg_features
    assert results[0]["sem_seg"].shape == (K, SIZE, SIZE)
    expected_stride = 4 if name in ("DeepLabV3PlusHead", "UPerHead") else 8
    assert head.out_stride == expected_stride


@pytest.mark.parametrize("name", list(HEADS))
def test_head_as_aux_head_and_with_reg_projection_and_change_a(name):
    """Main head with CAR's projection and LAST_CONV_KERNEL 1; the same head class as auxiliary head."""
    torch.manual_seed(0)
    extra, aux_features = HEADS[name]
    aux_extra = [v for pair in zip(extra[::2], extra[1::2]) if pair[0] != "IN_FEATURES" for v in pair]
    model = build(
        *head_opts("MODEL.DECODE_HEAD", name, extra),
        "MODEL.DECODE_HEAD.REG_PROJECTION", True,
        "MODEL.DECODE_HEAD.REG_PROJECTION_CHANNELS", 6,
        "MODEL.DECODE_HEAD.LAST_CONV_KERNEL", 1,
        "MODEL.AUX_HEAD.ENABLED", True,
        *head_opts("MODEL.AUX_HEAD", name, aux_extra),
        "MODEL.AUX_HEAD.IN_FEATURES", aux_features,
    )  # fmt: skip
    assert type(model.aux_head).__name__ == name
    assert model.aux_head.out_channels == model.aux_classifier.conv.in_channels
    assert model.decode_head.tail.conv.weight.shape[-1] == 1
    batch = toy_batch()
    model.train()
    images, targets = model.preprocessor(batch)
    outputs = model.predict(images.tensor, targets)
    h = SIZE // model.decode_head.out_stride
    assert outputs.reg_features["reg_feature"].shape == (2, 6, h, h)
    assert outputs.predictions["aux"].logits.shape[:2] == (2, K)
    losses = model(batch)
    assert set(losses) == {"loss_ce", "loss_aux_ce"} and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", list(HEADS))
def test_head_trains(name):
    torch.manual_seed(0)
    model = build(*head_opts("MODEL.DECODE_HEAD", name, HEADS[name][0]), "MODEL.CLASSIFIER.DROPOUT", 0.0)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = toy_batch()
    losses = []
    for _ in range(5):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def _cfg(*opts):
    return load_config(opts=TINY + list(opts))


R5 = {"res5": ShapeSpec(channels=16, stride=8)}


@pytest.mark.parametrize(
    "cls, opts, shapes, match",
    [
        (ASPPHead, ["MODEL.DECODE_HEAD.ASPP.MERGE", "mean"], R5, "ASPP.MERGE='mean'"),
        (ASPPHead, [], {"res5": ShapeSpec(channels=16, stride=32)}, "stride 32: set ASPP.RATES"),
        (ASPPHead, ["MODEL.DECODE_HEAD.ASPP.RATES", [0, 6]], R5, r"ASPP.RATES=\[0, 6\]"),
        (DeepLabV3PlusHead, [], R5, "needs \\[low-level, deep\\]"),
        (
            DeepLabV3PlusHead,
            ["MODEL.DECODE_HEAD.IN_FEATURES", ["res2", "res5"], "MODEL.DECODE_HEAD.DEEPLABV3PLUS.ENCODER", "X"],
            {"res2": ShapeSpec(channels=16, stride=4), **R5},
            "DEEPLABV3PLUS.ENCODER='X'",
        ),
        (PSPHead, ["MODEL.DECODE_HEAD.PPM.BINS", []], R5, r"PPM.BINS=\[\]"),
        (
            UPerHead,
            ["MODEL.DECODE_HEAD.IN_FEATURES", ["res5", "res2"]],
            {"res2": ShapeSpec(channels=16, stride=4), **R5},
            "increasing stride",
        ),
        (CAAHead, ["MODEL.DECODE_HEAD.CAA.IMPLEMENTATION", "fast"], R5, "CAA.IMPLEMENTATION='fast'"),
        (CAAHead, ["MODEL.DECODE_HEAD.CAA.GROUPS", 0], R5, "CAA.GROUPS=0"),
        (CAAHead, ["MODEL.DECODE_HEAD.CAA.GATE_REDUCTION", 3], R5, "GATE_REDUCTION=3"),
        (CAAHead, ["MODEL.DECODE_HEAD.CAA.ATTENTION", "global"], R5, "CAA.ATTENTION='global'"),
    ],
)
def test_config_errors_name_the_key(cls, opts, shapes, match):
    with pytest.raises(ValueError, match=match):
        cls(_cfg(*opts), shapes)


def test_pyramid_pooling_branches():
    """PPM: input kept as the first channels; each branch is constant over its pooling bins."""
    torch.manual_seed(0)
    ppm = PyramidPooling(3, 2, [1, 2], norm="").eval()
    x = torch.randn(1, 3, 8, 8)
    out = ppm(x)
    assert out.shape == (1, 3 + 2 * 2, 8, 8)
    assert torch.equal(out[:, :3], x)
    assert torch.allclose(out[:, 3:5], out[:, 3:5, :1, :1].expand(-1, -1, 8, 8))
    pooled = ppm.branches[0](x.mean((2, 3), keepdim=True))
    assert torch.allclose(out[:, 3:5, 0, 0], pooled[:, :, 0, 0])


ADE20K_CONFIGS = sorted(
    p
    for p in (Path(REPO) / "configs" / "ade20k").glob("*.yaml")
    # this file's heads; CAC and ECENet configs are tested in their own test files
    if p.name.split("_")[0] in ("deeplabv3", "deeplabv3plus", "ksac", "pspnet", "upernet", "caa")
)


@pytest.mark.parametrize("path", ADE20K_CONFIGS, ids=lambda p: p.stem)
def test_ade20k_configs_build_their_head(path):
    """Every per-head ADE20K yaml loads and its head builds (with small channels) on fake feature shapes."""
    opts = ["MODEL.DECODE_HEAD.CHANNELS", 8] + (["MODEL.DECODE_HEAD.CAA.OUT_CHANNELS", 8] if path.name.startswith("caa") else [])
    cfg = load_config(str(path), opts)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150 and cfg.SOLVER.MAX_ITER in (80000, 160000)
    assert cfg.MODEL.RESNETS.DEPTH == 50
    stride = cfg.MODEL.RESNETS.OUTPUT_STRIDE
    shapes = {f"res{i}": ShapeSpec(channels=8, stride=min(2**i, stride)) for i in (2, 3, 4, 5)}
    head = build_decode_head(cfg, shapes)
    assert type(head).__name__ == cfg.MODEL.DECODE_HEAD.NAME
