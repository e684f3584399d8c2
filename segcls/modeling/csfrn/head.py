"""
CSFRN (Consistent-Separable Feature Representation Network, AAAI 2021, paper 003) as a decode-head
wrapper that works with every per-pixel head: ``MODEL.DECODE_HEAD.NAME: "CSFRNHead"`` and
``MODEL.CSFRN.BASE_HEAD`` naming the wrapped head (built from the same config node, unchanged).

- CSFLM (Fig. 1): A = the backbone feature ``MODEL.CSFRN.IN_FEATURE`` (default ``res5``, C5) or
  the base head's pixel feature (``"head"``); A' = 3x3 conv (MID_CHANNELS) + norm + ReLU;
  B = 1x1 conv to C' = EMBED_DIM channels (no activation): the feature embedding, at inference the
  C-S feature X; Cmap = 1x1 conv to 1 channel (no activation): the margins, computed in training
  only. B and Cmap feed :func:`~segcls.modeling.csfrn.loss.class_aware_consistency_loss`.
- AAM (Eq. 6, Fig. 2): Y = the base head's pixel feature (pre-classifier); E = 3x3 conv
  (concat[X, Y]) -> 2*3*3 offsets, weight and bias initialised to 0 (a plain convolution at
  start); X' = DeformConv3x3(X, E), Y' = DeformConv3x3(Y, E) (same offsets, widths kept, norm +
  ReLU after each); F = 1x1 conv(concat[X', Y']) -> width of Y, norm + ReLU: the pixel feature
  that feeds the classifier. Without AAM the pixel feature is concat[X, Y].
- If X and Y differ in size (e.g. DeepLabV3+'s decoder at stride 4 with A = res5 at stride 8), X
  is resized bilinearly (``MODEL.ALIGN_CORNERS``) to Y's grid for the aggregation; the losses use
  B at its own resolution.

Outputs: the base head's :class:`SegOutputs` (predictions, losses, regularizer features pass
through) with ``pixel_feature`` replaced, plus in training the ready-made
``loss_csfrn_consistency`` (= CONSISTENCY_WEIGHT * L_cac) and ``loss_csfrn_smooth``
(= SMOOTH_WEIGHT * L_smooth, only with margins).
"""
from typing import Dict, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F
from torchvision.ops import DeformConv2d

from ..heads.config import validate_head_node
from ..layers import conv_norm_act, resize
from ..outputs import SegOutputs
from ..precision import float32
from ..registry import DECODE_HEAD_REGISTRY
from .loss import LOSS_TYPES, class_aware_consistency_loss

HEAD_FEATURE = "head"


INITS = ("small", "msra")


class CSFLM(nn.Module):
    """
    Consistent-Separable Feature Learning Module: A (N, C_in, h, w) -> B (N, C', h, w) and, if
    ``with_margins`` and asked for, Cmap (N, 1, h, w).

    ``init`` (``MODEL.CSFRN.INIT``; the paper does not say, no code was released): "small"
    (default) draws B's 1x1 conv from N(0, 0.01^2) and zeroes Cmap's weight and bias, so training
    starts with ``||b - s_k||^2`` of order 0.1-1 and ``exp(delta * m_k) = 1`` (the "w/o margins"
    kernel), inside the range where the consistency loss has a gradient. "msra" (He init, fan
    out, on both; segcls before this key) gives Cmap a weight std of sqrt(2) over 128 inputs:
    margins of +-10-50 at init, ``exp(10 m)`` of 0 or inf, so the scores start saturated at +-1,
    the Lovasz hinge and the smooth loss drive the margins negative and the consistency loss stays
    at its constant degenerate value (all scores 1) with no gradient, measured on the embedded
    benchmark.
    """

    def __init__(self, in_channels: int, mid_channels: int = 128, embed_dim: int = 32, norm: str = "BN",
                 with_margins: bool = True, init: str = "small"):  # fmt: skip
        super().__init__()
        if init not in INITS:
            raise ValueError(f"MODEL.CSFRN.INIT={init!r}: expected one of {INITS}")
        self.trunk = conv_norm_act(in_channels, mid_channels, 3, norm)
        self.embed = nn.Conv2d(mid_channels, embed_dim, 1)
        self.margin = nn.Conv2d(mid_channels, 1, 1) if with_margins else None
        if init == "small":
            nn.init.normal_(self.embed.weight, std=0.01)
            nn.init.zeros_(self.embed.bias)
            if self.margin is not None:
                nn.init.zeros_(self.margin.weight)
                nn.init.zeros_(self.margin.bias)
        else:
            for conv in (self.embed, self.margin):
                if conv is not None:
                    weight_init.c2_msra_fill(conv)

    def forward(self, a: torch.Tensor, margins: bool = True):
        hidden = self.trunk(a)
        b = self.embed(hidden)
        c = self.margin(hidden) if (margins and self.margin is not None) else None
        return b, c


class _DeformNormAct(nn.Module):
    """3x3 deformable conv (offsets given, no modulation mask) -> norm -> ReLU; widths kept.
    Float32 under autocast: torchvision's CPU deformable convolution has no bfloat16 kernel."""

    def __init__(self, channels: int, norm: str = "BN"):
        super().__init__()
        self.conv = DeformConv2d(channels, channels, 3, padding=1, bias=not norm)
        weight_init.c2_msra_fill(self.conv)
        self.norm = get_norm(norm, channels) if norm else None

    @float32
    def forward(self, x, offset):
        x = self.conv(x, offset)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x)


