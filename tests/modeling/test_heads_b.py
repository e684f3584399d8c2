"""
Context heads (NonLocalHead, DAHead, CCHead, OCRHead, CPHead): shapes through the full
PerPixelSegmentor in train and eval mode (also with CAR's projection and change "A"), their
attention blocks and losses against direct slow float64 formulations, and a few training steps.
"""
import glob
import os

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from torch.nn import functional as F

from segcls.engine.defaults import load_config
from segcls.modeling.heads import HeadTail
from segcls.modeling.heads.attention import ChannelAttention, CrissCrossAttention, NonLocal2d, PositionAttention
from segcls.modeling.heads.cpnet import affinity_loss, ideal_affinity
from segcls.modeling.heads.ocr import ObjectContext, OCRHead, object_region_representations
from segcls.modeling.registry import build_decode_head
from helpers import REPO

ROOT = REPO
NUM_CLASSES = 5
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES),
    "MODEL.DECODE_HEAD.CHANNELS", "16",
]  # fmt: skip
# Each head's own small settings (a head's keys set while another head is selected are an error).
HEADS = {
    "NonLocalHead": [],
    "DAHead": [],
    "CCHead": ["MODEL.DECODE_HEAD.CONCAT_INPUT", "True"],
    "OCRHead": ["MODEL.DECODE_HEAD.IN_FEATURES", '["res4", "res5"]',
                "MODEL.DECODE_HEAD.OCR.KEY_CHANNELS", "8", "MODEL.DECODE_HEAD.OCR.COARSE_CHANNELS", "16"],
    "CPHead": ["MODEL.DECODE_HEAD.CPNET.PRIOR_SIZE", "8", "MODEL.DECODE_HEAD.CPNET.AGGREGATION_KERNEL", "3"],
}  # fmt: skip
AUX_OPTS = {
    "OCRHead": ["MODEL.AUX_HEAD.OCR.KEY_CHANNELS", "4", "MODEL.AUX_HEAD.OCR.COARSE_CHANNELS", "16"],
    "CPHead": ["MODEL.AUX_HEAD.CPNET.PRIOR_SIZE", "4", "MODEL.AUX_HEAD.CPNET.AGGREGATION_KERNEL", "3"],
}
EXTRA_LOSSES = {
    "NonLocalHead": set(),
    "DAHead": {"loss_pam_ce", "loss_cam_ce"},
    "CCHead": set(),
    "OCRHead": {"loss_ocr_coarse_ce"},
    "CPHead": {"loss_cpnet_affinity"},
}
PROJECTION = [
    "MODEL.DECODE_HEAD.REG_PROJECTION", "True",
    "MODEL.DECODE_HEAD.REG_PROJECTION_CHANNELS", "12",
    "MODEL.DECODE_HEAD.LAST_CONV_KERNEL", "1",
]  # fmt: skip


def tiny_cfg(head, *opts):
    return load_config(opts=[*TINY, "MODEL.DECODE_HEAD.NAME", head, *HEADS[head], *opts])


