"""
ContextAwareClassifier (CAC, issue 7): every quantity against a direct, slow float64 formulation
(loops over images, classes and pixels), gradient stops checked with autograd, the parameter
overhead, and the plug-in inside the full PerPixelSegmentor with every registered decode head.
"""
import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

import segcls  # noqa: F401  (registers everything)
from segcls.engine import load_config
from segcls.modeling import DECODE_HEAD_REGISTRY
from segcls.modeling.classifiers import ContextAwareClassifier, LinearClassifier
from segcls.modeling.classifiers.context_aware import FUSIONS
from segcls.modeling.losses import PixelLossSet, SegmentationLoss
from segcls.modeling.losses.cross_entropy import CrossEntropyLoss
from segcls.modeling.registry import build_classifier
from helpers import REPO

IGNORE = 255
N, D, K, h, w = 3, 6, 5, 4, 5
H, W = 11, 13  # label grid: larger than and not a multiple of the feature grid
TAU = 15.0


def names(out):
    """The prediction and loss-term names of a classifier's SegOutputs."""
    return {*out.predictions, *out.losses}


def make_cac(**kwargs):
    torch.manual_seed(0)
    args = dict(in_channels=D, num_classes=K, ignore_value=IGNORE, dropout=0.0)
    args.update(kwargs)
    cac = ContextAwareClassifier(**args).double()
    with torch.no_grad():  # a classifier with visible weights and a non-zero bias
        cac.conv.weight.normal_(0, 0.5)
        if cac.conv.bias is not None:
            cac.conv.bias.normal_(0, 0.5)
    return cac.train()


