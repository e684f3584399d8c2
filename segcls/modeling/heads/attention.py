"""
Attention blocks shared by segcls's context heads (each head's config keys are in its own file).

Blocks (all map (N, C, h, w) -> (N, C, h, w) unless said otherwise):

- :func:`attend`: the dot-product attention ``softmax(scale * Q^T K) V`` (or ``Q^T K V / M``)
  that Non-local, DANet's two modules and OCR's pixel-region relation are instances of;
- :class:`NonLocal2d`: the non-local block (Wang et al., CVPR 2018);
- :class:`PositionAttention`, :class:`ChannelAttention`: DANet's PAM and CAM (Fu et al., CVPR 2019);
- :class:`CrissCrossAttention`: CCNet's recurrent criss-cross attention (Huang et al., ICCV 2019).

Heads: :mod:`.self_attention` (``NonLocalHead``, ``CCHead``), :mod:`.danet` (``DAHead``),
:mod:`.ocr` (``OCRHead``); :mod:`.cpnet` (``CPHead``) uses none of these blocks.
"""
import math

import torch
from torch import nn

from ..layers import conv_norm_act


def attend(query, key, value, *, scale=1.0, normalize="softmax"):
    """
    Dot-product attention of ``n`` queries over ``m`` key/value items:
    ``out[:, :, i] = sum_j a_ij value[:, :, j]`` with ``e_ij = scale * query[:, :, i] . key[:, :, j]``
    and ``a_ij = softmax_j(e_ij)`` (``normalize="softmax"``) or ``a_ij = e_ij / m`` (``"mean"``).

    query: (N, d, n), key: (N, d, m), value: (N, c, m) -> (N, c, n).
    """
    energy = torch.einsum("bdn,bdm->bnm", query, key) * scale
    if normalize == "softmax":
        weights = energy.softmax(dim=-1)
    elif normalize == "mean":
        weights = energy / key.shape[-1]
    else:
        raise ValueError(f"normalize={normalize!r}: expected 'softmax' or 'mean'")
    return torch.einsum("bnm,bcm->bcn", weights, value)


class NonLocal2d(nn.Module):
    """
    Non-local block (Wang et al., CVPR 2018), Eq. 6: ``z_i = W_z y_i + x_i`` with Eq. 1
    ``y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)``; ``theta, phi, g``: 1x1 convs (with bias, no norm)
    to ``channels // reduction``; ``W_z``: 1x1 conv + norm whose scale is zero-initialised so the
    block starts as the identity (the paper's BN after W_z, scale initialised to zero).

    - ``mode="embedded_gaussian"`` (Eq. 3): ``f / C(x) = softmax_j(theta_i . phi_j [/ sqrt(d)])``;
    - ``mode="dot_product"`` (Eq. 4): ``f = theta_i . phi_j``, ``C(x) = N`` (number of positions).
    """

    MODES = ("embedded_gaussian", "dot_product")

    def __init__(self, channels, *, reduction=2, mode="embedded_gaussian", use_scale=True, norm="BN"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"NONLOCAL.MODE={mode!r}: expected one of {self.MODES}")
        if reduction < 1 or channels // reduction < 1:
            raise ValueError(f"NONLOCAL.REDUCTION={reduction}: must be >= 1 and <= channels ({channels})")
        inter = channels // reduction
        self.mode = mode
        self.scale = 1.0 / math.sqrt(inter) if (use_scale and mode == "embedded_gaussian") else 1.0
        self.theta = conv_norm_act(channels, inter, 1, norm="", act=False)
        self.phi = conv_norm_act(channels, inter, 1, norm="", act=False)
        self.g = conv_norm_act(channels, inter, 1, norm="", act=False)
        self.out = conv_norm_act(inter, channels, 1, norm=norm, act=False)
        nn.init.zeros_(self.out.norm.weight if self.out.norm is not None else self.out.weight)

    def forward(self, x):
        n, _, h, w = x.shape
        y = attend(
            self.theta(x).flatten(2),
            self.phi(x).flatten(2),
            self.g(x).flatten(2),
            scale=self.scale,
            normalize="softmax" if self.mode == "embedded_gaussian" else "mean",
        )
        return x + self.out(y.view(n, -1, h, w))


