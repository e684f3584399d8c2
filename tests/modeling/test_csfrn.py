"""CSFRN (paper 003): the Lovasz hinge, the Class-Aware Consistency and smooth losses, CSFLM, AAM and
the CSFRNHead wrapper, each against a direct, slow float64 formulation of the issue's rules."""
import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from torch.nn import functional as F

import segcls  # noqa: F401  (registers everything)
from segcls.benchmarks.measure import count_flops
from segcls.engine import load_config
from segcls.modeling import PIXEL_LOSS_REGISTRY
from segcls.modeling.csfrn import AAM, CSFRNHead, class_aware_consistency_loss, class_statistics
from segcls.modeling.losses import lovasz_grad, lovasz_hinge, lovasz_hinge_flat
from segcls.modeling.losses.lovasz import LovaszSoftmaxLoss
from helpers import REPO, TINY_MODEL, ImageToLogits, tiny_batch, train_and_test_on_embedded_benchmark

IGNORE = 255
ROOT = REPO
torch.set_default_dtype(torch.float32)


# -------------------------------------------------------------------------------------------------
# Slow references
# -------------------------------------------------------------------------------------------------
def slow_hinge_flat(scores, labels):
    """scores: list of 0-d tensors; labels: list of 0/1 ints. Sort, then the Jaccard loss of each
    prefix from set counts; returns a 0-d tensor (differentiable through the scores)."""
    p = len(scores)
    if p == 0:
        return torch.zeros((), dtype=torch.float64)
    errors = [1 - s * (2 * y - 1) for s, y in zip(scores, labels)]
    order = sorted(range(p), key=lambda i: -float(errors[i].detach()))
    fg = sum(labels)
    loss, previous = 0.0, 0.0
    for r in range(1, p + 1):
        chosen = order[:r]
        inter = fg - sum(labels[i] for i in chosen)
        union = fg + sum(1 - labels[i] for i in chosen)
        jac = 1 - inter / union
        loss = loss + torch.clamp(errors[order[r - 1]], min=0) * (jac - previous)
        previous = jac
    return loss


def slow_hinge(logits, labels, per_image, ignore):
    def flat(lg, lb):
        keep = [(lg[i], int(lb[i])) for i in range(lb.numel()) if ignore is None or int(lb[i]) != ignore]
        return slow_hinge_flat([k[0] for k in keep], [k[1] for k in keep])

    if per_image:
        return sum(flat(lg.reshape(-1), lb.reshape(-1)) for lg, lb in zip(logits, labels)) / logits.shape[0]
    return flat(logits.reshape(-1), labels.reshape(-1))


def slow_nearest(label, h, w):
    """PyTorch's nearest: source index floor(dst * in / out)."""
    H, W = label.shape
    out = torch.empty(h, w, dtype=torch.long)
    for i in range(h):
        for j in range(w):
            out[i, j] = label[min(int(math.floor(i * H / h)), H - 1), min(int(math.floor(j * W / w)), W - 1)]
    return out


def slow_csfrn(emb, mar, targets, delta=10.0, loss_type="lovasz", use_margins=True, eps=1e-6):
    """Pixel-by-pixel L_cac and L_smooth (the issue's rules, Eqs. 1-5)."""
    n, _, h, w = emb.shape
    cac_total, smooth_total = 0.0, 0.0
    for b in range(n):
        y = slow_nearest(targets[b], h, w)
        pixels = [(i, j) for i in range(h) for j in range(w) if int(y[i, j]) != IGNORE]
        classes = sorted({int(y[i, j]) for i, j in pixels})
        if not classes:
            continue
        cac_b, smooth_b = 0.0, 0.0
        for k in classes:
            own = [(i, j) for i, j in pixels if int(y[i, j]) == k]
            s_k = sum(emb[b, :, i, j] for i, j in own) / len(own)
            m_k = sum(mar[b, 0, i, j] for i, j in own) / len(own)
            scale = torch.exp(delta * m_k) if use_margins else 1.0
            phis, positives = [], []
            for i, j in pixels:
                d2 = sum((emb[b, c, i, j] - s_k[c]) ** 2 for c in range(emb.shape[1]))
                phis.append(1 - torch.exp(-d2 * scale))
                positives.append(int(int(y[i, j]) == k))
            if loss_type == "lovasz":
                cac_b = cac_b + slow_hinge_flat([1 - 2 * phi for phi in phis], positives)
            else:
                terms = []
                for phi, pos in zip(phis, positives):
                    phi = torch.clamp(phi, eps, 1 - eps)
                    t = 1 - pos
                    terms.append(-(t * torch.log(phi) + (1 - t) * torch.log(1 - phi)))
                cac_b = cac_b + sum(terms) / len(terms)
            smooth_b = smooth_b + sum((mar[b, 0, i, j] - m_k) ** 2 for i, j in own) / len(own)
        cac_total = cac_total + cac_b / len(classes)
        smooth_total = smooth_total + smooth_b / len(classes)
    return cac_total / n, (smooth_total / n if use_margins else 0.0)


