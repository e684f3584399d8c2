"""
ECENet's Explicit Class Extraction (ECE, Sec. 3.3, Eqs. 4-5 and 8) and its first mask head.

- ``Mask(X_4) = phi_2(phi_1(X_4))`` (Eq. 4): two 1x1 convs ``C -> C -> N``, no activation
  (:func:`build_mask_head`). Released (``MODEL.ECENET.ECE.MASK_GROUPS 4``, ``MASK_BIAS False``):
  ``phi_1`` grouped (4 blocks, block-diagonal), neither conv with a bias; paper-literal: groups 1,
  biases.
- ``G = psi(Pooling(Mask))`` (Eq. 5): every class slice of the (B, N, H, W) masks is pooled on
  its own by adaptive average pooling (PyTorch's bins, also for outputs larger than the input) at
  every pyramid level ``s`` (``s x s`` bins, flattened row-major, levels in the listed order),
  giving ``D = sum_s s^2`` values per class; one ``Linear(D -> C)`` (with bias) shared across
  classes makes the (B, N, C) embeddings. Class ``n``'s embedding depends only on mask slice ``n``.
- Levels (:func:`ece_levels`, ``MODEL.ECENET.ECE.LEVELS``): released ``"psp_odd"``:
  ``(1, 2, 3, 6, L)`` with ``L = floor(alpha sqrt(N))``, plus 1 if even (ADE20K: 13, D = 219);
  paper-literal ``"all"``: ``1..S`` with ``S = floor(alpha sqrt(N))`` (ADE20K: 12, D = 650).
  alpha = 1 ADE20K, sqrt(2) Pascal Context, 3 Cityscapes; ``POOL_SIZE`` > 0 sets L (or S) directly.
"""
import math
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

ECE_LEVELS = ("psp_odd", "all")


def ece_pool_size(num_classes: int, alpha: float, override: int = 0) -> int:
    """``S = floor(alpha * sqrt(N))`` (a 1e-9 tolerance keeps e.g. ``sqrt(2) * sqrt(2)`` at 2), or
    ``override`` when > 0. Raises ``ValueError`` if the result is < 1."""
    if override < 0:
        raise ValueError(f"MODEL.ECENET.ECE.POOL_SIZE={override}: expected 0 (derive from ALPHA) or a positive size")
    size = override if override > 0 else int(math.floor(alpha * math.sqrt(num_classes) + 1e-9))
    if size < 1:
        raise ValueError(
            f"MODEL.ECENET.ECE.ALPHA={alpha} with {num_classes} classes gives pool size "
            f"floor(alpha * sqrt(N)) = {size}: need >= 1 (raise ALPHA or set MODEL.ECENET.ECE.POOL_SIZE)"
        )
    return size


def ece_levels(num_classes: int, alpha: float, override: int = 0, levels: str = "psp_odd") -> Tuple[int, ...]:
    """The pooling sizes of ECE (see the module docstring): ``"psp_odd"`` -> ``(1, 2, 3, 6, L)``,
    L the :func:`ece_pool_size` made odd (the released rule: ``int(sqrt(N) * ratio)``, ``+1`` if
    even; ``POOL_SIZE`` is used as given); ``"all"`` -> ``(1, ..., S)``."""
    if levels not in ECE_LEVELS:
        raise ValueError(f"MODEL.ECENET.ECE.LEVELS={levels!r}: expected one of {list(ECE_LEVELS)}")
    size = ece_pool_size(num_classes, alpha, override)
    if levels == "all":
        return tuple(range(1, size + 1))
    return (1, 2, 3, 6, size if override > 0 or size % 2 else size + 1)


def pyramid_dim(pool_size: int) -> int:
    """``D = S(S+1)(2S+1)/6``, the number of bins of levels ``1..S``."""
    return pool_size * (pool_size + 1) * (2 * pool_size + 1) // 6


def build_mask_head(embed_dim: int, num_classes: int, groups: int = 1, bias: bool = True) -> nn.Module:
    """Eq. 4: ``phi_2(phi_1(X))``, 1x1 convs ``C -> C`` (``groups`` groups) ``-> N``, with or without
    biases, no activation, initialised as linear layers (truncated normal, std 0.02, bias 0).
    (B, C, H, W) -> (B, N, H, W)."""
    if groups < 1 or embed_dim % groups:
        raise ValueError(f"MODEL.ECENET.ECE.MASK_GROUPS={groups}: must divide MODEL.ECENET.EMBED_DIM={embed_dim}")
    head = nn.Sequential(
        nn.Conv2d(embed_dim, embed_dim, 1, groups=groups, bias=bias), nn.Conv2d(embed_dim, num_classes, 1, bias=bias)
    )
    for conv in head:
        nn.init.trunc_normal_(conv.weight, std=0.02)
        if bias:
            nn.init.zeros_(conv.bias)
    return head


class ExplicitClassExtraction(nn.Module):
    """Eq. 5 (and Eq. 8 on a similarity mask): masks (B, N, H, W) -> class embeddings (B, N, C).
    ``pool_sizes``: the pyramid levels, or an int ``S`` for ``1..S``. See the module docstring."""

    def __init__(self, pool_sizes, embed_dim: int):
        super().__init__()
        if isinstance(pool_sizes, int):
            pool_sizes = range(1, pool_sizes + 1)
        self.pool_sizes: Sequence[int] = tuple(pool_sizes)
        self.proj = nn.Linear(sum(s * s for s in self.pool_sizes), embed_dim)

    @property
    def pool_size(self) -> int:
        """The largest pooling size (S, or the released L)."""
        return max(self.pool_sizes)

    def pool(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W) -> (B, N, D): per-slice adaptive average pooling at every level, row-major bins."""
        return torch.cat([F.adaptive_avg_pool2d(masks, s).flatten(2) for s in self.pool_sizes], dim=2)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(masks))
