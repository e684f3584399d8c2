"""
CAR (segcls.modeling.regularizers.car) against a direct, slow, loop-based float64 formulation of
the rules in issue 6 ("Semantics"), plus gradients, label resizing, the plug-in contract
(no parameters, nothing at inference), the all-GPU centers under a 2-process gloo run, configs
and analysis tools.
"""
import math
import os
import warnings
from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data import MetadataCatalog
from detectron2.engine.launch import _find_free_port
from torch.nn import functional as F

from segcls.engine import load_config
from segcls.modeling import DECODE_HEAD_REGISTRY
from segcls.modeling.heads import HeadTail
from segcls.modeling.outputs import SegOutputs
from segcls.modeling.regularizers.car import (
    CARRegularizer,
    align_corners_nearest_index,
    class_centers,
    inter_c2c_loss,
    inter_c2p_loss,
    intra_c2p_loss,
    resize_labels,
)
from helpers import REPO, ImageToLogits, load_script, tiny_batch

warnings.filterwarnings("ignore", category=FutureWarning)
IGNORE = 255
LOSS_NAMES = ("loss_car_intra_c2p", "loss_car_inter_c2c", "loss_car_inter_c2p")


# -------------------------------------------------------------------------------------------------
# Loop-based float64 reference, written from the rules (not from the implementation)
# -------------------------------------------------------------------------------------------------
def ref_index(in_size, out_size):
    """src = round_half_away(dst * (in - 1) / (out - 1)); 0 when out == 1. Exact rationals."""
    if out_size == 1:
        return [0]
    out = []
    for dst in range(out_size):
        v = Fraction(dst * (in_size - 1), out_size - 1)
        whole = math.floor(v)
        out.append(whole + 1 if v - whole >= Fraction(1, 2) else whole)
    return out


def outputs_with(pixel_feature=None, **reg_features):
    """A head's outputs carrying these features (the regularizer's input type)."""
    return SegOutputs(pixel_feature=pixel_feature, reg_features=reg_features)


def ref_resize(labels, h, w):
    rows, cols = ref_index(labels.shape[1], h), ref_index(labels.shape[2], w)
    return [[[int(labels[n, rows[i], cols[j]]) for j in range(w)] for i in range(h)] for n in range(labels.shape[0])]