def batch(height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(2):
        label = torch.randint(0, NUM_CLASSES, (height // 8, width // 8), generator=g)
        label = label.repeat_interleave(8, 0).repeat_interleave(8, 1)  # 8x8 blocks: learnable
        label[torch.rand(height, width, generator=g) < 0.1] = 255
        inputs.append({"image": torch.rand(3, height, width, generator=g) * 255, "sem_seg": label})
    return inputs


# --------------------------------------------------------------------------- full model
@pytest.mark.parametrize("projection", [False, True], ids=["standard", "projection+A"])
@pytest.mark.parametrize("head", list(HEADS))
def test_shapes_train_and_eval(head, projection):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(head, *(PROJECTION if projection else [])))
    decode_head = model.decode_head
    assert decode_head.out_channels == 16 and decode_head.out_stride == 8
    tails = [m for m in decode_head.modules() if isinstance(m, HeadTail)]
    assert tails and all(t.conv.kernel_size == ((1, 1) if projection else (3, 3)) for t in tails)

    inputs = batch(64, 48)  # 8 x 6 feature grid: not square, not CPNet's 8 x 8 prior grid
    model.train()
    losses = model(inputs)
    assert set(losses) == {"loss_ce"} | EXTRA_LOSSES[head]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())

    images, targets = model.preprocessor(inputs)
    outputs = model.predict(images.tensor, targets)
    assert outputs.pixel_feature.shape == (2, 16, 8, 6)
    assert outputs.logits.shape == (2, NUM_CLASSES, 8, 6)
    reg_keys = {"reg_feature_pam", "reg_feature_cam"} if head == "DAHead" else {"reg_feature"} if projection else set()
    assert reg_keys <= set(outputs.reg_features)
    for key in reg_keys:
        assert outputs.reg_features[key].shape == (2, 12 if projection else 16, 8, 6)
    if head == "DAHead":
        assert "reg_feature" not in outputs.reg_features

    model.eval()
    with torch.no_grad():
        results = model(inputs)
    assert [r["sem_seg"].shape for r in results] == [(NUM_CLASSES, 64, 48)] * 2


@pytest.mark.parametrize("head", list(HEADS))
def test_training_decreases_loss(head):
    torch.manual_seed(0)
    cfg = tiny_cfg(head, *(["MODEL.DECODE_HEAD.CPNET.PRIOR_SIZE", "4"] if head == "CPHead" else []))  # 32 / 8: the prior's own grid
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs = batch(32, 32, seed=1)
    totals = []
    for _ in range(6):
        loss = sum(model(inputs).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < totals[0], totals


@pytest.mark.parametrize("head", list(HEADS))
def test_head_serves_as_auxiliary_head(head):
    opts = [*TINY, "MODEL.AUX_HEAD.ENABLED", "True", "MODEL.AUX_HEAD.NAME", head, "MODEL.AUX_HEAD.CHANNELS", "8"]
    opts += AUX_OPTS.get(head, [])
    model = build_model(load_config(opts=opts))
    assert type(model.aux_head).__name__ == head and model.aux_head.out_channels == 8
    model.train()
    assert "loss_aux_ce" in model(batch(32, 32))


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.DECODE_HEAD.NONLOCAL.MODE", "gaussian"),
        ("MODEL.DECODE_HEAD.NONLOCAL.REDUCTION", "0"),
        ("MODEL.DECODE_HEAD.DANET.CAM_ENERGY", "dot"),
        ("MODEL.DECODE_HEAD.CCNET.RECURRENCE", "0"),
        ("MODEL.DECODE_HEAD.CPNET.AGGREGATION_KERNEL", "4"),
        ("MODEL.DECODE_HEAD.CPNET.PRIOR_SIZE", "0"),
    ],
)
def test_bad_config_names_the_key(key, value):
    head = {"NONLOCAL": "NonLocalHead", "DANET": "DAHead", "CCNET": "CCHead", "CPNET": "CPHead"}[key.split(".")[2]]
    shapes = {"res5": ShapeSpec(channels=8, stride=8)}
    with pytest.raises(ValueError, match=key.split(".", 2)[2]):
        build_decode_head(tiny_cfg(head, key, value), shapes)


