"""CAA (thesis ch. 3): the collapsed and the grouped (Algorithm 2) implementations against each other
and against a direct loop over Eqs. 3.6-3.11, in float64."""
import math

import pytest
import torch
from torch import nn

from segcls.modeling.heads.caa import ChannelGate, ChannelizedAttention, collapsed_step, grouped_step

N, C, D, H, W = 2, 6, 4, 5, 4


def make_attention(**kwargs):
    torch.manual_seed(0)
    att = ChannelizedAttention(C, D, gate_layers=5, gate_hidden=3, **kwargs).double()
    for m in att.modules():  # non-trivial BN statistics, then eval mode
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.5)
    return att.eval()


def softmax(logits):
    """Softmax of a list of scalars."""
    top = max(logits)
    e = [math.exp(v - top) for v in logits]
    return [v / sum(e) for v in e]


def loop_axial(att, x):
    """Direct loop over Eqs. 3.3-3.11 (column attention of column j on column j's values, then row
    attention on the column output; gates per query row / query column from means over H * W)."""
    theta, phi, g = att.queries[0](x), att.queries[1](x), att.value(x)
    identity = lambda v: 1  # noqa: E731  (no channelization: alpha, beta unscaled)
    gate_col, gate_row = (identity, identity) if att.gates is None else att.gates
    y = torch.zeros_like(g)
    for n in range(N):
        alpha = {}  # Eq. 3.6
        for i in range(H):
            for j in range(W):
                a = softmax([float(theta[n, :, i, j] @ theta[n, :, m, j]) for m in range(H)])  # Eq. 3.3
                for m in range(H):
                    alpha[i, j, m] = a[m] * g[n, :, m, j]
        c = {}
        for i in range(H):
            s = gate_col(sum(alpha[i, j, m] for j in range(W) for m in range(H)) / (H * W))  # Eq. 3.9
            for j in range(W):
                c[i, j] = sum(s * alpha[i, j, m] for m in range(H))
        beta = {}  # Eq. 3.7
        for i in range(H):
            for j in range(W):
                a = softmax([float(phi[n, :, i, j] @ phi[n, :, i, k]) for k in range(W)])  # Eq. 3.4
                for k in range(W):
                    beta[i, j, k] = a[k] * c[i, k]
        for j in range(W):
            s = gate_row(sum(beta[i, j, k] for i in range(H) for k in range(W)) / (H * W))  # Eq. 3.10
            for i in range(H):
                y[n, :, i, j] = sum(s * beta[i, j, k] for k in range(W))  # Eq. 3.11
    return y


def loop_self(att, x):
    """Channelized self-attention (Table 3.3): alpha[p, q] = A(p, q) g(x_q) over all pixels; one gate per
    query pixel p from sum_q alpha[p, q] / (H W); y[p] = sum_q gate * alpha[p, q]."""
    theta, g = att.queries[0](x).flatten(2), att.value(x).flatten(2)
    y = torch.zeros_like(g)
    for n in range(N):
        for p in range(H * W):
            a = softmax([float(theta[n, :, p] @ theta[n, :, q]) for q in range(H * W)])
            alpha = [a[q] * g[n, :, q] for q in range(H * W)]
            s = att.gates[0](sum(alpha) / (H * W))
            y[n, :, p] = sum(s * v for v in alpha)
    return y.view(N, C, H, W)


@pytest.fixture(scope="module")
def x():
    return torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("channelized", [True, False])
def test_collapsed_and_grouped_equal_the_loop(x, channelized):
    att = make_attention(channelized=channelized)
    with torch.no_grad():
        expected = loop_axial(att, x)
        torch.testing.assert_close(att(x), expected, rtol=0, atol=1e-10)
        att.implementation = "grouped"
        # G = 1 (ungrouped), 2 (divides W=4, not H=5), 3 (divides neither), 5 (divides H, not W), 7 (> H, W).
        for groups in (1, 2, 3, 5, 7):
            att.groups = groups
            torch.testing.assert_close(att(x), expected, rtol=0, atol=1e-10)


def test_channelization_changes_the_output(x):
    """The gates matter (so the loop comparison above can tell a wrong gate from none)."""
    att = make_attention()
    with torch.no_grad():
        gated = att(x)
        att.gates = None
        assert (gated - att(x)).abs().max() > 1e-3


def test_channelized_self_attention_equals_the_loop(x):
    att = make_attention(attention="self")
    with torch.no_grad():
        expected = loop_self(att, x)
        torch.testing.assert_close(att(x), expected, rtol=0, atol=1e-10)
        att.implementation = "grouped"
        for groups in (1, 3, 20):
            att.groups = groups
            torch.testing.assert_close(att(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 6, 9])
def test_steps_agree_on_random_attention(groups):
    """Both step implementations on a random (N, L, Q, K) attention with Q = 7, with and without gate."""
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(2, 3, 7, 5, dtype=torch.float64), -1)
    value = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    gate = ChannelGate(4, 2).double()
    with torch.no_grad():
        for g in (gate, None):
            torch.testing.assert_close(
                grouped_step(attn, value, g, groups), collapsed_step(attn, value, g), rtol=0, atol=1e-12
            )


def test_gate_structure():
    """Sec. 3.3.2.3: 5 hidden bias-free linear layers of width C/4 with LeakyReLU(0.2), a bias-free
    linear layer back to C, sigmoid."""
    gate = ChannelGate(512, 128)
    linears = [m for m in gate.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 128)] + [(128, 128)] * 4 + [(128, 512)]
    assert all(m.bias is None for m in linears)
    acts = [m for m in gate.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 5 and all(a.negative_slope == 0.2 for a in acts)
    assert isinstance(gate.mlp[-1], nn.Sigmoid)


def test_grouped_backward_matches_collapsed(x):
    att = make_attention()
    att.train()
    x = x.clone().requires_grad_(True)
    torch.manual_seed(0)
    (att(x) ** 2).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    att.implementation, att.groups = "grouped", 2
    torch.manual_seed(0)
    (att(x) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, grad, rtol=0, atol=1e-10)
