"""
ECENet's Explicit Class Extraction (ECE, Sec. 3.3, Eqs. 4-5 and 8) and its first mask head.

- ``Mask(X_4) = phi_2(phi_1(X_4))`` (Eq. 4): two 1x1 convs with bias and no activation,
  ``C -> C -> N`` (:func:`build_mask_head`).
- ``G = psi(Pooling(Mask))`` (Eq. 5): every class slice of the (B, N, H, W) masks is pooled on
  its own by adaptive average pooling at every pyramid level ``s = 1..S`` (``s x s`` bins,
  flattened row-major, levels in ascending order), giving ``D = sum_s s^2 = S(S+1)(2S+1)/6``
  values per class; one ``Linear(D -> C)`` shared across classes makes the (B, N, C) embeddings.
  Class ``n``'s embedding therefore depends only on mask slice ``n``.
- ``S = floor(alpha * sqrt(N))`` ("the maximum pooling size is proportional to sqrt(N)"; alpha = 1
  ADE20K, sqrt(2) Pascal Context, 3 Cityscapes), or a given override (:func:`ece_pool_size`).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F



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


def pyramid_dim(pool_size: int) -> int:
    """``D = S(S+1)(2S+1)/6``, the number of bins of levels ``1..S``."""
    return pool_size * (pool_size + 1) * (2 * pool_size + 1) // 6


def build_mask_head(embed_dim: int, num_classes: int) -> nn.Module:
    """Eq. 4: ``phi_2(phi_1(X))``, 1x1 convs ``C -> C -> N`` with bias, no activation, initialised as
    linear layers (truncated normal, std 0.02, bias 0). (B, C, H, W) -> (B, N, H, W)."""
    head = nn.Sequential(nn.Conv2d(embed_dim, embed_dim, 1), nn.Conv2d(embed_dim, num_classes, 1))
    for conv in head:
        nn.init.trunc_normal_(conv.weight, std=0.02)
        nn.init.zeros_(conv.bias)
    return head


class ExplicitClassExtraction(nn.Module):
    """Eq. 5 (and Eq. 8 on a similarity mask): masks (B, N, H, W) -> class embeddings (B, N, C).
    See the module docstring."""

    def __init__(self, pool_size: int, embed_dim: int):
        super().__init__()
        self.pool_size = pool_size
        self.proj = nn.Linear(pyramid_dim(pool_size), embed_dim)

    def pool(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W) -> (B, N, D): per-slice adaptive average pooling at levels 1..S, row-major bins."""
        return torch.cat([F.adaptive_avg_pool2d(masks, s).flatten(2) for s in range(1, self.pool_size + 1)], dim=2)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(masks))