def ref_pool(x, rate):
    """Average pooling, kernel = stride = rate, partial edge windows averaged over their pixels."""
    N, C, H, W = x.shape
    h, w = -(-H // rate), -(-W // rate)
    rows = []
    for n in range(N):
        chans = []
        for c in range(C):
            grid = []
            for i in range(h):
                row = []
                for j in range(w):
                    cells = [x[n, c, a, b] for a in range(i * rate, min(H, i * rate + rate))
                             for b in range(j * rate, min(W, j * rate + rate))]
                    row.append(sum(cells) / len(cells))
                grid.append(torch.stack(row))
            chans.append(torch.stack(grid))
        rows.append(torch.stack(chans))
    return torch.stack(rows)


def ref_centers(x, lab, K, per_image):
    """{group: [K centers (C,)]}; group = image index, or None for the whole batch."""
    N, C, h, w = x.shape
    groups = [[n] for n in range(N)] if per_image else [list(range(N))]
    out = []
    for members in groups:
        centers = []
        for k in range(K):
            pix = [x[n, :, i, j] for n in members for i in range(h) for j in range(w) if lab[n][i][j] == k]
            centers.append(sum(pix) / len(pix) if pix else torch.zeros(C, dtype=x.dtype))
        out.append(centers)
    return out


def clip(v):
    return min(max(v, 1e-7), 1 - 1e-7) if not torch.is_tensor(v) else v.clamp(1e-7, 1 - 1e-7)


def softmax(values):
    m = max(float(v.detach()) for v in values)
    e = [torch.exp(v - m) for v in values]
    s = sum(e)
    return [v / s for v in e]


def ref_inputs(x, labels, pooling_rate, frozen):
    """The pooled feature, the feature the stop-gradient centers come from (default x.detach())
    and the labels resized to the feature grid."""
    if pooling_rate > 1:
        x = ref_pool(x, pooling_rate)
        frozen = None if frozen is None else ref_pool(frozen, pooling_rate)
    frozen = x.detach() if frozen is None else frozen
    return x, frozen, ref_resize(labels, x.shape[2], x.shape[3])


def reference_losses(x, labels, K, eps0=0.5, eps1=0.25, per_image=False, pooling_rate=1, frozen=None):
    """
    The three CAR losses, one scalar operation at a time. ``frozen``: the feature the centers
    treated as constants are computed from (centers in intra/inter-c2p, keys in c2c); default
    ``x.detach()`` (the specified stop-gradients). ``frozen=x`` gives the same values with no
    stop-gradient at all (used to show the gradient tests can fail).
    """
    x, frozen, lab = ref_inputs(x, labels, pooling_rate, frozen)
    N, C, h, w = x.shape
    mu_q = ref_centers(x, lab, K, per_image)
    mu_c = ref_centers(frozen, lab, K, per_image)
    g = (lambda n: n) if per_image else (lambda n: 0)
    # intra-c2p: mean of valid * |center - x| over N*h*w*C, squared, floored
    total = 0.0
    for n in range(N):
        for i in range(h):
            for j in range(w):
                y = lab[n][i][j]
                if y != IGNORE:
                    for c in range(C):
                        total = total + abs(mu_c[g(n)][y][c] - x[n, c, i, j])
    intra = torch.clamp((total / (N * h * w * C)) ** 2, min=1e-5)
    # inter-c2c: rows of softmax(q k^T / sqrt C), diagonal zeroed, thresholded, summed, clipped
    rows = []
    for grp in range(len(mu_q)):
        for a in range(K):
            sim = softmax([torch.dot(mu_q[grp][a], mu_c[grp][b]) / math.sqrt(C) for b in range(K)])
            rows.append(clip(sum(torch.clamp(sim[b] - eps0 / (K - 1), min=0) for b in range(K) if b != a)))
    c2c = (sum(rows) / len(rows)) ** 2
    # inter-c2p: logits x.mu_k, ||mu_y||^2 in the GT column, / sqrt C, softmax, non-GT excess summed
    pixels = []
    for n in range(N):
        for i in range(h):
            for j in range(w):
                y = lab[n][i][j]
                mu = mu_c[g(n)]
                logits = [
                    (torch.dot(mu[k], mu[k]) if k == y else torch.dot(x[n, :, i, j], mu[k])) / math.sqrt(C)
                    for k in range(K)
                ]
                sim = softmax(logits)
                pixels.append(clip(sum(torch.clamp(sim[k] - eps1 / (K - 1), min=0) for k in range(K) if k != y)))
    c2p = (sum(pixels) / len(pixels)) ** 2
    return dict(zip(LOSS_NAMES, (intra, c2c, c2p)))


def make_inputs(seed=0, N=2, C=3, h=5, w=4, H=11, W=9, K=6, present=(0, 1, 2, 4)):
    """Random features (N, C, h, w) float64 and labels (N, H, W): classes ``present`` only (3 and 5
    absent by default), ~20% ignore pixels; the label grid is larger than the feature grid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, h, w, generator=g, dtype=torch.float64)
    labels = torch.tensor(present)[torch.randint(len(present), (N, H, W), generator=g)]
    labels[torch.rand(N, H, W, generator=g) < 0.2] = IGNORE
    return x, labels


def car(K=6, **kwargs):
    return CARRegularizer(num_classes=K, ignore_value=IGNORE, **kwargs)


def assert_close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), **kw)


# -------------------------------------------------------------------------------------------------
# Label resizing
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_size,out_size", [(11, 5), (9, 4), (513, 65), (65, 33), (7, 7), (5, 9), (13, 1), (1, 3)])
def test_align_corners_index_matches_loop(in_size, out_size):
    assert align_corners_nearest_index(in_size, out_size).tolist() == ref_index(in_size, out_size)


def test_resize_labels_odd_sizes_and_differs_from_default_nearest():
    labels = torch.randint(0, 50, (2, 13, 11))
    out = resize_labels(labels, (6, 5))
    assert out.tolist() == ref_resize(labels, 6, 5)
    # A half rounds away from zero (4 -> 3: dst 1 maps to 1.5 -> 2); not PyTorch's default 'nearest'.
    assert align_corners_nearest_index(4, 3).tolist() == [0, 2, 3]
    default = F.interpolate(labels[:, None].float(), size=(6, 5), mode="nearest")[:, 0].long()
    assert not torch.equal(out, default)


# -------------------------------------------------------------------------------------------------
# Losses vs the loop reference
# -------------------------------------------------------------------------------------------------
CASES = {
    "batch": dict(),
    "image": dict(centers="image"),
    "eps_0.25": dict(inter_c2c_eps=0.25, inter_c2p_eps=0.1),
    "pooled": dict(pooling_rate=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_losses_match_loop_reference(case):
    kwargs = CASES[case]
    x, labels = make_inputs(seed=1)
    got = car(**kwargs)(outputs_with(reg_feature=x), labels)
    want = reference_losses(
        x,
        labels,
        6,
        eps0=kwargs.get("inter_c2c_eps", 0.5),
        eps1=kwargs.get("inter_c2p_eps", 0.25),
        per_image=kwargs.get("centers") == "image",
        pooling_rate=kwargs.get("pooling_rate", 1),
    )
    assert sorted(got) == sorted(LOSS_NAMES)
    for name in LOSS_NAMES:
        assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)
        assert got[name] > 1e-4, name  # not a trivially clipped value


def test_single_class_batch_and_intra_floor():
    x, labels = make_inputs(seed=2, present=(3,))
    got = car()(outputs_with(reg_feature=x), labels)
    want = reference_losses(x, labels, 6)
    for name in LOSS_NAMES:
        assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)
    # Every pixel equal to its class center: intra-c2p is floored at 1e-5.
    constant = torch.ones(2, 3, 5, 4, dtype=torch.float64)
    assert_close(car()(outputs_with(reg_feature=constant), labels)["loss_car_intra_c2p"], 1e-5, rtol=0, atol=0)


def test_weights_switches_and_total():
    x, labels = make_inputs(seed=3)
    base = car()(outputs_with(reg_feature=x), labels)
    weighted = car(intra_weight=2.0, inter_weight=0.5)(outputs_with(reg_feature=x), labels)
    assert_close(weighted["loss_car_intra_c2p"], 2 * base["loss_car_intra_c2p"])
    assert_close(weighted["loss_car_inter_c2c"], 0.5 * base["loss_car_inter_c2c"])
    assert_close(weighted["loss_car_inter_c2p"], 0.5 * base["loss_car_inter_c2p"])
    only_c2c = car(intra_c2p=False, inter_c2p=False)(outputs_with(reg_feature=x), labels)
    assert list(only_c2c) == ["loss_car_inter_c2c"]


def test_absent_class_center_is_exactly_zero_and_ignored_pixels_count_nowhere():
    x, labels = make_inputs(seed=4)
    x = x.flatten(2).transpose(1, 2)
    lab = resize_labels(labels, (5, 4)).flatten(1)
    onehot = F.one_hot(lab.clamp(max=5), 6).double() * (lab != IGNORE)[..., None]
    centers, counts = class_centers(x, onehot)
    assert torch.equal(centers[0, 3], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(centers[0, 5], torch.zeros(3, dtype=torch.float64))
    assert counts.sum() == (lab != IGNORE).sum()


# -------------------------------------------------------------------------------------------------
# Gradients and stop-gradient semantics
# -------------------------------------------------------------------------------------------------
def test_gradcheck_loss_functions_with_constant_centers():
    x, labels = make_inputs(seed=5, N=1, h=3, w=3, H=5, W=5, K=4, present=(0, 1, 2))
    lab = resize_labels(labels, (3, 3)).flatten(1)
    onehot = F.one_hot(lab.clamp(max=3), 4).double() * (lab != IGNORE)[..., None]
    feats = x.flatten(2).transpose(1, 2).contiguous()
    centers, _ = class_centers(feats, onehot)
    feats.requires_grad_(True)
    queries = centers.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: intra_c2p_loss(f, onehot, centers), (feats,))
    assert torch.autograd.gradcheck(lambda f: inter_c2p_loss(f, onehot, centers, 0.25), (feats,))
    # c2c with keys detached: d/dq of the module == numerical d/dq with the keys held fixed.
    analytic = torch.autograd.grad(inter_c2c_loss(queries, 0.5), queries)[0]
    numeric = torch.zeros_like(queries)
    for idx in range(queries.numel()):
        step = torch.zeros_like(queries).view(-1)
        step[idx] = 1e-6
        step = step.view_as(queries)

        def c2c_fixed_keys(q):
            sim = torch.softmax(q @ centers.transpose(-1, -2) / math.sqrt(3), -1) * (1 - torch.eye(4, dtype=q.dtype))
            return (sim - 0.5 / 3).clamp(min=0).sum(-1).clamp(1e-7, 1 - 1e-7).mean().square()

        numeric.view(-1)[idx] = (c2c_fixed_keys(centers + step) - c2c_fixed_keys(centers - step)) / 2e-6
    assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)
    assert analytic.abs().sum() > 0


@pytest.mark.parametrize("per_image", [False, True])
def test_feature_gradients_follow_the_stop_gradients(per_image):
    """d(loss)/dx of the module == gradient of the loop reference with the frozen parts computed
    from a constant copy of x (centers in intra/inter-c2p, keys in c2c), checked numerically by
    gradcheck on that reference; and != the gradient with no stop-gradient (the test can fail)."""
    x0, labels = make_inputs(seed=6, N=2, C=2, h=3, w=3, H=7, W=5, K=4, present=(0, 1, 3))
    centers = "image" if per_image else "batch"
    for name in LOSS_NAMES:
        x = x0.clone().requires_grad_(True)
        got = torch.autograd.grad(car(K=4, centers=centers)(outputs_with(reg_feature=x), labels)[name], x)[0]
        frozen = x0.clone()
        x = x0.clone().requires_grad_(True)
        want = torch.autograd.grad(reference_losses(x, labels, 4, per_image=per_image, frozen=frozen)[name], x)[0]
        assert_close(got, want, rtol=1e-8, atol=1e-12)
        assert got.abs().sum() > 0, name
        x = x0.clone().requires_grad_(True)
        full = torch.autograd.grad(reference_losses(x, labels, 4, per_image=per_image, frozen=x)[name], x)[0]
        assert not torch.allclose(got, full, rtol=1e-3, atol=1e-8), f"{name}: stop-gradient makes no difference"
    x = x0[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: sum(reference_losses(v, labels[:1], 4, per_image=per_image, frozen=x0[:1]).values()), (x,)
    )


# -------------------------------------------------------------------------------------------------
# INTRA_REMOVE_MAX (the released implementation's intra_class_loss_remove_max)
# -------------------------------------------------------------------------------------------------
def ref_intra_remove_max(x, labels, K, per_image=False, pooling_rate=1, frozen=None):
    """L_intra-c2p with the largest D of each (image, channel) dropped: D[n][p][c] = valid *
    |center - x| one element at a time, each (n, c) list of the P values literally sorted, the last
    (largest) dropped, the mean over N * C * (P - 1) (ignored pixels' zeros included), squared,
    floored. ``frozen`` as in :func:`reference_losses`."""
    x, frozen, lab = ref_inputs(x, labels, pooling_rate, frozen)
    N, C, h, w = x.shape
    mu = ref_centers(frozen, lab, K, per_image)
    g = (lambda n: n) if per_image else (lambda n: 0)
    total = 0.0
    for n in range(N):
        for c in range(C):
            column = []
            for i in range(h):
                for j in range(w):
                    y = lab[n][i][j]
                    column.append(abs(mu[g(n)][y][c] - x[n, c, i, j]) if y != IGNORE else x.new_zeros(()))
            column = sorted(column, key=lambda v: float(v.detach()))
            for value in column[:-1]:
                total = total + value
    return torch.clamp((total / (N * C * (h * w - 1))) ** 2, min=1e-5)


def _flat_onehot(x, labels, K):
    N, C, h, w = x.shape
    lab = resize_labels(labels, (h, w)).flatten(1)
    onehot = F.one_hot(lab.clamp(max=K - 1), K).to(x.dtype) * (lab != IGNORE)[..., None]
    return x.flatten(2).transpose(1, 2).contiguous(), onehot


REMOVE_MAX_CASES = {
    "batch": dict(),
    "image": dict(centers="image"),
    "pooled": dict(pooling_rate=2),
    "image_all_ignored": dict(all_ignored=True),  # image 1 fully ignored: its (n, c) max is a 0
}


@pytest.mark.parametrize("case", sorted(REMOVE_MAX_CASES))
def test_intra_remove_max_matches_sorting_loop_reference(case):
    kwargs = dict(REMOVE_MAX_CASES[case])
    x, labels = make_inputs(seed=21)  # ~20% ignored pixels, classes 3 and 5 absent
    if kwargs.pop("all_ignored", False):
        labels[1] = IGNORE
    got = car(intra_remove_max=True, **kwargs)(outputs_with(reg_feature=x), labels)
    want = ref_intra_remove_max(
        x, labels, 6, per_image=kwargs.get("centers") == "image", pooling_rate=kwargs.get("pooling_rate", 1)
    )
    assert_close(got["loss_car_intra_c2p"], want, rtol=1e-10, atol=1e-12)
    # The option changes the value (so the test can fail), and only the intra-c2p term.
    off = car(**kwargs)(outputs_with(reg_feature=x), labels)
    assert not torch.allclose(got["loss_car_intra_c2p"], off["loss_car_intra_c2p"], rtol=1e-3)
    for name in ("loss_car_inter_c2c", "loss_car_inter_c2p"):
        assert torch.equal(got[name], off[name]), name


@pytest.mark.parametrize("per_image", [False, True])
def test_intra_remove_max_gradients(per_image):
    # Function level, constant centers: gradcheck (float64) with the option on.
    x, labels = make_inputs(seed=22, N=2, h=3, w=3, H=5, W=5, K=4, present=(0, 1, 2))
    feats, onehot = _flat_onehot(x, labels, 4)
    centers, _ = class_centers(feats, onehot, per_image)
    feats.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: intra_c2p_loss(f, onehot, centers, remove_max=True), (feats,))
    # Module level: d/dx == the gradient of the sorting reference with constant centers; one
    # element per (n, c) (the dropped maximum) gets exactly no gradient.
    x0, labels = make_inputs(seed=23, N=2, C=2, h=3, w=3, H=7, W=5, K=4, present=(0, 1, 3))
    centers = "image" if per_image else "batch"
    x = x0.clone().requires_grad_(True)
    got = torch.autograd.grad(car(K=4, centers=centers, intra_remove_max=True)(outputs_with(reg_feature=x), labels)
                              ["loss_car_intra_c2p"], x)[0]  # fmt: skip
    x = x0.clone().requires_grad_(True)
    want = torch.autograd.grad(ref_intra_remove_max(x, labels, 4, per_image=per_image, frozen=x0.clone()), x)[0]
    assert_close(got, want, rtol=1e-8, atol=1e-12)
    assert got.abs().sum() > 0
    feats, onehot = _flat_onehot(x0, labels, 4)
    mu, _ = class_centers(feats, onehot, per_image)
    distance = onehot.sum(-1, keepdim=True) * (onehot @ mu - feats).abs()  # D (N, P, C)
    grad = got.flatten(2).transpose(1, 2)
    largest = distance.argmax(1, keepdim=True)
    assert torch.equal(grad.gather(1, largest), torch.zeros_like(largest, dtype=grad.dtype))
    others = (distance > 0).scatter(1, largest, False)
    assert (grad[others] != 0).all() and others.sum() > 0


def test_intra_remove_max_off_is_todays_value():
    """Off (the default) is bitwise the existing L_intra-c2p: the same formula as before the option."""
    for dtype in (torch.float64, torch.float32):
        x, labels = make_inputs(seed=24)
        x = x.to(dtype)
        feats, onehot = _flat_onehot(x, labels, 6)
        centers, _ = class_centers(feats, onehot)
        valid = onehot.sum(-1, keepdim=True)
        before = (valid * (onehot @ centers - feats).abs()).mean().square().clamp(min=1e-5)
        assert torch.equal(intra_c2p_loss(feats, onehot, centers), before)
        assert torch.equal(intra_c2p_loss(feats, onehot, centers, remove_max=False), before)
        default = car()(outputs_with(reg_feature=x), labels)
        explicit = car(intra_remove_max=False)(outputs_with(reg_feature=x), labels)
        assert torch.equal(default["loss_car_intra_c2p"], before)
        for name in LOSS_NAMES:
            assert torch.equal(default[name], explicit[name]), name
    # The floor still applies with the option on; a 1-pixel feature has no (P - 1) mean.
    constant = torch.ones(2, 3, 5, 4, dtype=torch.float64)
    out = car(intra_remove_max=True)(outputs_with(reg_feature=constant), labels)
    assert_close(out["loss_car_intra_c2p"], 1e-5, rtol=0, atol=0)
    with pytest.raises(ValueError, match="MODEL.CAR.INTRA_REMOVE_MAX"):
        intra_c2p_loss(feats[:, :1], onehot[:, :1], centers, remove_max=True)


def test_intra_remove_max_config_reaches_the_module():
    cfg = load_config("", TINY_MODEL)
    assert cfg.MODEL.CAR.INTRA_REMOVE_MAX is False
    regs = ["MODEL.REGULARIZERS.NAMES", '["CARRegularizer"]']
    default = build_tiny(regs).regularizers[0]
    on = build_tiny(regs + ["MODEL.CAR.INTRA_REMOVE_MAX", "True"]).regularizers[0]
    assert default.intra_remove_max is False and on.intra_remove_max is True
    assert "intra_remove_max=True" in on.extra_repr() and "intra_remove_max=False" in default.extra_repr()
    x, labels = make_inputs(seed=25, K=5, present=(0, 1, 2, 4))
    assert_close(on(outputs_with(reg_feature=x), labels)["loss_car_intra_c2p"], ref_intra_remove_max(x, labels, 5))


# -------------------------------------------------------------------------------------------------
# Options: moving average, feature keys, errors
# -------------------------------------------------------------------------------------------------
def test_moving_average_centers_and_checkpoint():
    reg = car(moving_average_decay=0.9)
    x1, labels1 = make_inputs(seed=7)
    x2, labels2 = make_inputs(seed=8, present=(0, 5))

    def batch_centers(x, labels):
        lab = ref_resize(labels, 5, 4)
        return torch.stack(ref_centers(x, lab, 6, False)[0])

    mu1, mu2 = batch_centers(x1, labels1), batch_centers(x2, labels2)
    reg(outputs_with(reg_feature=x1), labels1)
    expected = 0.1 * mu1  # running centers start at 0; classes 3 and 5 absent stay 0
    assert_close(reg.running_centers_0, expected)
    x2.requires_grad_(True)
    out = reg(outputs_with(reg_feature=x2), labels2)
    present = torch.zeros(6, 1, dtype=torch.float64)
    present[resize_labels(labels2, (5, 4)).unique()[:-1]] = 1  # drop IGNORE (the largest value)
    assert present.sum() == 2
    expected_before = expected.clone()
    expected = present * (0.9 * expected + 0.1 * mu2) + (1 - present) * expected
    assert_close(reg.running_centers_0, expected)
    x2f = x2.detach().flatten(2).transpose(1, 2)
    lab = resize_labels(labels2, (5, 4)).flatten(1)
    onehot = F.one_hot(lab.clamp(max=5), 6).double() * (lab != IGNORE)[..., None]
    assert_close(out["loss_car_intra_c2p"], intra_c2p_loss(x2f, onehot, expected[None]))
    assert_close(out["loss_car_inter_c2c"], inter_c2c_loss(expected[None], 0.5))
    assert_close(out["loss_car_inter_c2p"], inter_c2p_loss(x2f, onehot, expected[None], 0.25))
    # Gradients flow through the current batch's share (1 - decay) * mu_batch of the c2c queries.
    (grad,) = torch.autograd.grad(out["loss_car_inter_c2c"], x2)
    x2f = x2f.clone().requires_grad_(True)
    mu, _ = class_centers(x2f, onehot)
    mixed = torch.where(present.bool()[None], 0.9 * expected_before + 0.1 * mu, expected_before)
    (want,) = torch.autograd.grad(inter_c2c_loss(mixed, 0.5), x2f)
    assert_close(grad.flatten(2).transpose(1, 2), want)
    assert grad.abs().sum() > 0
    fresh = car(moving_average_decay=0.9)
    fresh.load_state_dict(reg.state_dict())
    assert torch.equal(fresh.running_centers_0, reg.running_centers_0)


def test_feature_keys_suffixes_and_fallback():
    x1, labels = make_inputs(seed=9)
    x2, _ = make_inputs(seed=10, C=5)
    single = car()
    both = car(feature_keys=["reg_feature_pam", "reg_feature_cam"])(
        outputs_with(reg_feature_pam=x1, reg_feature_cam=x2, pixel_feature=x2), labels
    )
    assert sorted(both) == sorted(n + s for n in LOSS_NAMES for s in ("_pam", "_cam"))
    for name, value in single(outputs_with(reg_feature=x1), labels).items():
        assert_close(both[name + "_pam"], value)
    for name, value in single(outputs_with(pixel_feature=x2), labels).items():  # no projection: fallback
        assert_close(both[name + "_cam"], value)
    with pytest.raises(KeyError, match="MODEL.CAR.FEATURE_KEYS.*reg_feature_pam"):
        car(feature_keys=["reg_feature_pam"])(outputs_with(pixel_feature=x1), labels)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(centers="pixel"), "MODEL.CAR.CENTERS='pixel'"),
        (dict(pooling_rate=0), "MODEL.CAR.POOLING_RATE=0"),
        (dict(moving_average_decay=1.0), "MODEL.CAR.MOVING_AVERAGE_DECAY=1.0"),
        (dict(moving_average_decay=0.9, centers="image"), "MODEL.CAR.MOVING_AVERAGE_DECAY=0.9"),
        (dict(intra_c2p=False, inter_c2c=False, inter_c2p=False), "MODEL.CAR.INTRA_C2P"),
        (dict(inter_c2c_eps=-1.0), "MODEL.CAR.INTER_C2C_EPS=-1.0"),
        (dict(K=1), "NUM_CLASSES=1"),
        (dict(feature_keys=[]), "MODEL.CAR.FEATURE_KEYS"),
    ],
)
def test_bad_config_errors_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[")):
        car(**kwargs)


def test_bad_labels_and_shapes():
    x, labels = make_inputs(seed=11)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels \[7\].*NUM_CLASSES=6"):
        car()(outputs_with(reg_feature=x), labels)
    with pytest.raises(ValueError, match="same N"):
        car()(outputs_with(reg_feature=x), labels[:1])


# -------------------------------------------------------------------------------------------------
# 2 processes over gloo: centers == single-process centers of the concatenated batch
# -------------------------------------------------------------------------------------------------
def _flat_inputs():
    x, labels = make_inputs(seed=12, N=4)
    lab = resize_labels(labels, (5, 4)).flatten(1)
    onehot = F.one_hot(lab.clamp(max=5), 6).double() * (lab != IGNORE)[..., None]
    return x.flatten(2).transpose(1, 2).contiguous(), onehot


def _distributed_worker(rank, world, dist_url, out_dir):
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=dist_url, rank=rank, world_size=world)
    x, onehot = _flat_inputs()
    n = x.shape[0] // world
    x, onehot = x[rank * n : (rank + 1) * n].clone().requires_grad_(True), onehot[rank * n : (rank + 1) * n]
    centers, counts = class_centers(x, onehot)
    c2c = inter_c2c_loss(centers, 0.5)
    (grad,) = torch.autograd.grad(c2c, x)
    result = dict(centers=centers.detach(), counts=counts, c2c=c2c.detach(), grad=grad)
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_process_gloo_centers_equal_concatenated_batch(tmp_path):
    # fork: the children inherit the imported modules (spawning re-imports torch and detectron2).
    dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(_distributed_worker, args=(2, dist_url, str(tmp_path)), nprocs=2, start_method="fork")
    x, onehot = _flat_inputs()
    x.requires_grad_(True)
    centers, counts = class_centers(x, onehot)
    c2c = inter_c2c_loss(centers, 0.5)
    (grad,) = torch.autograd.grad(c2c, x)
    for rank in range(2):
        res = torch.load(tmp_path / f"{rank}.pt")
        assert_close(res["centers"], centers.detach(), rtol=1e-12, atol=1e-12)
        assert torch.equal(res["counts"], counts)
        assert_close(res["c2c"], c2c.detach(), rtol=1e-12, atol=1e-14)
        # The all-reduce is differentiable: each rank's gradient is world_size x its share of the
        # single-process gradient, so DDP's averaging reproduces the single-process gradient.
        assert_close(res["grad"] / 2, grad[rank * 2 : rank * 2 + 2], rtol=1e-10, atol=1e-14)
    assert (counts[0] > 0).sum() < 6  # absent classes are part of the test


# -------------------------------------------------------------------------------------------------
# Plug-in contract on a full model: CAR-on vs CAR-off
# -------------------------------------------------------------------------------------------------
TINY_MODEL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.DECODE_HEAD.CHANNELS", "32",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5",
]  # fmt: skip


def build_tiny(opts=(), seed=0):
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    return build_model(load_config("", TINY_MODEL + list(opts)))


def test_car_adds_no_parameters_no_inference_cost(monkeypatch):
    """Same architecture flags (CAR's projection + "A"), same seed: CAR-on and CAR-off models have
    identical parameters, inference outputs and inference FLOPs; CAR runs in training only."""
    from fvcore.nn import FlopCountAnalysis

    arch = ["MODEL.DECODE_HEAD.REG_PROJECTION", "True", "MODEL.DECODE_HEAD.LAST_CONV_KERNEL", "1"]
    off = build_tiny(arch)
    on = build_tiny(arch + ["MODEL.REGULARIZERS.NAMES", '["CARRegularizer"]'])
    assert isinstance(on.regularizers[0], CARRegularizer) and len(off.regularizers) == 0
    assert sum(p.numel() for p in on.parameters()) == sum(p.numel() for p in off.parameters())
    sd_on, sd_off = on.state_dict(), off.state_dict()
    assert sd_on.keys() == sd_off.keys() and all(torch.equal(sd_on[k], sd_off[k]) for k in sd_on)

    calls = []
    forward = CARRegularizer.forward
    monkeypatch.setattr(CARRegularizer, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    on.eval(), off.eval()
    with torch.no_grad():
        out_on, out_off = on(tiny_batch()), off(tiny_batch())
    assert calls == []
    for a, b in zip(out_on, out_off):
        assert torch.equal(a["sem_seg"], b["sem_seg"])
    image = tiny_batch(with_labels=False)[0]["image"]
    flops = [FlopCountAnalysis(ImageToLogits(m), image).unsupported_ops_warnings(False).total() for m in (on, off)]
    assert flops[0] == flops[1] > 0

    # Training: the same pixel losses (same seed for dropout) plus the three CAR losses.
    on.train(), off.train()
    torch.manual_seed(1)
    losses_on = on(tiny_batch())
    torch.manual_seed(1)
    losses_off = off(tiny_batch())
    assert calls == [1]
    assert set(losses_on) == set(losses_off) | set(LOSS_NAMES)
    for key, value in losses_off.items():
        assert torch.equal(losses_on[key], value), key
    sum(losses_on.values()).backward()
    head_params = [p for n, p in on.decode_head.named_parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head_params)


# -------------------------------------------------------------------------------------------------
# Configs: every yaml this module ships loads; those whose decode head is registered build
# -------------------------------------------------------------------------------------------------
CONFIG_ROOT = os.path.join(REPO, "configs")
CAR_CONFIGS = sorted(
    os.path.relpath(os.path.join(d, f), CONFIG_ROOT)
    for d, _, files in os.walk(os.path.join(CONFIG_ROOT, "car"))
    for f in files
    if f.endswith(".yaml")
) + ["synthetic_context/fcn_r18_car.yaml"]
PAPER_MODELS = ["fcn_r50", "fcn_r101", "deeplabv3_r50", "deeplabv3_r101", "nonlocal_r50", "nonlocal_r101",
                "ccnet_r50", "ccnet_r101", "danet_r101", "cpnet_r101", "ocr_hrnet48", "upernet_swin_t",
                "upernet_swin_l", "caa_effb5"]  # fmt: skip
# Table 2's "§": COCO-Stuff-10k runs with eps0 = 0.25.
SECTION_RUNS = {f"car/coco_stuff_10k/{m}_car.yaml" for m in ("fcn_r50", "fcn_r101", "nonlocal_r50", "cpnet_r101",
                                                             "upernet_swin_t")}  # fmt: skip
# Keys by which a *_car.yaml may differ from its baseline, and a COCO-Stuff config from its twin.
CAR_KEYS = (
    "MODEL.CAR.",
    "MODEL.REGULARIZERS.",
    "MODEL.DECODE_HEAD.REG_PROJECTION",
    "MODEL.DECODE_HEAD.LAST_CONV_KERNEL",
)
DATASET_KEYS = ("DATASETS.", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "MODEL.CAR.INTER_C2C_EPS")


def _base_chain_exists(rel):
    """The yaml and all its _BASE_ files exist (fcn_r18_car.yaml's base comes with the synthetic
    benchmark)."""
    import yaml

    path = os.path.join(CONFIG_ROOT, rel)
    while True:
        if not os.path.isfile(path):
            return False
        with open(path) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if not base:
            return True
        path = os.path.join(os.path.dirname(path), base)


def _cfg(rel, opts=()):
    return load_config(os.path.join(CONFIG_ROOT, rel), list(opts))


def _flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _diff(a, b):
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa if fa[k] != fb[k]}


LOADABLE_CONFIGS = [c for c in CAR_CONFIGS if _base_chain_exists(c)]
PAPER_CONFIGS = [c for c in LOADABLE_CONFIGS if c.startswith("car/") and "/Base-" not in c]
# Built: every model-defining config (the Pascal Context CAR configs and the synthetic one) whose
# decode head is registered. Baselines differ from them only in CAR_KEYS, COCO-Stuff configs from
# their Pascal Context twins only in DATASET_KEYS (both checked below), Table 1 / thesis configs
# only in CAR_KEYS: building those too would repeat the same models (and cost a minute).
BUILD_CONFIGS = [
    c for c in LOADABLE_CONFIGS
    if (c.startswith("car/pascal_context_59/") and c.count("/") == 2 and c.endswith("_car.yaml"))
    or c.startswith("synthetic_context/")
]  # fmt: skip
BUILD_CONFIGS = [c for c in BUILD_CONFIGS if _cfg(c).MODEL.DECODE_HEAD.NAME in DECODE_HEAD_REGISTRY]


def test_config_inventory():
    """The paper's experiments are all there: Table 2 (baseline and CAR, both datasets), Table 1
    (both halves), thesis Tables 4.2-4.3; every Table 2 CAR model builds in this tree."""
    for dataset in ("pascal_context_59", "coco_stuff_10k"):
        for model in PAPER_MODELS:
            for suffix in ("", "_car"):
                assert f"car/{dataset}/{model}{suffix}.yaml" in LOADABLE_CONFIGS
    assert len([c for c in LOADABLE_CONFIGS if "/table1/" in c]) == 16
    assert len([c for c in LOADABLE_CONFIGS if "/thesis/" in c]) == 4
    assert {f"car/pascal_context_59/{m}_car.yaml" for m in PAPER_MODELS} <= set(BUILD_CONFIGS)


@pytest.mark.parametrize("rel", PAPER_CONFIGS)
def test_paper_config_recipe(rel):
    cfg = _cfg(rel)
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY, s.MAX_ITER) == (16, 0.01, 0.9, 1e-4, 30000)
    assert s.LR_SCHEDULER_NAME == "WarmupPolyLR" and s.OPTIMIZER == "SGD" and list(cfg.INPUT.CROP.SIZE) == [513, 513]
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_dilated_backbone":
        assert cfg.MODEL.RESNETS.OUTPUT_STRIDE == 8
    elif not cfg.MODEL.TIMM.NAME.startswith(("swin", "hrnet")):  # transformers and HRNet: 32
        assert cfg.MODEL.TIMM.OUTPUT_STRIDE == 8
    coco = "coco_stuff_10k" in rel
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == (171 if coco else 59)
    assert cfg.DATASETS.TRAIN == (("coco_stuff_10k_sem_seg_train",) if coco else ("pascal_context_59_sem_seg_train",))
    assert cfg.DATASETS.TEST == (("coco_stuff_10k_sem_seg_test",) if coco else ("pascal_context_59_sem_seg_val",))
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert len(MetadataCatalog.get(name).stuff_classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, name
    if rel.endswith("_car.yaml") and "/table1/" not in rel:
        assert list(cfg.MODEL.REGULARIZERS.NAMES) == ["CARRegularizer"] and cfg.MODEL.DECODE_HEAD.REG_PROJECTION
        assert cfg.MODEL.DECODE_HEAD.LAST_CONV_KERNEL == 1
        assert cfg.MODEL.CAR.INTER_C2C_EPS == (0.25 if rel in SECTION_RUNS else 0.5)
        diff = _diff(cfg, _cfg(rel.replace("_car.yaml", ".yaml")))
        assert diff and all(k.startswith(CAR_KEYS) for k in diff), diff
    if "/table1/" in rel or "/thesis/" in rel:
        diff = _diff(cfg, _cfg("car/pascal_context_59/nonlocal_r50_car.yaml"))
        diff2 = _diff(cfg, _cfg("car/pascal_context_59/upernet_swin_t_car.yaml"))
        assert all(k.startswith(CAR_KEYS) for k in diff) or all(k.startswith(CAR_KEYS) for k in diff2)
    if coco:
        diff = _diff(cfg, _cfg(rel.replace("coco_stuff_10k", "pascal_context_59")))
        assert all(k.startswith(DATASET_KEYS) for k in diff), diff


@pytest.mark.parametrize("rel", BUILD_CONFIGS)
def test_config_builds(rel):
    from detectron2.modeling import build_model

    cfg = _cfg(rel, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert [type(r).__name__ for r in model.regularizers] == list(cfg.MODEL.REGULARIZERS.NAMES)
    tails = [m for m in model.decode_head.modules() if isinstance(m, HeadTail)]
    assert tails, "the decode head has no HeadTail, where CAR's projection and change 'A' attach"
    for tail in tails:
        assert (tail.projection is not None) == cfg.MODEL.DECODE_HEAD.REG_PROJECTION
        assert tail.conv.kernel_size == (cfg.MODEL.DECODE_HEAD.LAST_CONV_KERNEL,) * 2


# CAR trains with every per-pixel head of the paper (tiny ResNet-18, one training step).
HEAD_OPTS = {
    "FCNHead": [],
    "ASPPHead": [],
    "NonLocalHead": [],
    "CCHead": [],
    "DAHead": ["MODEL.CAR.FEATURE_KEYS", '["reg_feature_pam", "reg_feature_cam"]'],
    "CPHead": ["MODEL.DECODE_HEAD.CPNET.PRIOR_SIZE", "6"],
    "OCRHead": ["MODEL.DECODE_HEAD.IN_FEATURES", '["res4", "res5"]', "MODEL.CAR.POOLING_RATE", "2"],
    "UPerHead": ["MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res3", "res4", "res5"]', "MODEL.CAR.POOLING_RATE", "2"],
    "CAAHead": [],
}


@pytest.mark.parametrize("head", [h for h in HEAD_OPTS if h in DECODE_HEAD_REGISTRY])
def test_car_trains_with_every_head(head):
    opts = ["MODEL.DECODE_HEAD.NAME", head, "MODEL.DECODE_HEAD.REG_PROJECTION", "True",
            "MODEL.DECODE_HEAD.LAST_CONV_KERNEL", "1", "MODEL.REGULARIZERS.NAMES", '["CARRegularizer"]']
    model = build_tiny(opts + HEAD_OPTS[head]).train()
    losses = model(tiny_batch())
    suffixes = ["_pam", "_cam"] if head == "DAHead" else [""]
    car = {n + s for n in LOSS_NAMES for s in suffixes}
    assert car <= set(losses) and all(torch.isfinite(losses[k]) and losses[k] > 0 for k in car)
    sum(losses.values()).backward()
    projections = [m.projection for m in model.decode_head.modules() if isinstance(m, HeadTail)]
    assert projections and all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in projections)


# -------------------------------------------------------------------------------------------------
# Analysis tools (Figs. 4 and 5) on a random-init tiny model and a generated dataset
# -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def car_tiny_dataset(tmp_path_factory):
    """3 images (36x44, 40x48, 33x41) with labels of classes 0-2 and ignore; class 3 absent."""
    import numpy as np
    from PIL import Image

    from segcls.data.datasets import register_sem_seg

    root = tmp_path_factory.mktemp("car_tiny")
    rng = np.random.default_rng(0)
    for d in ("images", "labels"):
        (root / d).mkdir()
    for i, (h, w) in enumerate(((36, 44), (40, 48), (33, 41))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        label = np.repeat(np.arange(w)[None] * 3 // w, h, axis=0).astype(np.uint8)  # three vertical bands
        label[:3] = IGNORE
        Image.fromarray(label).save(root / "labels" / f"{i}.png")
    name = f"car_tiny_{os.getpid()}"
    meta = dict(stuff_classes=["a", "b", "c", "d"], stuff_colors=[[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]],
                ignore_label=IGNORE, evaluator_type="sem_seg")
    register_sem_seg(name, str(root / "images"), str(root / "labels"), meta)
    config = root / "tiny_car.yaml"
    config.write_text(
        "MODEL:\n"
        "  DEVICE: cpu\n"
        "  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 16, STEM_OUT_CHANNELS: 16}\n"
        "  DECODE_HEAD: {CHANNELS: 32, REG_PROJECTION: True, LAST_CONV_KERNEL: 1}\n"
        "  SEM_SEG_HEAD: {NUM_CLASSES: 4}\n"
        "  REGULARIZERS: {NAMES: [CARRegularizer]}\n"
    )
    return name, str(config)


def test_class_dependency_tool(car_tiny_dataset, tmp_path):
    import json

    from detectron2.checkpoint import DetectionCheckpointer

    from segcls.analysis.car import dataset_inputs, head_outputs, load_model

    name, config = car_tiny_dataset
    cfg = load_config(config)
    model = load_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("tiny")
    out = tmp_path / "dep.png"
    summary = load_script("tools/car_class_dependency.py").main(
        ["--config-file", config, "--dataset", name, "--output", str(out), "MODEL.WEIGHTS", str(tmp_path / "tiny.pth")]
    )
    assert out.stat().st_size > 0 and json.loads((tmp_path / "dep.json").read_text())["classes"] == ["a", "b", "c", "d"]
    # Split-level centers, directly: every image's feature with its labels resized by CAR's rule.
    sums, counts = torch.zeros(4, 128, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for inputs in dataset_inputs(cfg, name):
        outputs, _, labels = head_outputs(model, [inputs])
        feat = outputs.reg_features["reg_feature"][0].double()
        lab = resize_labels(labels, feat.shape[-2:])[0]
        for k in range(4):
            sums[k] += feat[:, lab == k].sum(1)
            counts[k] += (lab == k).sum()
    centers = sums / counts.clamp(min=1)[:, None]
    assert summary["pixel_counts"] == counts.long().tolist() and counts[3] == 0
    assert_close(summary["similarity"], centers @ centers.T, rtol=1e-5, atol=1e-6)
    assert 0 < summary["mean_inter_class_dependency"] < 1


def test_pixel_relation_tool(car_tiny_dataset, tmp_path):
    from segcls.analysis.car import feature_cell, pixel_relation

    name, config = car_tiny_dataset
    out = tmp_path / "rel.png"
    tool = load_script("tools/car_pixel_relation.py")
    relation = tool.main(["--config-file", config, "--dataset", name, "--index", "1", "--pixel", "30", "5",
                          "--output", str(out)])
    assert out.stat().st_size > 0 and relation.shape == (40, 48) and np_isfinite(relation)
    with pytest.raises(ValueError, match="outside"):
        tool.main(["--config-file", config, "--dataset", name, "--pixel", "36", "0", "--output", str(out)])
    with pytest.raises(IndexError, match="has 3 images"):
        tool.main(["--config-file", config, "--dataset", name, "--index", "3", "--output", str(out)])
    # The map is the dot product of the chosen cell's feature with every cell's.
    assert [feature_cell(40, 5, r) for r in (0, 7, 8, 39)] == [0, 0, 1, 4]
    feature = torch.randn(3, 5, 6, dtype=torch.float64)
    rel = pixel_relation(feature, (40, 48), 30, 5)
    assert_close(rel, torch.einsum("c,chw->hw", feature[:, 3, 0], feature))


def np_isfinite(array):
    import numpy as np

    return bool(np.isfinite(array).all())


def test_benchmark_quick_smoke():
    from segcls.benchmarks import car

    result = car.main(["--quick", "--size", "32", "--repeats", "1", "--warmup", "0"])
    # At this size the memory numbers are within the kernel's RSS accounting noise (tens of KiB),
    # so only their presence is checked.
    assert result["time_ratio"] > 0 and "memory_ratio" in result
    assert result["flops_ratio"] > 1  # CAR's losses cost a little training compute
    assert len(result["seconds_per_iter"]["car"]) == len(result["seconds_per_iter"]["no_car"]) == 1
