"""
Channelized Axial Attention (CAA), thesis ch. 3 (Eqs. 3.3-3.11, Algorithm 2), and its head.

Notation (Eqs. 3.3-3.11, with the semantics of the authors' released implementation: column
attention of column j acts on column j's values, then row attention acts on the column output):

    A_col[i, m; j] = softmax_m(theta(x_ij) . theta(x_mj))                       (3.3)
    A_row[j, n; i] = softmax_n(phi(x_ij) . phi(x_in))                           (3.4)
    alpha[i, j, m] = A_col[i, m; j] g(x_mj)                                     (3.6)
    C_col(alpha)[i, j, m] = s_col[i] * alpha[i, j, m],
        s_col[i] = Gate_col(sum_{m, j} alpha[i, j, m] / (H W))                  (3.9)
    c[i, j] = sum_m C_col(alpha)[i, j, m]
    beta[i, j, n] = A_row[j, n; i] c[i, n]                                      (3.7)
    C_row(beta)[i, j, n] = s_row[j] * beta[i, j, n],
        s_row[j] = Gate_row(sum_{i, n} beta[i, j, n] / (H W))                   (3.10)
    y[i, j] = sum_n C_row(beta)[i, j, n]                                        (3.11)

theta, phi: 1x1 conv-BN-ReLU C -> KEY_CHANNELS (query and key share it, Sec. 3.3.1.1); g: 1x1
conv-BN-ReLU C -> C; no 1/sqrt(d) scaling. Gate: Sec. 3.3.2.3's deeper channel attention
(:class:`ChannelGate`); ``GATE_LAYERS 1, GATE_SLOPE 0`` is Eqs. 3.9-3.10's two-layer ReLU form.

Both steps have one form, :func:`collapsed_step` / :func:`grouped_step`: attention within L
independent "lines" (the W columns, then the H rows), one gate vector per query index q, whose input
is the mean of the reweighted values over (line, key). Since the gate is constant along the summed
key axis, ``sum_k s[q] * A[l, q, k] v[l, k] = s[q] * (A v)[l, q]``: the collapsed form is exactly
plain axial attention with a gate on each step's output. The grouped form materialises the
reweighted values per group of query indices (Algorithm 2).
"""
import math
from typing import Dict, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn
from torch.nn import functional as F

from ...utils.config import get_config_node
from ..layers import conv_norm_act
from ..outputs import SegOutputs
from ..registry import DECODE_HEAD_REGISTRY
from .base import DecodeHead, input_feature
from .blocks import ImagePooling
from .config import head_keys
from .tail import HeadTail

_ATTENTIONS = ("axial", "self")
_IMPLEMENTATIONS = ("collapsed", "grouped")


@head_keys("CAA", used_by=("CAAHead",))
def declare_caa_keys(caa):
    """
    ``CAA.*``, the keys of :class:`CAAHead`:

    - ``ATTENTION``: ``"axial"`` (default, CAA) or ``"self"`` (channelized self-attention, Table 3.3:
      full spatial attention, one gate per query pixel from the mean of its reweighted values over
      all H*W key positions).
    - ``CHANNELIZED``: apply the spatially varying channel attention (Eqs. 3.9-3.11). False = plain
      axial (or self) attention, Table 3.1's baseline. Default True.
    - ``KEY_CHANNELS``: channels of the shared query/key projections theta, phi. Default 64.
    - ``GATE_LAYERS``: hidden linear layers of the gate MLP (5, Sec. 3.3.2.3 / Table 3.1).
    - ``GATE_REDUCTION``: hidden width = CHANNELS / GATE_REDUCTION (4: 512 / 4 = 128, Table 3.1).
    - ``GATE_SLOPE``: negative slope of the gate's LeakyReLUs (0.2, Sec. 3.3.2.3; 0 = ReLU).
    - ``IMPLEMENTATION``: ``"collapsed"`` (default; exact, memory of plain axial attention) or
      ``"grouped"`` (Algorithm 2's literal grouped vectorization; same result, for reference and
      benchmarks).
    - ``GROUPS``: number of groups G of the grouped form (the query axis is zero-padded by
      (-L) mod G; G = 1 is the ungrouped vectorization). Default 4 (the thesis gives no value).
    - ``IMAGE_POOLING``: concatenate the image-level branch before the last block. Default True.
    - ``OUT_CHANNELS``: channels of the head's last block, the classifier input (256; 0 = CHANNELS).
    """
    caa.ATTENTION = "axial"
    caa.CHANNELIZED = True
    caa.KEY_CHANNELS = 64
    caa.GATE_LAYERS = 5
    caa.GATE_REDUCTION = 4
    caa.GATE_SLOPE = 0.2
    caa.IMPLEMENTATION = "collapsed"
    caa.GROUPS = 4
    caa.IMAGE_POOLING = True
    caa.OUT_CHANNELS = 256