def close(a, b, tol=1e-9):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a, b)


# -------------------------------------------------------------------------------------------------
# Lovasz hinge
# -------------------------------------------------------------------------------------------------
def hinge_case(seed, ignore):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * 1.5
    labels = torch.randint(0, 2, (3, 4, 5), generator=g)
    if ignore is not None:
        labels[torch.rand(3, 4, 5, generator=g) < 0.25] = ignore
        labels[1] = ignore  # an all-ignored image
    labels[2][labels[2] != (ignore if ignore is not None else -1)] = 0  # an all-background image
    return logits, labels


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("seed", [0, 1])
def test_lovasz_hinge_matches_slow_reference_and_gradient(per_image, ignore, seed):
    logits, labels = hinge_case(seed, ignore)
    x = logits.clone().requires_grad_(True)
    ours = lovasz_hinge(x, labels, per_image=per_image, ignore=ignore)
    ours.backward()
    xr = logits.clone().requires_grad_(True)
    ref = slow_hinge(xr, labels, per_image, ignore)
    ref.backward()
    close(ours, ref)
    close(x.grad, xr.grad)
    assert torch.isfinite(x.grad).all()


def test_lovasz_hinge_edge_cases():
    # all-negative labels: relu(max error), no NaN; all ignored: exactly 0 and counted in the mean
    scores = torch.tensor([0.3, -2.0, 0.9], dtype=torch.float64, requires_grad=True)
    loss = lovasz_hinge_flat(scores, torch.zeros(3))
    close(loss, 1.9)
    loss.backward()
    close(scores.grad, torch.tensor([0.0, 0.0, 1.0]))
    logits = torch.tensor([[[2.0, -1.0]], [[0.5, 0.5]]], dtype=torch.float64)
    labels = torch.tensor([[[1, 0]], [[255, 255]]])
    both = lovasz_hinge(logits, labels, per_image=True, ignore=255)
    first = lovasz_hinge(logits[:1], labels[:1], per_image=True, ignore=255)
    close(both, first / 2)
    close(lovasz_hinge(logits[1:], labels[1:], ignore=255), 0.0)
    assert lovasz_hinge_flat(torch.zeros(0), torch.zeros(0)) == 0


def test_lovasz_grad_is_shared_and_batched():
    g = torch.Generator().manual_seed(3)
    fg = (torch.rand(4, 9, generator=g) > 0.5).double()
    rows = torch.stack([lovasz_grad(r) for r in fg])
    close(lovasz_grad(fg), rows, 0)
    # Lovasz-softmax still uses the same helper (and its values did not move)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (2, 4, 4), generator=g)
    loss = LovaszSoftmaxLoss(ignore_value=255)(logits, targets)
    probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 3)
    t = targets.reshape(-1)
    ref = []
    for c in range(3):
        fgc = (t == c).double()
        if fgc.any():
            err, order = (fgc - probs[:, c]).abs().sort(descending=True)
            ref.append(slow_hinge_like_dot(err, fgc[order]))
    close(loss, sum(ref) / len(ref))


def slow_hinge_like_dot(errors_sorted, fg_sorted):
    fg = float(fg_sorted.sum())
    total, previous = 0.0, 0.0
    for r in range(1, len(fg_sorted) + 1):
        inter = fg - float(fg_sorted[:r].sum())
        union = fg + float((1 - fg_sorted[:r]).sum())
        jac = 1 - inter / union
        total += float(errors_sorted[r - 1]) * (jac - previous)
        previous = jac
    return total


