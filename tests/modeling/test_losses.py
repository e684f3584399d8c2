"""
Pixel losses against direct, slow float64 formulations (per-pixel Python loops), the all-ignored
batch, and config validation.
"""
import math

import pytest
import torch

from segcls.engine.defaults import load_config
from segcls.modeling.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    OhemTopKCrossEntropyLoss,
)
from segcls.modeling.registry import PIXEL_LOSS_REGISTRY, build_pixel_losses

IGNORE = 255
N, K, H, W = 2, 4, 5, 6


def random_batch(seed=0, ignore_fraction=0.2, num_classes=K):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, num_classes, H, W, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, num_classes, (N, H, W), generator=g)
    targets[torch.rand(N, H, W, generator=g) < ignore_fraction] = IGNORE
    return logits, targets


def pixels(logits, targets):
    """[(image, probs list, label)] of the valid pixels, probs by a hand-written softmax."""
    out = []
    for n in range(logits.shape[0]):
        for i in range(logits.shape[2]):
            for j in range(logits.shape[3]):
                y = int(targets[n, i, j])
                if y == IGNORE:
                    continue
                z = [float(v) for v in logits[n, :, i, j]]
                m = max(z)
                e = [math.exp(v - m) for v in z]
                out.append((n, [v / sum(e) for v in e], y))
    return out


def slow_weighted_mean(values, labels, class_weights):
    w = [class_weights[y] if class_weights else 1.0 for y in labels]
    return sum(wi * v for wi, v in zip(w, values)) / sum(w)