class ChannelGate(nn.Module):
    """
    Spatially varying channel attention MLP (thesis Sec. 3.3.2.3): ``num_layers`` hidden linear
    layers of width ``hidden`` without bias, each followed by LeakyReLU(``slope``), then a linear
    layer back to ``channels`` without bias and a sigmoid. (..., channels) -> (..., channels) in (0, 1).
    """

    def __init__(self, channels: int, hidden: int, num_layers: int = 5, slope: float = 0.2):
        super().__init__()
        if num_layers < 1 or hidden < 1:
            raise ValueError(f"CAA gate needs GATE_LAYERS >= 1 and a hidden width >= 1, got {num_layers}, {hidden}")
        layers, dim = [], channels
        for _ in range(num_layers):
            layers += [nn.Linear(dim, hidden, bias=False), nn.LeakyReLU(slope)]
            dim = hidden
        layers += [nn.Linear(dim, channels, bias=False), nn.Sigmoid()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def collapsed_step(attn: torch.Tensor, value: torch.Tensor, gate: Optional[nn.Module]) -> torch.Tensor:
    """
    One channelized attention step in collapsed form.

    attn (N, L, Q, K): attention of query q over key k within line l (rows sum to 1);
    value (N, L, K, C). Returns (N, L, Q, C): ``s[n, q] * sum_k attn[n, l, q, k] value[n, l, k]``
    with ``s[n, q] = gate(sum_{l, k} attn[n, l, q, k] value[n, l, k] / (L K))`` (Eqs. 3.9-3.11);
    without a gate, plain attention ``attn @ value``.
    """
    out = attn @ value
    if gate is None:
        return out
    lines, keys = attn.shape[1], attn.shape[3]
    return out * gate(out.sum(1) / (lines * keys)).unsqueeze(1)


def grouped_step(attn: torch.Tensor, value: torch.Tensor, gate: Optional[nn.Module], groups: int) -> torch.Tensor:
    """
    The same step as :func:`collapsed_step` by Algorithm 2's grouped vectorization: the query axis
    (length Q) is zero-padded by (-Q) mod G to G groups of ceil(Q / G) queries; for each group the
    reweighted values alpha = attn[q, k] value[k] (Eqs. 3.6 / 3.7) are materialised as a
    [group, N, L, K, C] tensor, gated (Eqs. 3.9 / 3.10) and summed over the key axis; the groups are
    concatenated and the padding removed. ``groups`` = 1 is the ungrouped vectorization.
    """
    if groups < 1:
        raise ValueError(f"CAA.GROUPS={groups}: expected >= 1")
    n, lines, queries, keys = attn.shape
    size = math.ceil(queries / groups)
    attn = F.pad(attn, (0, 0, 0, (-queries) % groups)).permute(2, 0, 1, 3)  # (G * size, N, L, K)
    outs = []
    for g in range(groups):
        alpha = attn[g * size : (g + 1) * size, ..., None] * value  # (size, N, L, K, C)
        if gate is not None:
            alpha = alpha * gate(alpha.sum((2, 3)) / (lines * keys))[:, :, None, None]
        outs.append(alpha.sum(3))  # (size, N, L, C)
    return torch.cat(outs)[:queries].permute(1, 2, 0, 3)


def _affinity(q: torch.Tensor) -> torch.Tensor:
    """(N, L, P, d) shared query/key features -> (N, L, P, P) softmax over keys of q . k (Eqs. 3.2-3.4)."""
    return torch.softmax(q @ q.transpose(-1, -2), dim=-1)


class ChannelizedAttention(nn.Module):
    """
    Channelized axial attention (thesis Sec. 3.3.2, Eqs. 3.3-3.11; module docstring), or with
    ``attention="self"`` channelized self-attention (Table 3.3). No residual connection.
    (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        key_channels: int = 64,
        *,
        attention: str = "axial",
        channelized: bool = True,
        gate_layers: int = 5,
        gate_hidden: int = 128,
        gate_slope: float = 0.2,
        implementation: str = "collapsed",
        groups: int = 4,
        norm: str = "BN",
    ):
        super().__init__()
        if attention not in _ATTENTIONS:
            raise ValueError(f"CAA.ATTENTION={attention!r}: expected one of {_ATTENTIONS}")
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(f"CAA.IMPLEMENTATION={implementation!r}: expected one of {_IMPLEMENTATIONS}")
        if groups < 1:
            raise ValueError(f"CAA.GROUPS={groups}: expected >= 1")
        self.axial = attention == "axial"
        self.implementation = implementation
        self.groups = groups
        steps = 2 if self.axial else 1  # axial: column (theta) then row (phi)
        self.value = conv_norm_act(channels, channels, 1, norm)
        self.queries = nn.ModuleList([conv_norm_act(channels, key_channels, 1, norm) for _ in range(steps)])
        self.gates = None
        if channelized:
            self.gates = nn.ModuleList(
                [ChannelGate(channels, gate_hidden, gate_layers, gate_slope) for _ in range(steps)]
            )

    def _step(self, index: int, attn: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        gate = None if self.gates is None else self.gates[index]
        if self.implementation == "collapsed":
            return collapsed_step(attn, value, gate)
        return grouped_step(attn, value, gate, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        v = self.value(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        if not self.axial:
            q = self.queries[0](x).flatten(2).transpose(1, 2)[:, None]  # (N, 1, HW, d)
            out = self._step(0, _affinity(q), v.reshape(n, 1, h * w, c)).view(n, h, w, c)
            return out.permute(0, 3, 1, 2)
        # Column step: lines = the W columns, queries/keys = rows i/m (Eqs. 3.3, 3.6, 3.9).
        q_col = self.queries[0](x).permute(0, 3, 2, 1)  # (N, W, H, d)
        col = self._step(0, _affinity(q_col), v.transpose(1, 2))  # (N, W, H, C)
        # Row step on the column output: lines = the H rows, queries/keys = columns j/n (3.4, 3.7, 3.10).
        q_row = self.queries[1](x).permute(0, 2, 3, 1)  # (N, H, W, d)
        out = self._step(1, _affinity(q_row), col.transpose(1, 2))  # (N, H, W, C)
        return out.permute(0, 3, 1, 2)


@DECODE_HEAD_REGISTRY.register()
class CAAHead(DecodeHead):
    """
    The CAA head (thesis ch. 3, Fig. 3.5, as in the authors' released implementation):
    ``IN_FEATURES[-1]`` (N, C_in, h, w) -> 3x3 conv-BN-ReLU to CHANNELS -> :class:`ChannelizedAttention`
    (no residual) -> 1x1 conv-BN-ReLU; concatenated with the image-level branch (GAP of the head
    input -> 1x1 conv-BN-ReLU to CHANNELS -> broadcast; ``CAA.IMAGE_POOLING``) -> the
    :class:`HeadTail` to ``CAA.OUT_CHANNELS`` (256) -> classifier (whose dropout 0.1 is the
    authors' dropout). The authors' last block is a 1x1 conv: set ``LAST_CONV_KERNEL: 1`` (as
    ``configs/ade20k/caa_r50-d8_512x512_80k.yaml`` does); the node default 3 gives a 3x3 conv.

    Output: the pixel feature ``(N, OUT_CHANNELS, h, w)`` (+ ``"reg_feature"``).
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_stride: int,
        reduce: nn.Module,
        attention: ChannelizedAttention,
        post: nn.Module,
        image_pool: Optional[ImagePooling],
        tail: HeadTail,
    ):
        super().__init__(in_feature=in_feature, out_channels=tail.out_channels, out_stride=in_stride)
        self.reduce = reduce
        self.attention = attention
        self.post = post
        self.image_pool = image_pool
        self.tail = tail

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        caa = node.CAA
        inputs = input_feature(node, input_shape)
        in_channels, ch, norm = inputs["in_channels"], node.CHANNELS, node.NORM
        if ch % caa.GATE_REDUCTION:
            raise ValueError(f"{prefix}.CAA.GATE_REDUCTION={caa.GATE_REDUCTION} must divide CHANNELS={ch}")
        attention = ChannelizedAttention(
            ch,
            caa.KEY_CHANNELS,
            attention=caa.ATTENTION,
            channelized=caa.CHANNELIZED,
            gate_layers=caa.GATE_LAYERS,
            gate_hidden=ch // caa.GATE_REDUCTION,
            gate_slope=caa.GATE_SLOPE,
            implementation=caa.IMPLEMENTATION,
            groups=caa.GROUPS,
            norm=norm,
        )
        image_pool = ImagePooling(in_channels, ch, norm) if caa.IMAGE_POOLING else None
        tail_in = 2 * ch if caa.IMAGE_POOLING else ch
        return {
            "in_feature": inputs["in_feature"],
            "in_stride": inputs["in_stride"],
            "reduce": conv_norm_act(in_channels, ch, 3, norm),
            "attention": attention,
            "post": conv_norm_act(ch, ch, 1, norm),
            "image_pool": image_pool,
            "tail": HeadTail.from_node(node, tail_in, caa.OUT_CHANNELS or ch),
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        x = features[self.in_feature]
        out = self.post(self.attention(self.reduce(x)))
        if self.image_pool is not None:
            out = torch.cat([out, self.image_pool(x)], dim=1)
        return self.tail(out)
