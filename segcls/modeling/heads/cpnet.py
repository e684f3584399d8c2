"""
CPNet decode head (Yu et al., "Context Prior for Scene Segmentation", CVPR 2020; the paper is not
in /work/shared/papers, so its formulas are written out below with the paper's section and symbols).
"""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from torch import nn
from torch.nn import functional as F

from ...utils.config import get_config_node
from ..layers import conv_norm_act, resize
from ..outputs import SegOutputs
from ..registry import DECODE_HEAD_REGISTRY
from .base import DecodeHead, input_feature
from .config import head_keys
from .tail import HeadTail


@head_keys("CPNET", used_by=("CPHead",))
def declare_cpnet_keys(cpnet):
    """``CPNET.*``. PRIOR_SIZE: side P of the P x P grid the context prior map is predicted on (the
    feature-map size during training: crop / output stride, e.g. 480 / 8 = 60); features of another
    size are resized to P x P for the prior and back. AGGREGATION_KERNEL: k of the aggregation
    module's k x 1 / 1 x k separable convolutions (11 in the paper). AFFINITY_LOSS_WEIGHT: lambda_p
    of the affinity loss "loss_cpnet_affinity" (1.0)."""
    cpnet.PRIOR_SIZE = 64
    cpnet.AGGREGATION_KERNEL = 11
    cpnet.AFFINITY_LOSS_WEIGHT = 1.0


def ideal_affinity(labels: torch.Tensor, ignore_value: int):
    """
    CPNet, "Affinity Loss": the ideal affinity map ``A = L L^T`` of the one-hot labels L,
    i.e. ``a_ij = [l_i = l_j]``, and the mask of pairs whose two labels are both known.
    labels (N, n) long -> (A (N, n, n) float32, pairs (N, n, n) bool).
    """
    valid = labels != ignore_value
    affinity = (labels.unsqueeze(2) == labels.unsqueeze(1)).float()
    return affinity, valid.unsqueeze(2) & valid.unsqueeze(1)


def affinity_loss(prior_logits: torch.Tensor, labels: torch.Tensor, ignore_value: int) -> torch.Tensor:
    """
    CPNet's affinity loss ``L_p = lambda_u L_u + lambda_g L_g`` (CPNet "Affinity Loss", lambda_u = lambda_g = 1)
    between the predicted prior map ``P = sigmoid(prior_logits)`` and the ideal affinity map A:

    - unary term: the binary cross-entropy ``L_u = -mean_ij (a_ij log p_ij + (1 - a_ij) log(1 - p_ij))``;
    - global term, per row i (the released code sums over the second index; A is symmetric):
      precision ``T^p_i = log(sum_j a_ij p_ij / sum_j p_ij)``, recall
      ``T^r_i = log(sum_j a_ij p_ij / sum_j a_ij)``, specificity
      ``T^s_i = log(sum_j (1 - a_ij)(1 - p_ij) / sum_j (1 - a_ij))``, and
      ``L_g = -mean_i T^p_i - mean_i T^r_i - mean_i T^s_i``.

    Ignore label (not specified by the paper): pairs with an ignored pixel are left out of every sum
    and mean, and rows of ignored pixels are dropped. Each global term is averaged over the rows
    where it is defined: the specificity of a row whose image has no pixel of another class
    (``sum_j (1 - a_ij) = 0``) is skipped (the released code turns it into -log 0). Means run over
    the whole batch; logs are clamped at 1e-12. 0 if every pixel is ignored.

    prior_logits (N, n, n), labels (N, n) long -> scalar (float32).
    """
    affinity, pairs = ideal_affinity(labels, ignore_value)
    if not pairs.any():
        return prior_logits.sum() * 0.0
    logits = prior_logits.float()
    pairs = pairs.float()
    unary = (F.binary_cross_entropy_with_logits(logits, affinity, reduction="none") * pairs).sum() / pairs.sum()

    prob = logits.sigmoid() * pairs
    true_pos = (affinity * prob).sum(dim=2)
    negatives = ((1 - affinity) * pairs).sum(dim=2)
    rows = labels != ignore_value
    spec_rows = rows & (negatives > 0)

    def neg_log(x):
        return -torch.log(x.clamp(min=1e-12))

    precision = neg_log(true_pos / prob.sum(dim=2).clamp(min=1e-12))[rows].mean()
    recall = neg_log(true_pos / (affinity * pairs).sum(dim=2).clamp(min=1e-12))[rows].mean()
    specificity = ((1 - affinity) * (pairs - prob)).sum(dim=2) / negatives.clamp(min=1)
    specificity = neg_log(specificity)[spec_rows].mean() if spec_rows.any() else logits.sum() * 0.0
    return unary + precision + recall + specificity