# --------------------------------------------------------------------------- cross-entropy family
@pytest.mark.parametrize("class_weights", [None, [0.5, 1.0, 2.0, 3.0]])
def test_cross_entropy_matches_loop(class_weights):
    logits, targets = random_batch()
    px = pixels(logits, targets)
    expected = slow_weighted_mean([-math.log(p[y]) for _, p, y in px], [y for _, _, y in px], class_weights)
    loss = CrossEntropyLoss(ignore_value=IGNORE, class_weights=class_weights)(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("class_weights", [None, [0.5, 1.0, 2.0, 3.0]])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_loop(gamma, class_weights):
    logits, targets = random_batch(1)
    px = pixels(logits, targets)
    values = [-((1 - p[y]) ** gamma) * math.log(p[y]) for _, p, y in px]
    expected = slow_weighted_mean(values, [y for _, _, y in px], class_weights)
    loss = FocalLoss(ignore_value=IGNORE, class_weights=class_weights, gamma=gamma)(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    if gamma == 0.0:
        ce = CrossEntropyLoss(ignore_value=IGNORE, class_weights=class_weights)(logits, targets)
        assert loss.item() == pytest.approx(ce.item(), rel=1e-12)


def test_focal_gradcheck():
    logits, targets = random_batch(2)
    logits = logits[:1, :, :3, :3].clone().requires_grad_()
    loss = FocalLoss(ignore_value=IGNORE, gamma=1.5)
    assert torch.autograd.gradcheck(lambda x: loss(x, targets[:1, :3, :3]), (logits,))


@pytest.mark.parametrize("top_k_percent", [0.1, 0.35, 1.0])
@pytest.mark.parametrize("class_weights", [None, [0.5, 1.0, 2.0, 3.0]])
def test_ohem_top_k_matches_sort(top_k_percent, class_weights):
    logits, targets = random_batch(3)
    px = pixels(logits, targets)
    ranked = sorted([(-math.log(p[y]), y) for _, p, y in px], reverse=True)
    kept = ranked[: max(1, int(top_k_percent * len(ranked)))]
    expected = slow_weighted_mean([v for v, _ in kept], [y for _, y in kept], class_weights)
    loss = OhemTopKCrossEntropyLoss(ignore_value=IGNORE, class_weights=class_weights, top_k_percent=top_k_percent)
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-10)
    if top_k_percent == 1.0:
        ce = CrossEntropyLoss(ignore_value=IGNORE, class_weights=class_weights)(logits, targets)
        assert loss(logits, targets).item() == pytest.approx(ce.item(), rel=1e-12)


@pytest.mark.parametrize(
    "thresh,min_kept",
    [
        (0.7, 0),  # threshold decides
        (0.7, 20),  # min_kept * N = 40 > pixels below 0.7: the 40 hardest are kept
        (0.2, 5),
        (1.0, 0),  # every pixel with p < 1: plain cross-entropy
        (0.05, 1000),  # min_kept above the number of valid pixels: all kept
    ],
)
def test_ohem_threshold_matches_loop(thresh, min_kept):
    logits, targets = random_batch(4)
    px = pixels(logits, targets)
    probs = sorted((p[y], -math.log(p[y]), y) for _, p, y in px)
    below = [t for t in probs if t[0] < thresh]
    kept = below if len(below) >= min_kept * N else probs[: min(min_kept * N, len(probs))]
    expected = sum(t[1] for t in kept) / len(kept)
    loss = OhemCrossEntropyLoss(ignore_value=IGNORE, thresh=thresh, min_kept=min_kept)(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert 0 < len(kept) <= len(probs)


def test_ohem_threshold_selects_hard_pixels():
    """With min_kept 0 the loss only sees pixels below the threshold, so it exceeds the CE mean."""
    logits, targets = random_batch(5)
    ohem = OhemCrossEntropyLoss(ignore_value=IGNORE, thresh=0.5, min_kept=0)(logits, targets)
    ce = CrossEntropyLoss(ignore_value=IGNORE)(logits, targets)
    assert ohem.item() > ce.item() + 0.1


@pytest.mark.parametrize("min_kept", [0, 5, 1000])
@pytest.mark.parametrize("normalization", ["kept", "valid", "all"])
def test_ohem_released_threshold_rule_and_normalizations_match_loop(min_kept, normalization):
    """selection "threshold": p < max(thresh, p_sorted[min(m, n - 1)]) (HRNet-OCR, mmseg 1.2.2);
    "valid"/"all" divide the kept pixels' loss sum by the valid / all pixels (mmseg's sampler)."""
    logits, targets = random_batch(4)
    px = pixels(logits, targets)
    probs = sorted(p[y] for _, p, y in px)
    threshold = max(0.3, probs[min(min_kept * N, len(probs) - 1)])
    kept = [-math.log(p[y]) for _, p, y in px if p[y] < threshold]
    z = {"kept": len(kept), "valid": len(px), "all": N * H * W}[normalization]
    loss = OhemCrossEntropyLoss(
        ignore_value=IGNORE, thresh=0.3, min_kept=min_kept, selection="threshold", normalization=normalization
    )(logits, targets)
    assert loss.item() == pytest.approx(sum(kept) / z, rel=1e-10)
    if min_kept == 1000:  # m >= n_valid: the released rule drops the most confident pixel
        assert len(kept) == len(px) - 1


# --------------------------------------------------------------------------- dice
@pytest.mark.parametrize("smooth,exponent", [(1.0, 2.0), (0.0, 1.0), (0.5, 2.0)])
def test_dice_matches_loop(smooth, exponent):
    logits, targets = random_batch(6)
    targets[1] = IGNORE  # an all-ignored image is left out of the mean
    px = pixels(logits, targets)
    values = []
    for n in sorted({n for n, _, _ in px}):
        for k in range(K):
            inter = sum(p[k] for m, p, y in px if m == n and y == k)
            den = sum(p[k] ** exponent for m, p, _ in px if m == n) + sum(1 for m, _, y in px if m == n and y == k)
            values.append(1 - (2 * inter + smooth) / (den + smooth))
    expected = sum(values) / len(values)
    loss = DiceLoss(ignore_value=IGNORE, smooth=smooth, exponent=exponent)(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_dice_mmseg_1x_variant_matches_loop(activation):
    """mmseg 1.2.2's DiceLoss: per image, classes and pixels pooled, eps 1e-3 added to both sums
    of squares; ignored pixels have an all-zero one-hot but keep their prediction."""
    logits, targets = random_batch(7)
    values = []
    for n in range(N):
        a = b = c = 0.0
        for i in range(H):
            for j in range(W):
                y = int(targets[n, i, j])
                z = [float(v) for v in logits[n, :, i, j]]
                if activation == "sigmoid":
                    p = [1 / (1 + math.exp(-v)) for v in z]
                else:
                    p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
                for k in range(K):
                    g = 1.0 if y == k else 0.0
                    a, b, c = a + p[k] * g, b + p[k] ** 2, c + g * g
        values.append(1 - 2 * a / ((b + 1e-3) + (c + 1e-3)))
    loss = DiceLoss(ignore_value=IGNORE, variant="mmseg", activation=activation, eps=1e-3)(logits, targets)
    assert loss.item() == pytest.approx(sum(values) / N, rel=1e-10)


@pytest.mark.parametrize("class_weights", [None, [0.5, 1.0, 2.0, 3.0]])
def test_sigmoid_focal_matches_loop(class_weights):
    logits, targets = random_batch(8)
    gamma, alpha, total = 2.0, 0.25, 0.0
    for n in range(N):
        for i in range(H):
            for j in range(W):
                y = int(targets[n, i, j])
                if y == IGNORE:
                    continue
                for k in range(K):
                    s = 1 / (1 + math.exp(-float(logits[n, k, i, j])))
                    pt, at = (s, alpha) if y == k else (1 - s, 1 - alpha)
                    total += -at * (1 - pt) ** gamma * math.log(pt) * (class_weights[k] if class_weights else 1.0)
    loss = FocalLoss(ignore_value=IGNORE, class_weights=class_weights, gamma=gamma, variant="sigmoid", alpha=alpha)
    assert loss(logits, targets).item() == pytest.approx(total / (N * H * W * K), rel=1e-10)


# --------------------------------------------------------------------------- Lovasz
def brute_force_lovasz_class(errors, fg):
    """Lovasz extension of the Jaccard loss J(S) = |S| / |F u S| at ``errors``, written naively:
    sum_i e_(i) (J({pi_1..pi_i}) - J({pi_1..pi_(i-1)})) with sets, pi sorting errors decreasingly."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    foreground = {i for i in range(len(errors)) if fg[i]}

    def jaccard(s):
        return len(s) / len(foreground | s) if s else 0.0

    total, chosen = 0.0, set()
    for i in order:
        before = jaccard(chosen)
        chosen = chosen | {i}
        total += errors[i] * (jaccard(chosen) - before)
    return total


def brute_force_lovasz(px, classes):
    losses = []
    for c in range(K):
        fg = [y == c for _, _, y in px]
        if classes == "present" and not any(fg):
            continue
        errors = [abs(float(f) - p[c]) for f, (_, p, _) in zip(fg, px)]
        losses.append(brute_force_lovasz_class(errors, fg))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_brute_force(classes, per_image):
    logits, targets = random_batch(7)
    targets[targets == 3] = 0  # class 3 absent: "present" and "all" differ
    px = pixels(logits, targets)
    if per_image:
        expected = sum(brute_force_lovasz([t for t in px if t[0] == n], classes) for n in range(N)) / N
    else:
        expected = brute_force_lovasz(px, classes)
    loss = LovaszSoftmaxLoss(ignore_value=IGNORE, classes=classes, per_image=per_image)(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_lovasz_is_zero_for_a_perfect_prediction():
    _, targets = random_batch(8)
    logits = torch.nn.functional.one_hot(targets.clamp(max=K - 1), K).permute(0, 3, 1, 2).double() * 100
    assert LovaszSoftmaxLoss(ignore_value=IGNORE)(logits, targets).item() == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- all losses
ALL_LOSSES = [
    CrossEntropyLoss(ignore_value=IGNORE),
    OhemTopKCrossEntropyLoss(ignore_value=IGNORE),
    OhemCrossEntropyLoss(ignore_value=IGNORE),
    FocalLoss(ignore_value=IGNORE),
    DiceLoss(ignore_value=IGNORE),
    LovaszSoftmaxLoss(ignore_value=IGNORE),
    LovaszSoftmaxLoss(ignore_value=IGNORE, classes="all", per_image=True),
]


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: f"{type(m).__name__}")
def test_all_ignored_batch_gives_finite_zero(loss):
    logits = torch.randn(N, K, H, W, requires_grad=True)
    targets = torch.full((N, H, W), IGNORE)
    value = loss(logits, targets)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: f"{type(m).__name__}")
def test_ignored_pixels_do_not_matter(loss):
    logits, targets = random_batch(9)
    changed = logits.clone()
    changed[(targets == IGNORE).unsqueeze(1).expand_as(logits)] = 7.0
    assert loss(changed, targets).item() == pytest.approx(loss(logits, targets).item(), rel=1e-12)


def test_build_from_config_and_names():
    # segcls's own losses (a fork's, registered by other test modules, need the fork's config keys)
    names = [n for n, cls in PIXEL_LOSS_REGISTRY if cls.__module__.startswith("segcls.")]
    cfg = load_config(
        opts=[
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4",
            "MODEL.LOSS.CLASS_WEIGHTS", "[1.0, 2.0, 1.0, 1.0]",
            "MODEL.LOSS.OHEM_THRESH", "0.6",
            "MODEL.LOSS.OHEM_MIN_KEPT", "7",
            "MODEL.LOSS.TOP_K_PERCENT", "0.3",
            "MODEL.LOSS.FOCAL_GAMMA", "1.0",
            "MODEL.LOSS.LOVASZ_CLASSES", "all",
        ]
    )  # fmt: skip
    losses = {type(m).__name__: m for m in build_pixel_losses(cfg, names, IGNORE)}
    assert losses["OhemCrossEntropyLoss"].thresh == 0.6 and losses["OhemCrossEntropyLoss"].min_kept == 7
    assert losses["OhemTopKCrossEntropyLoss"].top_k_percent == 0.3
    assert losses["FocalLoss"].gamma == 1.0 and losses["FocalLoss"].class_weights.tolist() == [1.0, 2.0, 1.0, 1.0]
    assert losses["LovaszSoftmaxLoss"].classes == "all"
    assert len({m.name for m in losses.values()}) == len(losses)  # loss dict keys do not clash


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.LOSS.TOP_K_PERCENT", "0.0"),
        ("MODEL.LOSS.OHEM_THRESH", "1.5"),
        ("MODEL.LOSS.OHEM_MIN_KEPT", "-1"),
        ("MODEL.LOSS.FOCAL_GAMMA", "-1.0"),
        ("MODEL.LOSS.DICE_SMOOTH", "-1.0"),
        ("MODEL.LOSS.LOVASZ_CLASSES", "some"),
        ("MODEL.LOSS.CLASS_WEIGHTS", "[1.0, 2.0]"),
    ],
)
def test_bad_config_names_the_key(key, value):
    cfg = load_config(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4", key, value])
    with pytest.raises(ValueError, match=key.split(".")[-1]):
        build_pixel_losses(cfg, list(PIXEL_LOSS_REGISTRY._obj_map), IGNORE)
