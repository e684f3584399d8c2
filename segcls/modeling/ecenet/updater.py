"""
ECENet's class updater (Sec. 3.4, Eqs. 9-10) and the "plus" ablation (Table 6).

Gated (K-Net's gate, the paper's "as in [56]"), with ``G`` the previous and ``G_hat`` the new class
embeddings (both (B, N, C)):

- ``F_u = phi_3(G_hat) * phi_4(G)`` (Eq. 9; ``phi_3``, ``phi_4``: plain Linear C -> C);
- ``U = sigmoid(LN(FC(F_u)))`` and ``G_new = U * LN(FC(G_hat)) + G`` (Eq. 10; ``psi_1``,
  ``psi_2`` = FC followed by LayerNorm).

Plus: ``G_new = G + G_hat``.
"""
import torch
from torch import nn


class GatedClassUpdater(nn.Module):
    """forward(``g_hat`` (B, N, C), ``g`` (B, N, C)) -> (B, N, C), Eqs. 9-10."""

    def __init__(self, dim: int):
        super().__init__()
        self.phi3 = nn.Linear(dim, dim)
        self.phi4 = nn.Linear(dim, dim)
        self.psi1 = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.psi2 = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))

    def forward(self, g_hat: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.psi1(self.phi3(g_hat) * self.phi4(g)))
        return gate * self.psi2(g_hat) + g


class PlusClassUpdater(nn.Module):
    """forward(``g_hat``, ``g``) -> ``g + g_hat`` (the "plus" row of Table 6)."""

    def forward(self, g_hat: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return g + g_hat


UPDATERS = {"gated": GatedClassUpdater, "plus": lambda dim: PlusClassUpdater()}


def build_updater(name: str, dim: int) -> nn.Module:
    """``MODEL.ECENET.UPDATER``: ``"gated"`` (Eqs. 9-10) or ``"plus"``."""
    if name not in UPDATERS:
        raise ValueError(f"MODEL.ECENET.UPDATER={name!r}: expected one of {sorted(UPDATERS)}")
    return UPDATERS[name](dim)
