"""
ECENet's class updater (Sec. 3.4, Eqs. 9-10) and the "plus" ablation (Table 6).

Gated (K-Net's gate, the paper's "as in [56]"), with ``G`` the previous and ``G_hat`` the new class
embeddings (both (B, N, C)):

- ``F_u = phi_3(G_hat) * phi_4(G)`` (Eq. 9; ``phi_3``, ``phi_4``: plain Linear C -> C);
- ``U = sigmoid(LN(FC(F_u)))`` and ``G~ = U * LN(FC(G_hat)) + G`` (Eq. 10; ``psi_1``,
  ``psi_2`` = FC followed by LayerNorm; the released code packs ``phi_3`` and ``psi_2``'s FC into
  one Linear C -> 2C, the same computation).

Plus: ``G~ = G + G_hat``.

Tail (``MODEL.ECENET.UPDATER_TAIL``, default True: the authors' released updater, K-Net's
output block, ``shared/specs/ecenet_released.md`` Sec. 1.5): ``G_new = ReLU(LN(FC(G~)))``, so
every updated embedding is non-negative; False (paper-literal): ``G_new = G~``. All Linears have
biases.
"""
import torch
from torch import nn


def _tail(dim: int, enabled: bool) -> nn.Module:
    """``ReLU(LN(FC(.)))`` (B, N, C) -> (B, N, C), or None."""
    return nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU()) if enabled else None


class GatedClassUpdater(nn.Module):
    """forward(``g_hat`` (B, N, C), ``g`` (B, N, C)) -> (B, N, C), Eqs. 9-10 (+ the tail)."""

    def __init__(self, dim: int, tail: bool = False):
        super().__init__()
        self.phi3 = nn.Linear(dim, dim)
        self.phi4 = nn.Linear(dim, dim)
        self.psi1 = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.psi2 = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.tail = _tail(dim, tail)

    def forward(self, g_hat: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.psi1(self.phi3(g_hat) * self.phi4(g)))
        g = gate * self.psi2(g_hat) + g
        return g if self.tail is None else self.tail(g)


class PlusClassUpdater(nn.Module):
    """forward(``g_hat``, ``g``) -> ``g + g_hat`` (the "plus" row of Table 6), then the tail."""

    def __init__(self, dim: int = 0, tail: bool = False):
        super().__init__()
        self.tail = _tail(dim, tail)

    def forward(self, g_hat: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = g + g_hat
        return g if self.tail is None else self.tail(g)


UPDATERS = {"gated": GatedClassUpdater, "plus": PlusClassUpdater}


def build_updater(name: str, dim: int, tail: bool = False) -> nn.Module:
    """``MODEL.ECENET.UPDATER``: ``"gated"`` (Eqs. 9-10) or ``"plus"``; ``tail``: ``UPDATER_TAIL``."""
    if name not in UPDATERS:
        raise ValueError(f"MODEL.ECENET.UPDATER={name!r}: expected one of {sorted(UPDATERS)}")
    return UPDATERS[name](dim, tail)
