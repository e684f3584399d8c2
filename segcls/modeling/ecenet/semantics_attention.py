"""
ECENet's Semantics Attention (SA, Sec. 3.4, Eqs. 6-7, Fig. 4).

Image tokens ``X`` (the ``H x W`` positions of a stage feature) are the queries; class
embeddings ``G`` are the keys and values. With separate pre-LayerNorms for image and class tokens:

- ``Q = phi_q(LN_x(X))``, ``K = phi_k(LN_g(G))``, ``V = phi_v(LN_g(G))`` (Eq. 6, Linear C -> C
  with bias), split into ``h`` heads of ``d = C / h`` channels;
- per head ``S_h = Q_h K_h^T / sqrt(d)`` (L x N), ``A_h = softmax over the N classes of S_h``,
  ``MSA = proj(concat_h A_h V_h)`` (Eq. 7; ``proj`` is the standard multi-head output Linear);
- ``X <- X + MSA``, then ``X <- X + MixFFN(LN(X))`` (residuals after both blocks);
- the similarity mask is the *pre-softmax* ``S_h`` averaged over heads, reshaped to (B, N, H, W):
  it is the new mask of the updater (Eq. 8) and a term of the summed masks.

Mix-FFN (SegFormer's, the paper's "3x3 depth-wise convolution" MLP): Linear ``C -> rC``,
depthwise 3x3 conv (with bias, zero padding) on the ``H x W`` grid, GELU, Linear ``rC -> C``.
"""
import math
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F


class MixFFN(nn.Module):
    """tokens (B, H*W, C) on an H x W grid -> (B, H*W, C); see the module docstring."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        b, _, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, height, width)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class SemanticsAttention(nn.Module):
    """
    forward(``x`` (B, C, H, W) image feature, ``g`` (B, N, C) class embeddings) ->
    (enhanced feature (B, C, H, W), similarity mask (B, N, H, W)). See the module docstring.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(
                f"MODEL.ECENET.NUM_HEADS={num_heads}: must divide MODEL.ECENET.EMBED_DIM={dim}"
            )
        if mlp_ratio < 1:
            raise ValueError(f"MODEL.ECENET.MLP_RATIO={mlp_ratio}: expected >= 1")
        self.num_heads = num_heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_g = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, dim * mlp_ratio)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, h, n, d)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, c, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, L, C)
        g = self.norm_g(g)
        q = self._heads(self.q(self.norm_x(tokens)))
        k, v = self._heads(self.k(g)), self._heads(self.v(g))
        sim = q @ k.transpose(-2, -1) / math.sqrt(c // self.num_heads)  # (B, h, L, N), Eq. 7
        out = (sim.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, -1, c)
        tokens = tokens + self.proj(out)
        tokens = tokens + self.ffn(self.norm_ffn(tokens), height, width)
        mask = sim.mean(dim=1).transpose(1, 2).reshape(b, -1, height, width)
        return tokens.transpose(1, 2).reshape(b, c, height, width), mask