class PositionAttention(nn.Module):
    """
    DANet's position attention module (PAM), DANet Eqs. 1-2: ``s_ji = softmax_i(B_i . C_j)``,
    ``E_j = alpha * sum_i s_ji D_i + A_j`` with B, C: 1x1 convs to ``channels // 8``, D: 1x1 conv
    to ``channels`` (all with bias, as released), ``alpha`` a learned scalar initialised to 0.
    """

    def __init__(self, channels):
        super().__init__()
        self.query = conv_norm_act(channels, max(channels // 8, 1), 1, norm="", act=False)
        self.key = conv_norm_act(channels, max(channels // 8, 1), 1, norm="", act=False)
        self.value = conv_norm_act(channels, channels, 1, norm="", act=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = attend(self.query(x).flatten(2), self.key(x).flatten(2), self.value(x).flatten(2))
        return self.gamma * out.view_as(x) + x


class ChannelAttention(nn.Module):
    """
    DANet's channel attention module (CAM), DANet Eqs. 3-4: ``x_ji = softmax_i(+-A_j . A_i)``
    (channels as items, positions as features; no projections), ``E_j = beta * sum_i x_ji A_i + A_j``,
    ``beta`` a learned scalar initialised to 0. ``energy="paper"``: softmax of ``A_j . A_i`` (Eq. 3);
    ``"official"``: the released code's ``softmax(max_i e_ji - e_ji)`` = ``softmax(-e_ji)``.
    """

    ENERGIES = ("official", "paper")

    def __init__(self, energy="official"):
        super().__init__()
        if energy not in self.ENERGIES:
            raise ValueError(f"DANET.CAM_ENERGY={energy!r}: expected one of {self.ENERGIES}")
        self.sign = -1.0 if energy == "official" else 1.0
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        a = x.flatten(2).transpose(1, 2)  # (N, h*w, C): channels are the attention items
        out = attend(a, a, a, scale=self.sign).transpose(1, 2)
        return self.gamma * out.reshape_as(x) + x


class CrissCrossAttention(nn.Module):
    """
    CCNet's recurrent criss-cross attention (RCCA; CCNet Fig. 3, "Recurrent Criss-Cross
    Attention"): ``recurrence`` passes of one module with shared weights. Each pass (CCNet Eqs.
    1-2): Q, K: 1x1 convs to ``channels // 8``, V: 1x1 conv to ``channels`` (with bias); position
    (i, j) attends to the ``h + w - 1`` positions of its column and row,
    ``A = softmax over [column energies, row energies]`` of ``Q_u . K_v``, with the self position
    counted once (masked with -inf in the column branch, as the released code's diagonal);
    ``out = gamma * (sum_col A V + sum_row A V) + x``, ``gamma`` a learned scalar initialised to 0.
    """

    def __init__(self, channels, recurrence=2):
        super().__init__()
        if recurrence < 1:
            raise ValueError(f"CCNET.RECURRENCE={recurrence}: must be >= 1")
        self.recurrence = recurrence
        self.query = conv_norm_act(channels, max(channels // 8, 1), 1, norm="", act=False)
        self.key = conv_norm_act(channels, max(channels // 8, 1), 1, norm="", act=False)
        self.value = conv_norm_act(channels, channels, 1, norm="", act=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def criss_cross(self, x):
        """One criss-cross pass: (N, C, h, w) -> (N, C, h, w)."""
        h = x.shape[2]
        q, k, v = self.query(x), self.key(x), self.value(x)
        energy_col = torch.einsum("bchw,bciw->bhwi", q, k)  # (i, w) attends to (i', w)
        self_pos = torch.eye(h, dtype=torch.bool, device=x.device).view(h, 1, h)
        energy_col = energy_col.masked_fill(self_pos, float("-inf"))
        energy_row = torch.einsum("bchw,bchj->bhwj", q, k)  # (h, w) attends to (h, j')
        attn = torch.cat([energy_col, energy_row], dim=-1).softmax(dim=-1)
        out = torch.einsum("bciw,bhwi->bchw", v, attn[..., :h])
        out = out + torch.einsum("bchj,bhwj->bchw", v, attn[..., h:])
        return self.gamma * out + x

    def forward(self, x):
        for _ in range(self.recurrence):
            x = self.criss_cross(x)
        return x