# --------------------------------------------------------------------------- attention blocks
def randomize_norms(module, seed=0):
    """Non-trivial BN statistics and affine parameters (eval mode), so tests see the norm layers."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data = torch.randn(t.shape, generator=g, dtype=t.dtype)
            m.running_var.data = torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) + 0.5
    return module.eval()


def softmax(values):
    return torch.stack(values).softmax(dim=0)


@pytest.mark.parametrize("recurrence", [1, 2])
def test_criss_cross_matches_slow_loop(recurrence):
    torch.manual_seed(0)
    module = CrissCrossAttention(16, recurrence=recurrence).double().eval()
    module.gamma.data.fill_(0.7)
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)

    def one_pass(x):
        q, k, v = module.query(x), module.key(x), module.value(x)
        out = torch.empty_like(x)
        n, _, h, w = x.shape
        for b in range(n):
            for i in range(h):
                for j in range(w):
                    # the column without the pixel itself, then the full row: h + w - 1 positions
                    positions = [(a, j) for a in range(h) if a != i] + [(i, c) for c in range(w)]
                    weights = softmax([q[b, :, i, j] @ k[b, :, a, c] for a, c in positions])
                    context = sum(wt * v[b, :, a, c] for wt, (a, c) in zip(weights, positions))
                    out[b, :, i, j] = 0.7 * context + x[b, :, i, j]
        return out

    expected = x
    for _ in range(recurrence):
        expected = one_pass(expected)
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "mode,use_scale", [("embedded_gaussian", True), ("embedded_gaussian", False), ("dot_product", True)]
)
def test_non_local_matches_direct_formula(mode, use_scale):
    torch.manual_seed(0)
    module = randomize_norms(NonLocal2d(8, reduction=2, mode=mode, use_scale=use_scale).double())
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    theta, phi, g = (f(x).flatten(2) for f in (module.theta, module.phi, module.g))
    num = theta.shape[2]
    scale = 0.5 if (use_scale and mode == "embedded_gaussian") else 1.0  # 1 / sqrt(8 / 2)
    y = torch.empty_like(g)
    for b in range(2):
        for i in range(num):
            energies = [scale * theta[b, :, i] @ phi[b, :, j] for j in range(num)]
            if mode == "embedded_gaussian":  # Eq. 3: softmax over j
                weights = softmax(energies)
            else:  # Eq. 4: C(x) = N
                weights = [e / num for e in energies]
            y[b, :, i] = sum(wt * g[b, :, j] for j, wt in enumerate(weights))
    with torch.no_grad():
        expected = x + module.out(y.view(2, 4, 3, 4))  # Eq. 6
        torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


def test_non_local_starts_as_identity():
    x = torch.randn(1, 8, 3, 3)
    torch.testing.assert_close(NonLocal2d(8).eval()(x), x)


def test_position_attention_matches_loop():
    torch.manual_seed(0)
    module = PositionAttention(16).double().eval()
    module.gamma.data.fill_(0.3)
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64)
    q, k, v = (f(x).flatten(2) for f in (module.query, module.key, module.value))
    expected = x.flatten(2).clone()
    for b in range(2):
        for j in range(12):  # DANet Eqs. 1-2
            weights = softmax([q[b, :, j] @ k[b, :, i] for i in range(12)])
            expected[b, :, j] += 0.3 * sum(wt * v[b, :, i] for i, wt in enumerate(weights))
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected.view_as(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("energy", ["official", "paper"])
def test_channel_attention_matches_loop(energy):
    module = ChannelAttention(energy).double()
    module.gamma.data.fill_(0.3)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    a = x.flatten(2)
    expected = a.clone()
    for b in range(2):
        for j in range(6):  # DANet Eqs. 3-4; the released code: softmax(max_i e_ji - e_ji)
            energies = torch.stack([a[b, j] @ a[b, i] for i in range(6)])
            if energy == "official":
                energies = energies.max() - energies
            weights = energies.softmax(dim=0)
            expected[b, j] += 0.3 * sum(wt * a[b, i] for i, wt in enumerate(weights))
    torch.testing.assert_close(module(x), expected.view_as(x), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- OCR
def test_ocr_object_context_matches_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    coarse = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    regions = object_region_representations(x, coarse)
    for b in range(2):
        for k in range(3):  # f_k = sum_i softmax_i(coarse_k) x_i
            m = coarse[b, k].flatten().softmax(dim=0)
            torch.testing.assert_close(regions[b, :, k], (x[b].flatten(1) * m).sum(dim=1), rtol=1e-10, atol=1e-10)

    module = randomize_norms(ObjectContext(8, 4).double())
    with torch.no_grad():
        phi = module.phi(x).flatten(2)
        psi = module.psi(regions.unsqueeze(-1)).flatten(2)
        delta = module.delta(regions.unsqueeze(-1)).flatten(2)
        context = torch.empty(2, 4, 12, dtype=torch.float64)
        for b in range(2):
            for i in range(12):  # w_ik = softmax_k(phi_i . psi_k / sqrt(d)), y_i = rho(sum_k w_ik delta_k)
                weights = softmax([phi[b, :, i] @ psi[b, :, k] / 2.0 for k in range(3)])
                context[b, :, i] = sum(wt * delta[b, :, k] for k, wt in enumerate(weights))
        torch.testing.assert_close(module(x, regions), module.rho(context.view(2, 4, 3, 4)), rtol=1e-10, atol=1e-10)


def test_ocr_coarse_loss_has_its_own_weight():
    cfg = tiny_cfg("OCRHead", "MODEL.CLASSIFIER.DROPOUT", "0.0", "MODEL.DECODE_HEAD.OCR.COARSE_LOSS_WEIGHT", "0.25")
    shapes = {"res4": ShapeSpec(channels=8, stride=8), "res5": ShapeSpec(channels=12, stride=8)}
    head = build_decode_head(cfg, shapes).train()
    assert isinstance(head, OCRHead)
    features = {"res4": torch.randn(2, 8, 4, 4), "res5": torch.randn(2, 12, 4, 4)}
    targets = torch.randint(0, NUM_CLASSES, (2, 32, 32))
    out = head(features, targets)
    coarse = head.coarse_classifier(head.coarse_conv(features["res4"])).logits  # no dropout: same logits
    expected = 0.25 * F.cross_entropy(F.interpolate(coarse, (32, 32), mode="bilinear"), targets)
    prediction = out.predictions["ocr_coarse"]
    torch.testing.assert_close(prediction.logits, coarse)
    torch.testing.assert_close(prediction.loss(prediction.logits, targets), {"ce": expected})


# --------------------------------------------------------------------------- CPNet
def slow_affinity_loss(logits, labels, ignore=255):
    """CPNet affinity loss (unary BCE + precision/recall/specificity terms) with Python loops."""
    n, m, _ = logits.shape
    p = logits.sigmoid()
    bce, pairs, terms = 0.0, 0, {"p": [], "r": [], "s": []}
    for b in range(n):
        for i in range(m):
            if labels[b, i] == ignore:
                continue
            tp = psum = asum = neg = tn = 0.0
            for j in range(m):
                if labels[b, j] == ignore:
                    continue
                a = float(labels[b, i] == labels[b, j])
                bce -= a * torch.log(p[b, i, j]) + (1 - a) * torch.log(1 - p[b, i, j])
                pairs += 1
                tp, psum, asum = tp + a * p[b, i, j], psum + p[b, i, j], asum + a
                neg, tn = neg + (1 - a), tn + (1 - a) * (1 - p[b, i, j])
            terms["p"].append(-torch.log(tp / psum))
            terms["r"].append(-torch.log(tp / asum))
            if neg > 0:
                terms["s"].append(-torch.log(tn / neg))
    total = bce / pairs
    for values in terms.values():
        if values:
            total = total + sum(values) / len(values)
    return total


def test_ideal_affinity_is_one_hot_product():
    labels = torch.tensor([[0, 2, 2, 255, 1]])
    affinity, pairs = ideal_affinity(labels, 255)
    onehot = F.one_hot(labels.clamp(max=3), 4).float()
    torch.testing.assert_close(affinity[0][pairs[0]], (onehot[0] @ onehot[0].T)[pairs[0]])
    assert pairs.sum() == 16 and not pairs[0, 3].any() and not pairs[0, :, 3].any()


@pytest.mark.parametrize("case", ["mixed", "single_class_image", "all_ignored"])
def test_affinity_loss_matches_loop(case):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 9, 9, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 3, (2, 9), generator=g)
    labels[0, 2] = labels[1, 7] = 255
    if case == "single_class_image":  # image 1 has no "other class": its specificity is undefined
        labels[1] = torch.where(labels[1] == 255, 255, 1)
    if case == "all_ignored":
        labels[:] = 255
        assert affinity_loss(logits, labels, 255).item() == 0.0
        return
    expected = slow_affinity_loss(logits, labels)
    torch.testing.assert_close(affinity_loss(logits, labels, 255).double(), expected, rtol=1e-5, atol=1e-6)


def test_affinity_loss_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 1, 1, 255, 2, 0]])
    # affinity_loss computes in float32: compare its gradient to the float64 loop's
    (expected,) = torch.autograd.grad(slow_affinity_loss(logits, labels), logits)
    (actual,) = torch.autograd.grad(affinity_loss(logits, labels, 255), logits)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- configs
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "pascal_context_59", "*.yaml")))
CONFIG_HEADS = {"nonlocal": "NonLocalHead", "danet": "DAHead", "ccnet": "CCHead", "ocr": "OCRHead", "cpnet": "CPHead"}


@pytest.mark.parametrize("name", sorted(CONFIG_HEADS))
def test_pascal_context_config_loads(name):
    path = os.path.join(ROOT, "configs", "pascal_context_59", f"{name}_R101-D8_480x480.yaml")
    assert path in CONFIGS
    cfg = load_config(path)
    assert cfg.MODEL.DECODE_HEAD.NAME == CONFIG_HEADS[name]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 59
    assert cfg.DATASETS.TRAIN == ("pascal_context_59_sem_seg_train",)
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.RESNETS.OUTPUT_STRIDE == 8
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 0.01
    if name == "cpnet":
        assert cfg.MODEL.DECODE_HEAD.CPNET.PRIOR_SIZE * 8 == cfg.INPUT.CROP.SIZE[0]
