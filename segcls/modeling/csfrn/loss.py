"""
The Class-Aware Consistency loss and the smooth loss of CSFRN (Consistent-Separable Feature
Representation Network, AAAI 2021, paper 003; not the context-aware classifier "CAC" of paper 002).

Per image b (the paper leaves these rules open; they are the spec of segcls's issue):

- the label is brought to the embedding grid by PyTorch's ``F.interpolate(mode="nearest")`` on
  the float label; ``K_b`` = the classes present among its non-ignored pixels;
- for k in ``K_b``: ``s_k`` = mean of the embeddings ``b_ij`` over the pixels of class k (Eq. 1,
  gradients flow), ``m_k`` = mean of the margins ``c_ij`` over them (Eq. 3);
  ``phi_ij,k = 1 - exp(-||b_ij - s_k||^2 * exp(delta * m_k))`` (Eq. 2 with the paper's
  ``exp(m * delta)`` replacing ``1 / (2 m^2)``, delta = 10);
- ``"lovasz"`` (default): ``loss_k`` = Lovasz hinge (:func:`lovasz_hinge_flat`) of the scores
  ``1 - 2 phi`` over all valid pixels of the image with positives ``[y_ij == k]`` (Eq. 4);
  ``"bce"`` (Table 4's CAC(BCE)): ``loss_k`` = mean over the valid pixels of
  ``BCE(phi_ij,k, 1 - [y_ij == k])``, phi clamped to [eps, 1 - eps];
- ``L_b`` = mean of ``loss_k`` over ``K_b`` (0 if empty); the loss is the mean of ``L_b`` over
  the images of the batch (images without a valid pixel count as 0);
- smooth loss (Eq. 5): the mean over images of the mean over ``K_b`` of the mean over the pixels
  of class k of ``(c_ij - m_k)^2``.

``use_margins=False`` (Table 5's "w/o margins") replaces ``exp(delta * m_k)`` by 1.
"""
from typing import Optional, Tuple

import torch
from torch.nn import functional as F

from ..losses.lovasz import lovasz_hinge_flat
from ..precision import float32

LOSS_TYPES = ("lovasz", "bce")


def downsample_labels(targets: torch.Tensor, size) -> torch.Tensor:
    """(N, H, W) long labels -> (N, h, w) by nearest (``F.interpolate(mode="nearest")`` on floats)."""
    if tuple(targets.shape[-2:]) == tuple(size):
        return targets
    return F.interpolate(targets[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def class_statistics(embedding: torch.Tensor, margin: Optional[torch.Tensor], labels: torch.Tensor):
    """
    One image's valid pixels: embedding (P, C'), margin (P,) or None, labels (P,) ->
    (classes (K_b,), one-hot (K_b, P), centers s_k (K_b, C') (Eq. 1), margins m_k (K_b,) or None (Eq. 3)).
    """
    classes = labels.unique()
    onehot = (labels[None] == classes[:, None]).to(embedding.dtype)
    counts = onehot.sum(1)
    centers = onehot @ embedding / counts[:, None]
    margins = None if margin is None else onehot @ margin / counts
    return classes, onehot, centers, margins


@float32
def class_aware_consistency_loss(
    embedding: torch.Tensor,
    margin: Optional[torch.Tensor],
    targets: torch.Tensor,
    *,
    ignore_value: int = 255,
    delta: float = 10.0,
    loss_type: str = "lovasz",
    use_margins: bool = True,
    margin_clamp: float = 0.0,
    bce_eps: float = 1e-6,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    embedding B: (N, C', h, w); margin C: (N, 1, h, w) (None when ``use_margins`` is False);
    targets: (N, H, W) long labels at any size (brought to (h, w) by nearest).
    ``margin_clamp`` > 0 clamps ``delta * m_k`` from above (overflow guard of exp).
    Returns (L_cac, L_smooth) scalars (L_smooth is 0 without margins). Runs in float32 under
    autocast, exp(delta * m) included (:func:`~segcls.modeling.precision.float32`).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"MODEL.CSFRN.LOSS_TYPE={loss_type!r}: expected one of {LOSS_TYPES}")
    labels = downsample_labels(targets, embedding.shape[-2:])
    n = embedding.shape[0]
    zero = embedding.sum() * 0.0 + (0.0 if margin is None else margin.sum() * 0.0)
    cac_terms, smooth_terms = [], []
    for b in range(n):
        valid = labels[b] != ignore_value
        if not valid.any():
            cac_terms.append(zero)
            smooth_terms.append(zero)
            continue
        emb = embedding[b].flatten(1).t()[valid.flatten()]  # (P, C')
        mar = None if (margin is None or not use_margins) else margin[b, 0].flatten()[valid.flatten()]
        y = labels[b].flatten()[valid.flatten()]
        classes, onehot, centers, margins = class_statistics(emb, mar, y)
        # ||b_ij - s_k||^2 for every (k, ij): (K_b, P)
        dist = (emb[None] - centers[:, None]).pow(2).sum(-1)
        if margins is not None:
            scaled = delta * margins
            if margin_clamp > 0:
                scaled = scaled.clamp(max=margin_clamp)
            dist = dist * scaled.exp()[:, None]
        similarity = torch.exp(-dist)  # 1 - phi
        if loss_type == "lovasz":
            cac_terms.append(lovasz_hinge_flat(2.0 * similarity - 1.0, onehot).mean())
        else:
            phi = (1.0 - similarity).clamp(bce_eps, 1.0 - bce_eps)
            cac_terms.append(F.binary_cross_entropy(phi, 1.0 - onehot, reduction="none").mean(1).mean())
        if margins is not None:
            sq = (mar[None] - margins[:, None]).pow(2) * onehot
            smooth_terms.append((sq.sum(1) / onehot.sum(1)).mean())
        else:
            smooth_terms.append(zero)
    return torch.stack(cac_terms).mean(), torch.stack(smooth_terms).mean()