class AAM(nn.Module):
    """Adaptive feature Aggregation Module (Eq. 6, Fig. 2): X (N, C', h, w), Y (N, C, h, w) ->
    F (N, C, h, w)."""

    def __init__(self, x_channels: int, y_channels: int, norm: str = "BN"):
        super().__init__()
        self.offset = nn.Conv2d(x_channels + y_channels, 2 * 3 * 3, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.deform_x = _DeformNormAct(x_channels, norm)
        self.deform_y = _DeformNormAct(y_channels, norm)
        self.fuse = conv_norm_act(x_channels + y_channels, y_channels, 1, norm)
        self.out_channels = y_channels

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        offset = self.offset(torch.cat([x, y], dim=1))
        return self.fuse(torch.cat([self.deform_x(x, offset), self.deform_y(y, offset)], dim=1))


@DECODE_HEAD_REGISTRY.register()
class CSFRNHead(nn.Module):
    """CSFLM + Class-Aware Consistency / smooth losses + AAM around any decode head (module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        base_head: nn.Module,
        in_feature: str,
        in_channels: int,
        mid_channels: int = 128,
        embed_dim: int = 32,
        norm: str = "BN",
        init: str = "small",
        aam: bool = True,
        aam_norm: str = "BN",
        loss_type: str = "lovasz",
        use_margins: bool = True,
        delta: float = 10.0,
        margin_clamp: float = 50.0,
        margin_clamp_always: bool = False,
        bce_eps: float = 1e-6,
        consistency_weight: float = 0.2,
        smooth_weight: float = 0.2,
        ignore_value: int = 255,
        align_corners: bool = False,
    ):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"MODEL.CSFRN.LOSS_TYPE={loss_type!r}: expected one of {LOSS_TYPES}")
        self.base_head = base_head
        self.in_feature = in_feature
        self.csflm = CSFLM(in_channels, mid_channels, embed_dim, norm, with_margins=use_margins, init=init)
        y_channels = base_head.out_channels
        self.aam = AAM(embed_dim, y_channels, aam_norm) if aam else None
        self.out_channels = y_channels if aam else y_channels + embed_dim
        self.out_stride = base_head.out_stride
        self.loss_type = loss_type
        self.use_margins = use_margins
        self.delta = delta
        self.margin_clamp = margin_clamp
        self.margin_clamp_always = margin_clamp_always
        self.bce_eps = bce_eps
        self.consistency_weight = consistency_weight
        self.smooth_weight = smooth_weight
        self.ignore_value = ignore_value
        self.align_corners = align_corners

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = cfg.MODEL.CSFRN
        if node.BASE_HEAD == cls.__name__:
            raise ValueError("MODEL.CSFRN.BASE_HEAD must name the wrapped head, not CSFRNHead itself")
        validate_head_node(cfg, prefix, head_name=node.BASE_HEAD)  # the node is read by the wrapped head
        base_head = DECODE_HEAD_REGISTRY.get(node.BASE_HEAD)(cfg, input_shape, prefix=prefix)
        if node.IN_FEATURE == HEAD_FEATURE:
            in_channels = base_head.out_channels
        elif node.IN_FEATURE in input_shape:
            in_channels = input_shape[node.IN_FEATURE].channels
        else:
            raise ValueError(
                f"MODEL.CSFRN.IN_FEATURE={node.IN_FEATURE!r}: expected {HEAD_FEATURE!r} or a backbone feature of {sorted(input_shape)}"
            )
        return {
            "base_head": base_head,
            "in_feature": node.IN_FEATURE,
            "in_channels": in_channels,
            "mid_channels": node.MID_CHANNELS,
            "embed_dim": node.EMBED_DIM,
            "norm": node.NORM,
            "init": node.INIT,
            "aam": node.AAM.ENABLED,
            "aam_norm": node.AAM.NORM,
            "loss_type": node.LOSS_TYPE,
            "use_margins": node.USE_MARGINS,
            "delta": node.DELTA,
            "margin_clamp": node.MARGIN_CLAMP,
            "margin_clamp_always": node.MARGIN_CLAMP_ALWAYS,
            "bce_eps": node.BCE_EPS,
            "consistency_weight": node.CONSISTENCY_WEIGHT,
            "smooth_weight": node.SMOOTH_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
        }

    def losses(self, embedding: torch.Tensor, margin: Optional[torch.Tensor], targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Weighted L_cac and L_smooth of B (N, C', h, w), Cmap (N, 1, h, w) and the labels (N, H, W)."""
        amp = torch.is_autocast_enabled(embedding.device.type) if hasattr(torch, "is_autocast_enabled") else False
        clamp = self.margin_clamp if (self.margin_clamp_always or amp) else 0.0
        cac, smooth = class_aware_consistency_loss(
            embedding,
            margin,
            targets,
            ignore_value=self.ignore_value,
            delta=self.delta,
            loss_type=self.loss_type,
            use_margins=self.use_margins,
            margin_clamp=clamp,
            bce_eps=self.bce_eps,
        )
        out = {"loss_csfrn_consistency": self.consistency_weight * cac}
        if self.use_margins:
            out["loss_csfrn_smooth"] = self.smooth_weight * smooth
        return out

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None) -> SegOutputs:
        base = self.base_head(features, targets)
        y = base.pixel_feature
        a = y if self.in_feature == HEAD_FEATURE else features[self.in_feature]
        train_losses = self.training and targets is not None
        embedding, margin = self.csflm(a, margins=train_losses)
        x = embedding
        if x.shape[-2:] != y.shape[-2:]:
            x = resize(x, y.shape[-2:], self.align_corners)
        fused = self.aam(x, y) if self.aam is not None else torch.cat([x, y], dim=1)
        out = SegOutputs().merge(base)
        out.pixel_feature = fused
        if train_losses:
            for name, value in self.losses(embedding, margin, targets).items():
                out._add(out.losses, name, value)
        return out