class AggregationModule(nn.Module):
    """
    CPNet, "Aggregation Module": 3x3 conv-norm-ReLU (C_in -> C), then two fully separable
    (depthwise, spatially factorised) paths ``k x 1 -> 1 x k`` and ``1 x k -> k x 1``, summed,
    then norm and ReLU. (N, C_in, h, w) -> (N, C, h, w).
    """

    def __init__(self, in_channels, channels, kernel_size=11, norm="BN"):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CPNET.AGGREGATION_KERNEL={kernel_size}: must be a positive odd number")
        self.conv = conv_norm_act(in_channels, channels, 3, norm)

        def depthwise(kh, kw):
            return nn.Conv2d(channels, channels, (kh, kw), padding=(kh // 2, kw // 2), groups=channels, bias=False)

        k = kernel_size
        self.left = nn.Sequential(depthwise(k, 1), depthwise(1, k))
        self.right = nn.Sequential(depthwise(1, k), depthwise(k, 1))
        self.norm = get_norm(norm, channels) or nn.Identity()

    def forward(self, x):
        x = self.conv(x)
        return F.relu(self.norm(self.left(x) + self.right(x)))


@DECODE_HEAD_REGISTRY.register()
class CPHead(DecodeHead):
    """
    CPNet's context prior head (CPNet "Context Prior Layer", Fig. 2):

    - X~ = :class:`AggregationModule` (C_in -> C) of the backbone feature X;
    - context prior map ``P = sigmoid(BN(conv1x1(X~)))`` with P^2 output channels, reshaped to
      (N, P^2, P^2): entry (i, j) = channel j at position i, the predicted affinity of pixels i, j
      on the P x P grid (``CPNET.PRIOR_SIZE``). The map needs the feature on that grid: X~ of any
      other size is bilinearly resized to P x P for this step and the contexts back (the paper
      trains and tests on fixed-size crops where h = w = P and no resizing happens);
    - intra-prior context ``Y = P X~ / P^2`` and inter-prior context ``Y_bar = (1 - P) X~ / P^2``
      (normalised by the number of positions, as the released code), each followed by a 1x1
      conv-norm-ReLU (C -> C);
    - ``"pixel_feature" = tail([X, Y, Y_bar])``, the :class:`HeadTail` (C_in + 2C -> C).

    In training, ``"loss_cpnet_affinity"`` = ``CPNET.AFFINITY_LOSS_WEIGHT`` x :func:`affinity_loss`
    of the prior map against the ideal affinity of the labels downsampled (nearest) to P x P.
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        in_stride: int,
        channels: int,
        tail: HeadTail,
        prior_size: int,
        aggregation_kernel: int = 11,
        affinity_loss_weight: float = 1.0,
        ignore_value: int = 255,
        norm: str = "BN",
        align_corners: bool = False,
    ):
        super().__init__(in_feature=in_feature, out_channels=channels, out_stride=in_stride)
        if prior_size < 1:
            raise ValueError(f"CPNET.PRIOR_SIZE={prior_size}: must be >= 1")
        self.prior_size = prior_size
        self.affinity_loss_weight = affinity_loss_weight
        self.ignore_value = ignore_value
        self.align_corners = align_corners
        self.aggregation = AggregationModule(in_channels, channels, aggregation_kernel, norm)
        self.prior_conv = conv_norm_act(channels, prior_size**2, 1, norm, act=False)
        self.intra_conv = conv_norm_act(channels, channels, 1, norm)
        self.inter_conv = conv_norm_act(channels, channels, 1, norm)
        self.tail = tail

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        inputs = input_feature(node, input_shape)
        return {
            **inputs,
            "channels": node.CHANNELS,
            "tail": HeadTail.from_node(node, inputs["in_channels"] + 2 * node.CHANNELS),
            "prior_size": node.CPNET.PRIOR_SIZE,
            "aggregation_kernel": node.CPNET.AGGREGATION_KERNEL,
            "affinity_loss_weight": node.CPNET.AFFINITY_LOSS_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "norm": node.NORM,
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        x = features[self.in_feature]
        aggregated = self.aggregation(x)
        n, c, h, w = aggregated.shape
        side = self.prior_size
        grid = resize(aggregated, (side, side), self.align_corners)
        prior_logits = self.prior_conv(grid).flatten(2).transpose(1, 2)  # (N, P^2 positions i, P^2 pixels j)
        value = grid.flatten(2)  # (N, C, P^2)
        intra = torch.einsum("bij,bcj->bci", prior_logits.sigmoid(), value) / side**2
        inter = value.mean(dim=2, keepdim=True) - intra  # sum_j (1 - p_ij) v_j / P^2
        context = resize(torch.cat([intra, inter], dim=1).view(n, 2 * c, side, side), (h, w), self.align_corners)
        out = self.tail(torch.cat([x, self.intra_conv(context[:, :c]), self.inter_conv(context[:, c:])], dim=1))
        if self.training and targets is not None:
            labels = F.interpolate(targets.unsqueeze(1).float(), size=(side, side), mode="nearest")
            labels = labels.long().flatten(1)
            loss = affinity_loss(prior_logits, labels, self.ignore_value)
            out.losses["loss_cpnet_affinity"] = self.affinity_loss_weight * loss
        return out