def test_lovasz_hinge_pixel_loss_registered():
    cfg = load_config("", [])
    loss = PIXEL_LOSS_REGISTRY.get("LovaszHingeLoss")(cfg, ignore_value=255)
    logits, labels = hinge_case(0, 255)
    close(loss(logits[:, None], labels), lovasz_hinge(logits, labels, per_image=False, ignore=255))
    two = torch.stack([torch.zeros_like(logits), logits], 1)
    close(loss(two, labels), lovasz_hinge(logits, labels, per_image=False, ignore=255))


# -------------------------------------------------------------------------------------------------
# Class-Aware Consistency loss, smooth loss
# -------------------------------------------------------------------------------------------------
def csfrn_case(seed=0, label_size=(11, 13), grid=(5, 6), classes=(0, 3, 7), n=3, dim=3):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, dim, *grid, generator=g, dtype=torch.float64) * 0.5
    mar = torch.randn(n, 1, *grid, generator=g, dtype=torch.float64) * 0.05
    choice = torch.tensor(classes)[torch.randint(0, len(classes), (n, *label_size), generator=g)]
    choice[torch.rand(n, *label_size, generator=g) < 0.2] = IGNORE
    choice[-1] = IGNORE  # an image without a valid pixel counts as 0
    if n > 2:
        choice[1][choice[1] != IGNORE] = classes[0]  # a single-class image
    return emb, mar, choice


