"""
ECENet's Semantics Attention (SA, Sec. 3.4, Eqs. 6-7, Fig. 4).

Image tokens ``X`` (the ``H x W`` positions of a stage feature, (B, C, H, W)) are the queries;
class embeddings ``G`` (B, N, C) are the keys and values. With separate pre-LayerNorms for image
and class tokens (``MODEL.ECENET.ATTENTION.*``; defaults: the authors' released head,
``shared/specs/ecenet_released.md`` Sec. 1.4):

- query ``Q = phi_q(LN_x(X))`` (Eq. 6): released ``QUERY "dwconv"``: ``act(PW1x1(act(DW3x3(.))))``
  (depthwise 3x3 and pointwise conv, both with bias; ``QUERY_ACT "none"`` as in the authors' mmcv
  code, ``"relu"`` as in the MindSpore port); paper-literal ``"linear"``: one Linear C -> C;
- keys and values from ``LN_g(G)``: released ``KV "shared"``: one bias-free Linear C -> 2C,
  ``[K | V]``; paper-literal ``"separate"``: two Linears with bias;
- ``h`` heads of ``d = C / h`` (released 4, paper-literal 8; channel c -> head ``c // d``),
  ``S_h = Q_h K_h^T / sqrt(d)`` (L x N), ``MSA = proj(concat_h A_h V_h)`` (Eq. 7, ``proj`` a
  Linear with bias) with ``A_h = softmax_N(-S_h)`` (released ``SOFTMAX "negated"``: the code's
  ``softmax(max S - S)``, DANet's CAM idiom, which puts most attention on the *least* similar
  classes) or ``softmax_N(S_h)`` (``"standard"``, paper-literal);
- ``X <- X + MSA``, then ``X <- X + MixFFN(LN(X))`` (residuals after both blocks);
- the similarity mask is the *pre-softmax* ``+S_h`` averaged over heads, reshaped row-major to
  (B, N, H, W) (both readings): the new mask of the updater (Eq. 8) and a term of the summed masks.

Mix-FFN (SegFormer's, the paper's "3x3 depth-wise convolution" MLP): Linear ``C -> rC``,
depthwise 3x3 conv (with bias, zero padding) on the ``H x W`` grid, GELU, Linear ``rC -> C``.
"""
import math
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

QUERIES = ("dwconv", "linear")
QUERY_ACTS = {"none": nn.Identity, "relu": nn.ReLU}
KVS = ("shared", "separate")
SOFTMAXES = ("negated", "standard")


def _check(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"MODEL.ECENET.ATTENTION.{key}={value!r}: expected one of {sorted(allowed)}")


def _grid(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens, row-major -> (B, C, H, W)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class MixFFN(nn.Module):
    """tokens (B, H*W, C) on an H x W grid -> (B, H*W, C); see the module docstring."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.dwconv(_grid(self.fc1(x), height, width)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class DWSeparableQuery(nn.Module):
    """The released query projection: tokens (B, H*W, C) on an H x W grid -> (B, H*W, C),
    ``act(PW1x1(act(DW3x3(x))))``, both convs with bias (zero padding)."""

    def __init__(self, dim: int, act: str = "none"):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.pw = nn.Conv2d(dim, dim, kernel_size=1)
        self.act = QUERY_ACTS[act]()

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.act(self.pw(self.act(self.dw(_grid(x, height, width))))).flatten(2).transpose(1, 2)


class SemanticsAttention(nn.Module):
    """
    forward(``x`` (B, C, H, W) image feature, ``g`` (B, N, C) class embeddings) ->
    (enhanced feature (B, C, H, W), similarity mask (B, N, H, W)). See the module docstring; the
    keyword defaults are the paper-literal reading, the config defaults the released one.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mlp_ratio: int = 4,
        *,
        query: str = "linear",
        query_act: str = "none",
        kv: str = "separate",
        softmax: str = "standard",
    ):
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(
                f"MODEL.ECENET.NUM_HEADS={num_heads}: must divide MODEL.ECENET.EMBED_DIM={dim}"
            )
        if mlp_ratio < 1:
            raise ValueError(f"MODEL.ECENET.MLP_RATIO={mlp_ratio}: expected >= 1")
        _check("QUERY", query, QUERIES)
        _check("QUERY_ACT", query_act, QUERY_ACTS)
        _check("KV", kv, KVS)
        _check("SOFTMAX", softmax, SOFTMAXES)
        self.num_heads = num_heads
        self.sign = -1.0 if softmax == "negated" else 1.0
        self.norm_x = nn.LayerNorm(dim)
        self.norm_g = nn.LayerNorm(dim)
        if query == "dwconv":
            self.q = DWSeparableQuery(dim, query_act)
        else:
            self.q = nn.Linear(dim, dim)
        if kv == "shared":
            self.kv = nn.Linear(dim, 2 * dim, bias=False)
        else:
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
        q = self.norm_x(tokens)
        q = self._heads(self.q(q, height, width) if isinstance(self.q, DWSeparableQuery) else self.q(q))
        if hasattr(self, "kv"):
            k, v = self.kv(g).chunk(2, dim=-1)
        else:
            k, v = self.k(g), self.v(g)
        k, v = self._heads(k), self._heads(v)
        sim = q @ k.transpose(-2, -1) / math.sqrt(c // self.num_heads)  # (B, h, L, N), Eq. 7
        out = ((self.sign * sim).softmax(dim=-1) @ v).transpose(1, 2).reshape(b, -1, c)
        tokens = tokens + self.proj(out)
        tokens = tokens + self.ffn(self.norm_ffn(tokens), height, width)
        mask = sim.mean(dim=1).transpose(1, 2).reshape(b, -1, height, width)
        return _grid(tokens, height, width), mask