def make_labels():
    """(N, H, W) labels. Legacy nearest samples rows 0, 2, 5, 8 and columns 0, 2, 5, 7, 10."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (N, H, W), generator=g)  # classes 0..2 in images 0 and 1
    labels[0, 0, 0] = labels[0, 5, 7] = IGNORE  # sampled ignore pixels in image 0
    labels[0, 1, 1] = 4  # class 4 only at a pixel the downsampling skips -> absent
    labels[1, 5, 5] = 3  # class 3 present in image 1 only
    labels[2] = IGNORE  # a fully ignored image
    return labels


def make_inputs():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(N, D, h, w, generator=g, dtype=torch.float64)
    f[0, :, 1, 1] = 0.0  # an all-zero feature vector (cosine must stay finite)
    return f, make_labels()


# -------------------------------------------------------------------------------------------------
# Slow float64 formulations, written from the rules with explicit loops
# -------------------------------------------------------------------------------------------------
def slow_softmax(v):
    v = v.detach()
    m = max(float(x) for x in v)
    e = [math.exp(float(x) - m) for x in v]
    s = sum(e)
    return [x / s for x in e]


def slow_downsample(labels, out_h, out_w):
    n, in_h, in_w = labels.shape
    out = torch.empty(n, out_h, out_w, dtype=torch.long)
    for b in range(n):
        for i in range(out_h):
            for j in range(out_w):
                out[b, i, j] = labels[b, min(math.floor(i * in_h / out_h), in_h - 1), min(math.floor(j * in_w / out_w), in_w - 1)]
    return out


def slow_static(f, C, bias):
    out = torch.empty(f.shape[0], C.shape[0], f.shape[2], f.shape[3], dtype=torch.float64)
    for b in range(f.shape[0]):
        for k in range(C.shape[0]):
            for i in range(f.shape[2]):
                for j in range(f.shape[3]):
                    out[b, k, i, j] = torch.dot(C[k], f[b, :, i, j]) + bias[k]
    return out


def slow_Cp(f, p):
    n, d, hh, ww = f.shape
    out = torch.empty(n, p.shape[1], d, dtype=torch.float64)
    for b in range(n):
        probs = {(i, j): slow_softmax(p[b, :, i, j]) for i in range(hh) for j in range(ww)}
        for k in range(p.shape[1]):
            num, den = torch.zeros(d, dtype=torch.float64), 0.0
            for (i, j), s in probs.items():
                num += s[k] * f[b, :, i, j]
                den += s[k]
            out[b, k] = num / (den + 1e-12)
    return out


def slow_Cy(f, y, C):
    n, d, hh, ww = f.shape
    out = torch.empty(C.shape[0], d, dtype=torch.float64)
    for k in range(C.shape[0]):
        num, cnt = torch.zeros(d, dtype=torch.float64), 0
        for b in range(n):
            for i in range(hh):
                for j in range(ww):
                    if y[b, i, j] == k:
                        num += f[b, :, i, j]
                        cnt += 1
        out[k] = num / cnt if cnt else C[k]
    return out


def slow_theta(theta, z):
    W1, W2, b2 = theta[0].weight, theta[2].weight, theta[2].bias
    out = torch.empty(z.shape[:-1] + (W2.shape[0],), dtype=torch.float64)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in z.shape[:-1]]).reshape(-1, z.dim() - 1).tolist():
        hidden = torch.clamp(W1 @ z[tuple(idx)], min=0)
        out[tuple(idx)] = W2 @ hidden + b2
    return out


def slow_A(fusion, theta, proto, C):
    Cx = C.expand_as(proto)
    z = {"concat": torch.cat([proto, Cx], -1), "add": proto + Cx, "proto": proto}[FUSIONS[fusion][0]]
    if not FUSIONS[fusion][1]:
        return z
    A = slow_theta(theta, z)
    return A + Cx if FUSIONS[fusion][2] else A


def slow_cos_logits(f, A, tau=TAU):
    n, _, hh, ww = f.shape
    out = torch.empty(n, A.shape[-2], hh, ww, dtype=torch.float64)
    for b in range(n):
        Ab = A if A.dim() == 2 else A[b]
        for k in range(Ab.shape[0]):
            for i in range(hh):
                for j in range(ww):
                    v = f[b, :, i, j]
                    out[b, k, i, j] = tau * torch.dot(v, Ab[k]) / ((v.norm() + 1e-12) * (Ab[k].norm() + 1e-12))
    return out


def slow_kl(p_p, p_y, y, s=0.5, classwise=True, entropy_from=None):
    """Eq. 11 as released; entropy_from: logits for H (None = weight 1)."""
    n, k_, hh, ww = p_p.shape
    pixels = [(b, i, j) for b in range(n) for i in range(hh) for j in range(ww) if y[b, i, j] != IGNORE]
    loss, weight = {}, {}
    for b, i, j in pixels:
        q = slow_softmax(p_y[b, :, i, j])
        logp = [math.log(v) for v in slow_softmax(p_p[b, :, i, j])]
        label = int(y[b, i, j])
        t = [s * q[c] + (1 - s) * (c == label) for c in range(k_)]
        loss[b, i, j] = -sum(t[c] * logp[c] for c in range(k_))
        if entropy_from is None:
            weight[b, i, j] = 1.0
        else:
            r = slow_softmax(entropy_from[b, :, i, j])
            weight[b, i, j] = -sum(v * math.log(v) for v in r)
    if not classwise:
        return sum(weight[x] * loss[x] for x in pixels) / (sum(weight[x] for x in pixels) + 1e-12)
    per_class = []
    for c in range(k_):
        members = [x for x in pixels if y[x] == c]
        if members:
            per_class.append(sum(weight[x] * loss[x] for x in members) / (sum(weight[x] for x in members) + 1e-12))
    return sum(per_class) / len(per_class) if per_class else 0.0


def close(a, b, tol=1e-10):
    b = torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a.detach(), b, rtol=tol, atol=tol), (a - b).abs().max().item()


# -------------------------------------------------------------------------------------------------
# The test scenario really contains what the tests claim
# -------------------------------------------------------------------------------------------------
def test_scenario_and_legacy_nearest_downsampling():
    cac = make_cac()
    labels = make_labels()
    y = cac.downsample_labels(labels, (h, w))
    assert torch.equal(y, slow_downsample(labels, h, w))
    assert (y[0] == IGNORE).any() and (y[0] != IGNORE).any()  # ignore pixels in a labelled image
    assert (y[2] == IGNORE).all()  # a fully ignored image
    assert (labels == 4).any() and not (y == 4).any()  # class 4 absent after downsampling
    assert (y[1] == 3).any() and not (y[0] == 3).any()  # class 3 in one image only


# -------------------------------------------------------------------------------------------------
# Each quantity vs the slow formulation
# -------------------------------------------------------------------------------------------------
def test_estimated_prototypes_eq4():
    cac = make_cac()
    f, _ = make_inputs()
    p = cac.static_logits(f)
    close(p, slow_static(f, cac.weight, cac.conv.bias))
    close(cac.estimated_prototypes(f, p), slow_Cp(f, p))


def test_oracle_prototypes_eq1_pooled_over_batch_absent_class_is_classifier_row():
    cac = make_cac()
    f, labels = make_inputs()
    y = cac.downsample_labels(labels, (h, w))
    C_y, present = cac.oracle_prototypes(f, cac.one_hot(y, f.dtype))
    close(C_y, slow_Cy(f, y, cac.weight))
    assert present.tolist() == [True, True, True, True, False]
    # pooled over the batch, not averaged per image
    per_image_mean = torch.stack([f[b][:, y[b] == 0].mean(1) for b in (0, 1)]).mean(0)
    assert not torch.allclose(C_y[0], per_image_mean)


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_context_classifiers_A_y_A_p_eqs_2_5(fusion):
    cac = make_cac(fusion=fusion)
    f, labels = make_inputs()
    y = cac.downsample_labels(labels, (h, w))
    C_y, _ = cac.oracle_prototypes(f, cac.one_hot(y, f.dtype))
    C_p = cac.estimated_prototypes(f, cac.static_logits(f))
    close(cac.context_classifier(cac.theta_y, C_y), slow_A(fusion, cac.theta_y, slow_Cy(f, y, cac.weight), cac.weight))
    close(cac.context_classifier(cac.theta_p, C_p), slow_A(fusion, cac.theta_p, slow_Cp(f, cac.static_logits(f)), cac.weight))


def test_projector_shapes_concat_order_prototype_first():
    cac = make_cac()
    assert [tuple(m.weight.shape) for m in cac.theta_y if hasattr(m, "weight")] == [(D // 2, 2 * D), (D, D // 2)]
    assert cac.theta_y[0].bias is None and cac.theta_y[2].bias is not None
    proto = torch.randn(K, D, dtype=torch.float64)
    W1 = cac.theta_y[0].weight
    hidden = torch.relu(proto @ W1[:, :D].T + cac.weight @ W1[:, D:].T)  # first half sees C_*
    close(cac.context_classifier(cac.theta_y, proto), hidden @ cac.theta_y[2].weight.T + cac.theta_y[2].bias)


def test_cosine_logits_eqs_3_6_shared_and_per_image():
    cac = make_cac()
    f, _ = make_inputs()
    A = torch.randn(K, D, dtype=torch.float64)
    A[2] = 0.0
    A[3] *= 1e-9  # tiny norms: "+ 1e-12" differs from clamping the norm
    f = f.clone()
    f[1, :, 2, 3] *= 1e-9
    A_img = torch.randn(N, K, D, dtype=torch.float64)
    close(cac.similarity_logits(f, A), slow_cos_logits(f, A))
    close(cac.similarity_logits(f, A_img), slow_cos_logits(f, A_img))
    assert torch.isfinite(cac.similarity_logits(f, A)).all()
    assert cac.similarity_logits(f, A)[0, :, 1, 1].abs().max() == 0  # all-zero feature -> 0, not NaN


@pytest.mark.parametrize(
    "classwise,entropy,soft",
    [(True, "oracle", 0.5), (True, "oracle", 1.0), (True, "none", 0.5), (False, "oracle", 0.5), (False, "none", 0.5),
     (True, "estimated", 0.5), (True, "static", 0.3)],
)
def test_distillation_eq11_and_table3_variants(classwise, entropy, soft):
    cac = make_cac(kl_classwise=classwise, kl_entropy=entropy, kl_soft_weight=soft)
    f, labels = make_inputs()
    y = cac.downsample_labels(labels, (h, w))
    g = torch.Generator().manual_seed(3)
    p_p, p_y, p = (3 * torch.randn(N, K, h, w, generator=g, dtype=torch.float64) for _ in range(3))
    source = {"oracle": p_y, "estimated": p_p, "static": p, "none": None}[entropy]
    expected = slow_kl(p_p, p_y, y, soft, classwise, source)
    close(cac.distillation_loss(p_p, p_y, cac.one_hot(y, f.dtype), p), expected)


def test_distillation_without_labelled_pixels_is_zero_with_gradient_path():
    cac = make_cac()
    p_p = torch.randn(2, K, h, w, dtype=torch.float64, requires_grad=True)
    onehot = cac.one_hot(torch.full((2, h, w), IGNORE), p_p.dtype)
    loss = cac.distillation_loss(p_p, torch.randn(2, K, h, w, dtype=torch.float64), onehot)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(p_p.grad).all()


def test_forward_train_and_eval_match_slow_chain():
    cac = make_cac()
    f, labels = make_inputs()
    out = cac(f, labels)
    assert names(out) == {"main", "static", "oracle", "loss_cac_kl"}
    C = cac.weight
    y = slow_downsample(labels, h, w)
    p = slow_static(f, C, cac.conv.bias)
    p_y = slow_cos_logits(f, slow_A("concat_proj", cac.theta_y, slow_Cy(f, y, C), C))
    p_p = slow_cos_logits(f, slow_A("concat_proj", cac.theta_p, slow_Cp(f, p), C))
    close(out.predictions["static"].logits, p)
    close(out.predictions["oracle"].logits, p_y)
    close(out.logits, p_p)
    close(out.losses["loss_cac_kl"], slow_kl(p_p, p_y, y, 0.5, True, p_y))
    cac.eval()
    inference = cac(f)
    assert names(inference) == {"main"}
    close(inference.logits, p_p)


def test_kl_weight_and_tau_are_applied():
    f, labels = make_inputs()
    base = make_cac()(f, labels)
    other = make_cac(kl_weight=0.25, tau=5.0)(f, labels)
    y = slow_downsample(labels, h, w)
    close(other.logits, base.logits / 3)
    p_p, p_y = base.logits.detach() / 3, base.predictions["oracle"].logits.detach() / 3
    close(other.losses["loss_cac_kl"], 0.25 * slow_kl(p_p, p_y, y, 0.5, True, p_y))


def test_dropout_only_on_the_static_path():
    f, labels = make_inputs()
    plain = make_cac()(f, labels)
    cac = make_cac(dropout=0.5)
    torch.manual_seed(5)
    out = cac(f, labels)
    assert not torch.allclose(out.predictions["static"].logits, plain.predictions["static"].logits)  # dropout did act on p
    close(out.predictions["oracle"].logits, plain.predictions["oracle"].logits)  # f, C_y, p_y: before dropout
    p = out.predictions["static"].logits.detach()
    close(out.logits, slow_cos_logits(f, slow_A("concat_proj", cac.theta_p, slow_Cp(f, p), cac.weight)))
    cac.eval()
    close(cac(f).logits, make_cac().eval()(f).logits)  # no dropout at inference


# -------------------------------------------------------------------------------------------------
# Gradient stops
# -------------------------------------------------------------------------------------------------
def _loss_terms(cac, f, labels):
    out = cac(f, labels)
    ce = CrossEntropyLoss(ignore_value=IGNORE)
    up = lambda x: F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
    return {
        "ce_p_p": ce(up(out.logits), labels),
        "ce_p": ce(up(out.predictions["static"].logits), labels),
        "ce_p_y": ce(up(out.predictions["oracle"].logits), labels),
        "kl": out.losses["loss_cac_kl"],
    }


def _gets_gradient(loss, params):
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_projectors_get_gradient_only_from_their_losses():
    cac = make_cac()
    f, labels = make_inputs()
    terms = _loss_terms(cac, f, labels)
    theta_y = {name for name, loss in terms.items() if _gets_gradient(loss, cac.theta_y.parameters())}
    theta_p = {name for name, loss in terms.items() if _gets_gradient(loss, cac.theta_p.parameters())}
    assert theta_y == {"ce_p_y"}
    assert theta_p == {"ce_p_p", "kl"}


def test_absent_class_rows_of_C_y_carry_no_gradient_to_C():
    cac = make_cac()
    f, labels = make_inputs()
    f.requires_grad_(True)
    C_y, present = cac.oracle_prototypes(f, cac.one_hot(cac.downsample_labels(labels, (h, w)), f.dtype))
    assert not present[4]
    assert not _gets_gradient(C_y[4].sum(), [cac.conv.weight])  # detached C[4]
    assert _gets_gradient(C_y[3].sum(), [f])
    # the C half of [C_y || C] is live: A_y's gradient w.r.t. C equals the one of a C_y built
    # with an explicitly detached C
    A = cac.context_classifier(cac.theta_y, C_y)
    C_y_ref = torch.where(present[:, None], C_y.detach(), cac.weight.detach())
    A_ref = cac.context_classifier(cac.theta_y, C_y_ref)
    (g,) = torch.autograd.grad(A.square().sum(), cac.conv.weight)
    (g_ref,) = torch.autograd.grad(A_ref.square().sum(), cac.conv.weight)
    assert g.abs().sum() > 0
    close(g, g_ref)


@pytest.mark.parametrize("entropy", ["oracle", "estimated"])
def test_distillation_target_and_entropy_carry_no_gradient(entropy):
    cac = make_cac(kl_entropy=entropy)
    f, labels = make_inputs()
    onehot = cac.one_hot(cac.downsample_labels(labels, (h, w)), f.dtype)
    g = torch.Generator().manual_seed(4)
    p_p = torch.randn(N, K, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    p_y = torch.randn(N, K, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    loss = cac.distillation_loss(p_p, p_y, onehot)
    grad_p_p, grad_p_y = torch.autograd.grad(loss, [p_p, p_y], allow_unused=True)
    assert grad_p_y is None or grad_p_y.abs().max() == 0
    # reference: the same loss written with explicitly detached target and weights
    valid = onehot.sum(1)
    q = F.softmax(p_y.detach(), 1)
    src = (p_y if entropy == "oracle" else p_p).detach()
    weight = -(F.softmax(src, 1) * F.log_softmax(src, 1)).sum(1) * valid
    per_pixel = -((0.5 * q + 0.5 * onehot) * F.log_softmax(p_p, 1)).sum(1)
    cw = onehot * weight[:, None]
    per_class = (cw * per_pixel[:, None]).sum((0, 2, 3)) / (cw.sum((0, 2, 3)) + 1e-12)
    present = onehot.sum((0, 2, 3)) > 0
    (grad_ref,) = torch.autograd.grad(per_class[present].mean(), p_p)
    close(grad_p_p, grad_ref)


# -------------------------------------------------------------------------------------------------
# Parameters, switches, errors
# -------------------------------------------------------------------------------------------------
def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("num_classes", [150, 171])
def test_parameter_overhead_d512_is_787456(num_classes):
    cac = ContextAwareClassifier(in_channels=512, num_classes=num_classes)
    linear = LinearClassifier(in_channels=512, num_classes=num_classes)
    assert count(cac) - count(linear) == 787_456


def test_ablation_switches():
    f, labels = make_inputs()
    # Table 4 (a)/(b): the original classifier alone; (b) with cosine and no bias
    cos_only = make_cac(context=False, static_similarity="cos")
    assert cos_only.theta_p is None and cos_only.theta_y is None and cos_only.conv.bias is None
    out = cos_only(f, labels)
    assert names(out) == {"main"}
    close(out.logits, slow_cos_logits(f, cos_only.weight))
    # Table 4 (c): dot-product context classifier
    dot = make_cac(context_similarity="dot")
    C = dot.weight
    A_p = slow_A("concat_proj", dot.theta_p, slow_Cp(f, slow_static(f, C, dot.conv.bias)), C)
    close(dot(f, labels).logits, torch.einsum("nkd,ndhw->nkhw", A_p, f))
    # Table 2 (c): no L_y^ce and no KL -> no oracle branch; (e): KL without L_y^ce -> theta_y frozen
    no_oracle = make_cac(oracle_loss=False, kl_weight=0.0)
    assert no_oracle.theta_y is None and names(no_oracle(f)) == {"main", "static"}
    frozen = make_cac(oracle_loss=False)
    assert not any(p.requires_grad for p in frozen.theta_y.parameters())
    assert names(frozen(f, labels)) == {"main", "static", "loss_cac_kl"}
    # Table 2 (b): no L^ce
    assert names(make_cac(static_loss=False)(f, labels)) == {"main", "oracle", "loss_cac_kl"}


@pytest.mark.parametrize(
    "key,value,match",
    [("FUSION", "concat", "MODEL.CAC.FUSION='concat'"), ("KL_ENTROPY", "p", "MODEL.CAC.KL_ENTROPY"),
     ("TAU", 0.0, "MODEL.CAC.TAU=0.0"), ("KL_SOFT_WEIGHT", 1.5, "MODEL.CAC.KL_SOFT_WEIGHT=1.5"),
     ("CONTEXT_SIMILARITY", "l2", "MODEL.CAC.CONTEXT_SIMILARITY")],
)
def test_bad_config_names_key_and_value(key, value, match):
    cfg = load_config("", ["MODEL.CLASSIFIER.NAME", "ContextAwareClassifier"])
    cfg.MODEL.CAC[key] = value
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        ContextAwareClassifier(cfg, 8, K)


def test_bad_labels_and_missing_targets_raise():
    cac = make_cac()
    f, labels = make_inputs()
    labels[0, 3, 3] = 7
    with pytest.raises(ValueError, match="label value 7"):
        cac(f, labels)
    with pytest.raises(ValueError, match="needs targets"):
        cac(f)


# -------------------------------------------------------------------------------------------------
# Inside the full PerPixelSegmentor, for every registered decode head
# -------------------------------------------------------------------------------------------------
HEADS = sorted(DECODE_HEAD_REGISTRY._obj_map)
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.DECODE_HEAD.CHANNELS", "32",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3",
    "MODEL.CLASSIFIER.NAME", "ContextAwareClassifier",
]


def test_fcn_head_is_covered():
    assert "FCNHead" in HEADS
    print(f"CAC end-to-end tests cover the decode heads: {HEADS}")


# Per-head settings that keep the tiny models tiny (applied only to heads that are registered).
HEAD_OPTS = {
    "CPHead": ["MODEL.DECODE_HEAD.CPNET.PRIOR_SIZE", "8"],  # the default 64 x 64 prior is slow on CPU
    "OCRHead": ["MODEL.DECODE_HEAD.IN_FEATURES", "['res4', 'res5']"],  # coarse map on res4, OCR on res5
}


def tiny_model(head, *extra, base=""):
    opts = TINY + ["MODEL.DECODE_HEAD.NAME", head]
    if head != "FCNHead":  # multi-level heads read several ResNet stages
        opts += ["MODEL.DECODE_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']"]
    opts += HEAD_OPTS.get(head, []) + list(extra)
    torch.manual_seed(0)
    return build_model(load_config(base, opts))


def tiny_batch(all_ignored=False):
    g = torch.Generator().manual_seed(0)
    palette = torch.tensor([[200.0, 30, 30], [30, 200, 30], [30, 30, 200]])
    batch = []
    for i in range(2):
        label = torch.zeros(50, 60, dtype=torch.long)  # not a multiple of the stride
        label[5 + 10 * i : 30, 10:40] = 1
        label[35:, 30 + 5 * i :] = 2
        image = palette[label].permute(2, 0, 1) + 20 * torch.randn(3, 50, 60, generator=g)
        label[0:3] = IGNORE
        batch.append({"image": image.clamp(0, 255), "sem_seg": torch.full_like(label, IGNORE) if all_ignored else label})
    return batch


def check_eval(model, batch):
    model.eval()
    with torch.no_grad():
        results = model([{"image": x["image"], "height": 25, "width": 30} for x in batch])
    assert [tuple(r["sem_seg"].shape) for r in results] == [(3, 25, 30)] * 2
    assert all(torch.isfinite(r["sem_seg"]).all() for r in results)


@pytest.mark.parametrize("head", HEADS)
def test_cac_in_per_pixel_segmentor_with_every_head(head):
    model = tiny_model(head)
    assert isinstance(model.classifier, ContextAwareClassifier)
    batch = tiny_batch()
    with EventStorage():
        losses = model(batch)
    assert {"loss_ce", "loss_static_ce", "loss_oracle_ce", "loss_cac_kl"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    for name in ("theta_p", "theta_y", "conv"):
        assert all(p.grad is not None for p in getattr(model.classifier, name).parameters()), name
    check_eval(model, batch)


def test_cac_fcn_all_ignored_batch_is_finite_and_training_reduces_loss():
    model = tiny_model("FCNHead")
    with EventStorage():
        ignored = model(tiny_batch(all_ignored=True))
        assert all(torch.isfinite(v) for v in ignored.values()), ignored
        sum(ignored.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()

        batch = tiny_batch()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        history = []
        for _ in range(8):
            loss = sum(model(batch).values())
            history.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    print(f"FCNHead + CAC: total loss {history[0]:.3f} -> {history[-1]:.3f}")
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < history[0] - 0.1
    check_eval(model, batch)


# -------------------------------------------------------------------------------------------------
# The four loss terms under the released code's rules, with the shipped CAC configs
# -------------------------------------------------------------------------------------------------
CAC_CONFIGS = ["ade20k/cac_upernet_r50.yaml", "coco_stuff/cac_deeplabv3plus_r50.yaml", "ade20k/cac_upernet_swin_t.yaml"]


def slow_bilinear_matrix(out_size, in_size, align_corners):
    """(out, in) matrix R with up = R @ x, written from PyTorch's bilinear sampling rule:
    source coordinate i * (in - 1) / (out - 1) (align_corners=True) or (i + 0.5) * in / out - 0.5
    clamped at 0 (align_corners=False); weights (1 - frac, frac) on floor and floor + 1."""
    R = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        if align_corners:
            src = i * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        else:
            src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        lo = min(math.floor(src), in_size - 1)
        hi = min(lo + 1, in_size - 1)
        frac = src - lo
        R[i, lo] += 1 - frac
        R[i, hi] += frac
    return R


def slow_ce(logits, labels, align_corners, normalization):
    """Per-pixel CE after a bilinear upsampling to the label size, summed over non-ignored pixels and
    divided by their number ("valid") or by all B*H*W label pixels ("all")."""
    n, _, hh, ww = logits.shape
    Rh = slow_bilinear_matrix(labels.shape[1], hh, align_corners)
    Rw = slow_bilinear_matrix(labels.shape[2], ww, align_corners)
    up = torch.einsum("Hh,nkhw,Ww->nkHW", Rh, logits, Rw)
    total, valid = 0.0, 0
    for b in range(n):
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                y = int(labels[b, i, j])
                if y == IGNORE:
                    continue
                total = total - torch.log_softmax(up[b, :, i, j], dim=0)[y]
                valid += 1
    denominator = labels.numel() if normalization == "all" else max(valid, 1)
    return total / denominator


def slow_Cp_differentiable(f, p):
    """Eq. 4 with loops, gradients flowing through softmax(p) as in the released code
    (:func:`slow_Cp` uses detached Python floats, for values only)."""
    n, d, hh, ww = f.shape
    rows = []
    for b in range(n):
        probs = [torch.softmax(p[b, :, i, j], dim=0) for i in range(hh) for j in range(ww)]
        feats = [f[b, :, i, j] for i in range(hh) for j in range(ww)]
        rows.append(torch.stack([sum(s[k] * x for s, x in zip(probs, feats)) / (sum(s[k] for s in probs) + 1e-12) for k in range(p.shape[1])]))
    return torch.stack(rows)


def slow_kl_differentiable(p_p, p_y, y, s=0.5):
    """Eq. 11 as released (class-wise, oracle entropy) with loops, differentiable in p_p; the
    target softmax(p_y) and the entropy weight are detached (:func:`slow_kl` gives values only)."""
    per_class = []
    for c in range(p_p.shape[1]):
        num, den = 0.0, 0.0
        for b, i, j in zip(*torch.nonzero(y == c, as_tuple=True)):
            q = torch.softmax(p_y[b, :, i, j].detach(), dim=0)
            t = s * q + (1 - s) * F.one_hot(torch.tensor(c), p_p.shape[1]).double()
            entropy = -(q * q.log()).sum()
            num = num + entropy * -(t * torch.log_softmax(p_p[b, :, i, j], dim=0)).sum()
            den = den + entropy
        if torch.is_tensor(num):
            per_class.append(num / (den + 1e-12))
    return sum(per_class) / len(per_class)


def released_terms(cac, f, labels):
    """The four terms of the released code, from the slow formulations: L_p^ce (align_corners
    False, sum / all pixels), L^ce and L_y^ce (align_corners True, mean over valid pixels), L_KL."""
    C = cac.weight
    y = slow_downsample(labels, f.shape[2], f.shape[3])
    p = slow_static(f, C, cac.conv.bias)
    # An absent class's oracle prototype is the detached classifier row (released rule, Eq. 1).
    p_y = slow_cos_logits(f, slow_A("concat_proj", cac.theta_y, slow_Cy(f, y, C.detach()), C))
    p_p = slow_cos_logits(f, slow_A("concat_proj", cac.theta_p, slow_Cp_differentiable(f, p), C))
    return {
        "loss_ce": slow_ce(p_p, labels, False, "all"),
        "loss_static_ce": slow_ce(p, labels, True, "valid"),
        "loss_oracle_ce": slow_ce(p_y, labels, True, "valid"),
        "loss_cac_kl": slow_kl_differentiable(p_p, p_y, y),
    }


@pytest.mark.parametrize("config", CAC_CONFIGS)
def test_shipped_config_gives_the_released_loss_terms_and_gradients(config):
    """All four terms, their sum and the gradients w.r.t. the feature, the classifier and both
    projectors equal the released rules; make_labels() has a fully ignored image, a label grid at a
    non-integer multiple of the feature grid and a class only on pixels the downsampling skips."""
    cfg = load_config(os.path.join(REPO, "configs", config), ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(K), "MODEL.CLASSIFIER.DROPOUT", "0.0"])
    assert cfg.MODEL.LOSS.CE_NORMALIZATION == "all" and not cfg.MODEL.ALIGN_CORNERS
    assert list(cfg.MODEL.DECODE_HEAD.LOSSES) == ["CrossEntropyLoss"] and list(cfg.MODEL.DECODE_HEAD.LOSS_WEIGHTS) == [1.0]
    torch.manual_seed(0)
    cac = build_classifier(cfg, D, K).double().train()
    with torch.no_grad():
        cac.conv.weight.normal_(0, 0.5)
        cac.conv.bias.normal_(0, 0.5)
    f, labels = make_inputs()
    assert (labels[2] == IGNORE).all() and H % h and W % w
    # make_inputs' all-zero feature vector has a cosine gradient of order 1/1e-12 (ill-conditioned
    # in any formulation): give it a value here, the finite forward at 0 is tested above.
    f[0, :, 1, 1] = torch.linspace(-1, 1, D, dtype=torch.float64)
    f.requires_grad_(True)
    got = SegmentationLoss(PixelLossSet.from_node(cfg, cfg.MODEL.DECODE_HEAD))(cac(f, labels), labels)
    want = released_terms(cac, f, labels)
    assert sorted(got) == sorted(want)
    for name in want:
        close(got[name], want[name])
    params = [f, cac.conv.weight, cac.conv.bias, *cac.theta_p.parameters(), *cac.theta_y.parameters()]
    got_grads = torch.autograd.grad(sum(got.values()), params)
    want_grads = torch.autograd.grad(sum(want.values()), params)
    for g_got, g_want in zip(got_grads, want_grads):
        close(g_got, g_want)


def test_all_ignored_image_halves_the_all_pixel_normalisation():
    """With one of two images fully ignored, "all" divides by twice the valid pixels, "valid" does not."""
    logits = torch.randn(2, K, h, w, dtype=torch.float64)
    labels = make_labels()[1:]  # image 1 (labelled) and image 2 (all ignore)
    labels[0][labels[0] == IGNORE] = 0
    valid = CrossEntropyLoss(ignore_value=IGNORE)
    every = CrossEntropyLoss(ignore_value=IGNORE, normalization="all")
    up = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    close(every(up, labels), valid(up, labels) / 2)
    close(every(up, labels), slow_ce(logits, labels, False, "all"))
    close(valid(up, labels), slow_ce(logits, labels, False, "valid"))
    with pytest.raises(ValueError, match="CE_NORMALIZATION='mean'"):
        CrossEntropyLoss(normalization="mean")


def test_per_pixel_segmentor_with_cac_returns_the_released_terms():
    """End to end: a PerPixelSegmentor built from the shipped CAC config (tiny sizes) scores the
    classifier's predictions with the released rules."""
    model = tiny_model("FCNHead", "MODEL.CLASSIFIER.DROPOUT", "0.0", "MODEL.AUX_HEAD.ENABLED", "False", base=os.path.join(REPO, "configs/ade20k/cac_base.yaml"))
    batch = tiny_batch()
    batch[1]["sem_seg"][:] = IGNORE  # one image entirely ignored
    with EventStorage():
        losses = model(batch)
        images, targets = model.preprocessor(batch)
        outputs = model.predict(images.tensor, targets)
    assert set(losses) == {"loss_ce", "loss_static_ce", "loss_oracle_ce", "loss_cac_kl"}
    valid = (targets != IGNORE).sum()
    ce = lambda x, align: F.cross_entropy(  # noqa: E731
        F.interpolate(x, targets.shape[-2:], mode="bilinear", align_corners=align), targets, ignore_index=IGNORE, reduction="sum"
    )
    close(losses["loss_ce"].double(), (ce(outputs.logits, False) / targets.numel()).double(), tol=1e-6)
    close(losses["loss_static_ce"].double(), (ce(outputs.predictions["static"].logits, True) / valid).double(), tol=1e-6)
    close(losses["loss_oracle_ce"].double(), (ce(outputs.predictions["oracle"].logits, True) / valid).double(), tol=1e-6)
    close(losses["loss_cac_kl"].double(), outputs.losses["loss_cac_kl"].double(), tol=1e-6)