CASES = [
    dict(seed=0),
    dict(seed=1, label_size=(5, 6)),  # label already at the grid size
    dict(seed=2, classes=(1, 4), dim=2),
    dict(seed=3, label_size=(16, 9), grid=(4, 4), classes=(2, 5, 6, 9)),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("loss_type", ["lovasz", "bce"])
def test_consistency_and_smooth_losses_match_loop_reference(case, loss_type):
    emb, mar, targets = csfrn_case(**case)
    e, m = emb.clone().requires_grad_(True), mar.clone().requires_grad_(True)
    cac, smooth = class_aware_consistency_loss(e, m, targets, loss_type=loss_type)
    (cac + smooth).backward()
    er, mr = emb.clone().requires_grad_(True), mar.clone().requires_grad_(True)
    cac_ref, smooth_ref = slow_csfrn(er, mr, targets, loss_type=loss_type)
    (cac_ref + smooth_ref).backward()
    close(cac, cac_ref)
    close(smooth, smooth_ref)
    close(e.grad, er.grad)  # gradients flow through the centers and margins too
    close(m.grad, mr.grad)
    assert cac > 0


@pytest.mark.parametrize("loss_type", ["lovasz", "bce"])
def test_margins_off_replaces_the_scale_by_one(loss_type):
    emb, mar, targets = csfrn_case(seed=4)
    cac, smooth = class_aware_consistency_loss(emb, None, targets, loss_type=loss_type, use_margins=False)
    cac_ref, _ = slow_csfrn(emb, mar, targets, loss_type=loss_type, use_margins=False)
    close(cac, cac_ref)
    assert smooth == 0
    # with zero margins exp(delta * 0) = 1: the same loss
    close(class_aware_consistency_loss(emb, torch.zeros_like(mar), targets, loss_type=loss_type)[0], cac)


def test_centers_and_margins_eq1_eq3():
    emb, mar, targets = csfrn_case(seed=5, label_size=(5, 6))
    y = targets[0].flatten()
    valid = y != IGNORE
    classes, onehot, centers, margins = class_statistics(emb[0].flatten(1).t()[valid], mar[0, 0].flatten()[valid], y[valid])
    assert classes.tolist() == sorted(set(y[valid].tolist()))
    for r, k in enumerate(classes.tolist()):
        own = [(i, j) for i in range(5) for j in range(6) if int(targets[0, i, j]) == k]
        close(centers[r], sum(emb[0, :, i, j] for i, j in own) / len(own))
        close(margins[r], sum(mar[0, 0, i, j] for i, j in own) / len(own))
        assert onehot[r].sum() == len(own)


def test_positive_class_is_pixel_of_k_and_margin_clamp():
    emb, mar, targets = csfrn_case(seed=6)
    cac, _ = class_aware_consistency_loss(emb, mar, targets)
    # 2*phi - 1 with positives "not k" is a different loss (the hinge is not symmetric)
    swapped = 0.0
    for b in range(emb.shape[0]):
        y = slow_nearest(targets[b], 5, 6).flatten()
        v = y != IGNORE
        if not v.any():
            continue
        e = emb[b].flatten(1).t()[v]
        _, onehot, centers, margins = class_statistics(e, mar[b, 0].flatten()[v], y[v])
        phi = 1 - torch.exp(-((e[None] - centers[:, None]) ** 2).sum(-1) * torch.exp(10 * margins)[:, None])
        swapped += lovasz_hinge_flat(2 * phi - 1, 1 - onehot).mean()
    assert not torch.allclose(cac, swapped / emb.shape[0])
    # huge margins: no overflow with the clamp, inf/NaN-free result
    big = torch.full_like(mar, 20.0).float()
    out, _ = class_aware_consistency_loss(emb.float(), big, targets, margin_clamp=50.0)
    assert torch.isfinite(out)


# -------------------------------------------------------------------------------------------------
# AAM, CSFRNHead
# -------------------------------------------------------------------------------------------------
def test_aam_offsets_at_init_equal_a_plain_convolution():
    torch.manual_seed(0)
    aam = AAM(4, 6).eval()
    for bn in (aam.deform_x.norm, aam.deform_y.norm):
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(2, 4, 7, 9), torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        out = aam(x, y)
        offset = aam.offset(torch.cat([x, y], 1))
        assert offset.abs().max() == 0 and offset.shape == (2, 18, 7, 9)
        px = F.relu(aam.deform_x.norm(F.conv2d(x, aam.deform_x.conv.weight, padding=1)))
        py = F.relu(aam.deform_y.norm(F.conv2d(y, aam.deform_y.conv.weight, padding=1)))
        ref = aam.fuse(torch.cat([px, py], 1))
    assert torch.allclose(out, ref, atol=1e-5)
    # gradients reach the offset conv (so the offsets can move away from 0)
    aam.train()
    aam(x, y).square().sum().backward()
    assert aam.offset.weight.grad.abs().sum() > 0


def _unsaturated_fraction(csflm, a, labels, delta=10.0):
    """Fraction of the (class k, pixel) scores 2 exp(-||b - s_k||^2 exp(delta m_k)) - 1 of one
    image that are not saturated at +-1 (|score| < 0.99), i.e. where the Lovasz hinge has a gradient."""
    b, c = csflm(a)
    emb, mar = b[0].flatten(1).t(), c[0, 0].flatten()
    classes, onehot, centers, margins = class_statistics(emb, mar, labels.flatten())
    scores = 2 * torch.exp(-(emb[None] - centers[:, None]).pow(2).sum(-1) * (delta * margins).exp()[:, None]) - 1
    return (scores.abs() < 0.99).float().mean().item()


def test_csflm_default_init_starts_where_the_consistency_loss_has_a_gradient():
    """MODEL.CSFRN.INIT "small": margins start at 0 (exp(delta m) = 1) and the embedding distances
    at O(0.1-1), so the scores are not saturated and L_cac moves B and Cmap. "msra" (He init: Cmap
    weight std sqrt(2) over 128 inputs) starts with margins of +-10 and more: nearly every score is
    saturated at +-1 and the gradient of L_cac w.r.t. Cmap is orders of magnitude smaller."""
    from segcls.modeling.csfrn.head import CSFLM

    a = torch.relu(torch.randn(1, 64, 8, 8, generator=torch.Generator().manual_seed(0)))
    labels = torch.randint(0, 3, (1, 8, 8), generator=torch.Generator().manual_seed(1))
    grads = {}
    for init in ("small", "msra"):
        torch.manual_seed(0)
        csflm = CSFLM(64, 128, 32, "BN", init=init).train()
        frac = _unsaturated_fraction(csflm, a, labels)
        if init == "small":
            assert frac > 0.9
            b, c = csflm(a)
            assert c.abs().max() == 0
        else:
            assert frac < 0.2
        b, c = csflm(a)
        cac, _ = class_aware_consistency_loss(b, c, labels)
        cac.backward()
        grads[init] = csflm.margin.weight.grad.norm().item()
        assert math.isfinite(grads[init])
    assert grads["small"] > 1e-3 and grads["small"] > 100 * grads["msra"]
    with pytest.raises(ValueError, match="MODEL.CSFRN.INIT='he'"):
        CSFLM(64, 8, 4, init="he")


CSFRN = ["MODEL.DECODE_HEAD.NAME", "CSFRNHead", "MODEL.CSFRN.MID_CHANNELS", "8", "MODEL.CSFRN.EMBED_DIM", "4"]
HEADS = {
    "FCNHead": [],
    "PSPHead": [],
    "NonLocalHead": [],
    "DeepLabV3PlusHead": ["MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res5"]'],
    "DAHead": [],
}


def build_tiny(opts=(), seed=0):
    torch.manual_seed(seed)
    return build_model(load_config("", TINY_MODEL + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"] + list(opts)))


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("aam", [True, False])
def test_csfrn_trains_with_every_head(head, aam):
    base = ["MODEL.CSFRN.BASE_HEAD", head, "MODEL.CSFRN.AAM.ENABLED", str(aam)] + HEADS[head]
    model = build_tiny(CSFRN + base).train()
    plain = build_tiny(["MODEL.DECODE_HEAD.NAME", head] + HEADS[head]).train()
    dh = model.decode_head
    assert isinstance(dh, CSFRNHead) and dh.out_channels == plain.decode_head.out_channels + (0 if aam else 4)
    assert model.classifier.conv.in_channels == dh.out_channels
    losses = model(tiny_batch())
    expected = set(plain(tiny_batch())) | {"loss_csfrn_consistency", "loss_csfrn_smooth"}
    assert set(losses) == expected  # the base head's predictions (DANet's pam/cam) pass through
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for module in (dh.csflm.trunk, dh.csflm.embed, dh.csflm.margin):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(tiny_batch(with_labels=False))
    assert out[0]["sem_seg"].shape == (4, 40, 48)


def test_head_feature_input_margins_off_and_weights():
    model = build_tiny(CSFRN + ["MODEL.CSFRN.IN_FEATURE", "head", "MODEL.CSFRN.USE_MARGINS", "False",
                                "MODEL.CSFRN.LOSS_TYPE", "bce", "MODEL.CSFRN.CONSISTENCY_WEIGHT", "0.5"]).train()
    dh = model.decode_head
    assert dh.csflm.trunk.in_channels == dh.base_head.out_channels and dh.csflm.margin is None
    losses = model(tiny_batch())
    assert "loss_csfrn_smooth" not in losses and losses["loss_csfrn_consistency"] > 0
    with pytest.raises(ValueError, match="IN_FEATURE"):
        build_tiny(CSFRN + ["MODEL.CSFRN.IN_FEATURE", "res9"])
    with pytest.raises(ValueError, match="ASPP.SEPARABLE"):  # checked against the wrapped head's keys
        build_tiny(CSFRN + ["MODEL.DECODE_HEAD.ASPP.SEPARABLE", "True"])
    build_tiny(CSFRN + ["MODEL.CSFRN.BASE_HEAD", "DeepLabV3PlusHead", "MODEL.DECODE_HEAD.ASPP.SEPARABLE", "True",
                        "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res5"]'])
    with pytest.raises(ValueError, match="LOSS_TYPE"):
        build_tiny(CSFRN + ["MODEL.CSFRN.LOSS_TYPE", "dice"])


def test_head_losses_equal_the_functional_loss_with_weights():
    model = build_tiny(CSFRN).train()
    dh = model.decode_head
    images, targets = model.preprocessor(tiny_batch(), require_targets=True)
    feats = model.backbone(images.tensor)
    out = dh(feats, targets)
    torch.manual_seed(0)
    b, c = dh.csflm(feats["res5"])
    cac, smooth = class_aware_consistency_loss(b, c, targets)
    assert torch.allclose(out.losses["loss_csfrn_consistency"], 0.2 * cac)
    assert torch.allclose(out.losses["loss_csfrn_smooth"], 0.2 * smooth)


@pytest.mark.parametrize("aam", [True, False])
def test_inference_cost_is_only_the_embedding_branch_and_aam(aam):
    """CSFRN-on vs off: the extra inference FLOPs are exactly those of CSFLM's 3x3 conv and
    embedding (the margin branch never runs at inference) and of AAM; parameters likewise (plus
    the margin conv, training only)."""
    on = build_tiny(CSFRN + ["MODEL.CSFRN.AAM.ENABLED", str(aam)]).eval()
    off = build_tiny().eval()
    calls = []
    on.decode_head.csflm.margin.register_forward_hook(lambda *a: calls.append(1))
    image = tiny_batch(with_labels=False)[0]["image"]
    with torch.no_grad():
        f_on = count_flops(ImageToLogits(on), (image,))
        f_off = count_flops(ImageToLogits(off), (image,))
        total_on, total_off = f_on.total(), f_off.total()
        by = f_on.by_module()
    dh = "model.decode_head"
    extra = by[f"{dh}.csflm.trunk"] + by[f"{dh}.csflm.embed"] + (by[f"{dh}.aam"] if aam else 0)
    classifier_extra = 0 if aam else by["model.classifier"] - f_off.by_module()["model.classifier"]
    assert by[f"{dh}.csflm.margin"] == 0 and calls == []
    assert total_on - total_off == extra + classifier_extra > 0
    h, w = on.backbone(torch.zeros(1, 3, 40, 48))["res5"].shape[-2:]
    c_in, mid, dim, cy = on.backbone.output_shape()["res5"].channels, 8, 4, 16
    assert by[f"{dh}.csflm.trunk"] >= h * w * c_in * mid * 9  # + BN
    if aam:  # the deformable convs are counted like convolutions (the tool's handle)
        assert by[f"{dh}.aam.deform_y.conv"] == h * w * cy * cy * 9
        assert by[f"{dh}.aam.deform_x.conv"] == h * w * dim * dim * 9
    n_on = sum(p.numel() for p in on.parameters())
    n_off = sum(p.numel() for p in off.parameters())
    extra_params = sum(p.numel() for p in on.decode_head.csflm.parameters())
    extra_params += sum(p.numel() for p in on.decode_head.aam.parameters()) if aam else dim * 4
    assert n_on - n_off == extra_params


def test_train_and_evaluate_on_the_embedded_benchmark(tmp_path):
    _, metrics = train_and_test_on_embedded_benchmark(tmp_path, CSFRN)
    assert all(0.0 <= m["mIoU"] <= 100.0 for m in metrics.values())


def test_synthetic_config_builds():
    cfg = load_config(os.path.join(ROOT, "configs", "synthetic_context", "fcn_r18_csfrn.yaml"), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert isinstance(model.decode_head, CSFRNHead) and model.decode_head.aam is not None


# -------------------------------------------------------------------------------------------------
# Configs: the paper's experiments (Cityscapes Tables 1-7, ADE20K 8, COCO-Stuff-10k 9, Pascal Context 10)
# -------------------------------------------------------------------------------------------------
CITYSCAPES = sorted(
    os.path.join("cityscapes", f) for f in os.listdir(os.path.join(ROOT, "configs", "cityscapes")) if f.startswith("csfrn_")
)
OTHERS = [f"{d}/csfrn_deeplabv3plus_r101.yaml" for d in ("ade20k", "coco_stuff", "pascal_context_59")]


def _cfg(rel):
    return load_config(os.path.join(ROOT, "configs", rel), [])


def _flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def test_config_inventory():
    names = {os.path.basename(c) for c in CITYSCAPES}
    for m in ("fcn", "psp", "nonlocal", "deeplabv3plus"):
        assert {f"csfrn_{m}_r50_baseline.yaml", f"csfrn_{m}_r50_csflm.yaml"} <= names
    for extra in ("csflm_c8", "csflm_c16", "csflm_c64", "aux_lovasz_softmax", "csflm_bce", "csflm_no_margins", "csflm_aam"):
        assert f"csfrn_deeplabv3plus_r50_{extra}.yaml" in names
    for extra in ("csflm_aam", "csflm_aam_mg", "csflm_aam_mg_ohem", "csflm_aam_mg_ohem_ms", "test_server"):
        assert f"csfrn_deeplabv3plus_r101_{extra}.yaml" in names


@pytest.mark.parametrize("rel", CITYSCAPES + OTHERS)
def test_paper_config_recipe(rel):
    cfg = _cfg(rel)
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY, s.POLY_LR_POWER) == (8, 0.01, 0.9, 1e-4, 0.9)
    assert s.OPTIMIZER == "SGD" and s.LR_SCHEDULER_NAME == "WarmupPolyLR"
    assert cfg.MODEL.RESNETS.OUTPUT_STRIDE == 8 and cfg.MODEL.RESNETS.NORM == "SyncBN"
    assert list(cfg.INPUT.RATIO_RANGE) == [0.75, 2.0] and cfg.INPUT.RANDOM_FLIP == "horizontal"
    if rel.startswith("cityscapes/"):
        assert list(cfg.INPUT.CROP.SIZE) == [769, 769] and cfg.TEST.MODE == "slide"
        assert s.MAX_ITER == (90000 if "test_server" in rel else 40000)
        assert cfg.MODEL.RESNETS.DEPTH == (101 if "_r101_" in rel else 50)
    csfrn = cfg.MODEL.DECODE_HEAD.NAME == "CSFRNHead"
    assert csfrn == ("baseline" not in rel and "aux_lovasz" not in rel)
    if csfrn:
        aam = "aam" in rel or "test_server" in rel or rel in OTHERS
        assert cfg.MODEL.CSFRN.AAM.ENABLED == aam and cfg.MODEL.CSFRN.IN_FEATURE == "res5"
        assert (cfg.MODEL.CSFRN.CONSISTENCY_WEIGHT, cfg.MODEL.CSFRN.SMOOTH_WEIGHT, cfg.MODEL.CSFRN.DELTA) == (0.2, 0.2, 10.0)
    if "_mg" in rel or "test_server" in rel or rel in OTHERS:
        assert list(cfg.MODEL.RESNETS.RES5_MULTI_GRID) == [1, 2, 4]  # dilations 4 x (1, 2, 4) = (4, 8, 16)
    if "_ms" in rel or "test_server" in rel or rel in OTHERS:
        assert cfg.TEST.AUG.ENABLED and list(cfg.TEST.AUG.SCALES) == [0.25, 0.5, 1.0, 1.25, 1.5, 1.75]
    if "ohem" in rel or "test_server" in rel:
        assert list(cfg.MODEL.DECODE_HEAD.LOSSES) == ["OhemCrossEntropyLoss"]


@pytest.mark.parametrize("m", ["fcn", "psp", "nonlocal", "deeplabv3plus"])
def test_csflm_configs_differ_from_their_baseline_only_in_csfrn_keys(m):
    a = _flat(_cfg(f"cityscapes/csfrn_{m}_r50_csflm.yaml"))
    b = _flat(_cfg(f"cityscapes/csfrn_{m}_r50_baseline.yaml"))
    diff = {k for k in a if a[k] != b[k]}
    assert diff and all(k.startswith("MODEL.CSFRN.") or k == "MODEL.DECODE_HEAD.NAME" for k in diff), diff


def test_margin_overflow_guard_under_autocast():
    """Under AMP the head clamps delta * m_k at MARGIN_CLAMP (50): huge margins give a finite loss,
    equal to the functional loss with margin_clamp=50; in float32 without AMP the clamp is off."""
    model = build_tiny(CSFRN).train()
    dh = model.decode_head
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 4, 5, 6, generator=g)
    mar = torch.full((2, 1, 5, 6), 20.0)  # exp(10 * 20) overflows float32
    targets = torch.randint(0, 3, (2, 10, 12), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = dh.losses(emb, mar, targets)
    ref, _ = class_aware_consistency_loss(emb, mar, targets, margin_clamp=50.0)
    assert torch.isfinite(amp["loss_csfrn_consistency"]) and torch.allclose(amp["loss_csfrn_consistency"], 0.2 * ref)
    small = mar * 0.001
    plain = dh.losses(emb, small, targets)["loss_csfrn_consistency"]
    assert torch.allclose(plain, 0.2 * class_aware_consistency_loss(emb, small, targets)[0])
