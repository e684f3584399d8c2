"""
ECENet's decoder (Sec. 3.5, Fig. 3): backbone stages F_1..F_L (finest first; L = 4 in the paper)
-> FR (Eqs. 1-2, optional) -> 1x1 conv to C channels (bias: ``UNIFY_BIAS``, released False),
``X_1..X_L`` ->

1. ``M_L = Mask(X_L)`` (Eq. 4), ``G = ECE(M_L)`` (Eq. 5);
2. for stages ``i = L-1, ..., 1``: ``X_i', S_i = SA(X_i, G)`` (Eqs. 6-7),
   ``G = Updater(ECE_i(S_i), G)`` (Eqs. 8-10), each stage with its own SA, ECE and updater
   (``share_ece`` makes all ECE uses one module);
3. masks ``M_L, S_{L-1}, ..., S_1`` bilinearly resized to stride ``stride_1`` and summed
   cumulatively (the last sum is ``T = M_sum``);
4. ``pred = Aggregation(X_1', ..., X_{L-1}', X_L) + gate`` (:mod:`.aggregation`), (B, N, H_1, W_1),
   with the class head (``CLASS_HEAD``) on every ``G``:

   - ``"diagonal"`` (released, ``shared/specs/ecenet_released.md`` Sec. 1.8):
     ``K = Linear(C -> N)(G)`` (B, N, N), ``P = softmax over the last axis``,
     ``gate[b, k] = P[b, k, k] * sigmoid(T[b, k])``: embedding k is tied to class k and only its
     own entry gates mask k;
   - ``"no_object"`` (paper-literal, SegViT-style): ``Linear(C -> N + 1)``,
     ``gate = einsum("bqc,bqhw->bchw", softmax(K)[..., :N], sigmoid(T))``: every embedding
     contributes to every class.

Every Linear (attention, Mix-FFN, ECE, updater, class head) is initialised ViT/SegViT-style:
truncated normal with std 0.02, bias 0.
"""
import itertools
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from fvcore.nn import weight_init
from torch import nn

from ..layers import resize
from .aggregation import GhostShuffleAggregation
from .ece import ExplicitClassExtraction, build_mask_head, ece_levels
from .fr import FeatureReconstruction
from .semantics_attention import SemanticsAttention
from .updater import build_updater

UPSAMPLE_SCALES = ("level", "stride")


def diagonal_gate(class_logits: torch.Tensor, mask_sum: torch.Tensor) -> torch.Tensor:
    """The released gate (spec Sec. 1.8): (B, N, N) class logits ``K`` and (B, N, H, W) summed mask
    logits ``T`` -> ``softmax(K)[b, k, k] * sigmoid(T[b, k])``, (B, N, H, W)."""
    probs = class_logits.softmax(dim=-1).diagonal(dim1=1, dim2=2)
    return probs[:, :, None, None] * mask_sum.sigmoid()


def no_object_gate(class_logits: torch.Tensor, mask_sum: torch.Tensor) -> torch.Tensor:
    """The paper-literal (SegViT-style) gate: (B, N, N + 1) class logits and (B, N, H, W) summed mask
    logits -> ``einsum("bqc,bqhw->bchw", softmax(K)[..., :N], sigmoid(T))``, (B, N, H, W)."""
    return torch.einsum("bqc,bqhw->bchw", class_logits.softmax(dim=-1)[..., :-1], mask_sum.sigmoid())


# MODEL.ECENET.CLASS_HEAD -> (extra class-head outputs beyond N, gate).
CLASS_HEADS = {"diagonal": (0, diagonal_gate), "no_object": (1, no_object_gate)}


class ECENetDecoder(nn.Module):
    """
    forward(features: dict name -> (B, C_i, H_i, W_i)) -> dict with

    - ``"pred"``: (B, N, H_1, W_1) fused logits;
    - ``"pred_logits"``: list of L (B, N, N + 1) (``"no_object"``) or (B, N, N) (``"diagonal"``)
      class logits, from the first ``G`` to the final one;
    - ``"pred_masks"``: list of L (B, N, H_1, W_1) cumulative mask sums (``M_L``, ``M_L + S_{L-1}``,
      ..., ``M_sum``), paired with ``"pred_logits"``;
    - ``"diverse"``: list of the FR diverse-branch features (B, C_i // 2, H_i, W_i) (empty without FR).
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        pool_sizes,
        embed_dim: int = 256,
        norm: str = "BN",
        fr_enabled: bool = True,
        fr_options: Optional[dict] = None,
        unify_bias: bool = True,
        mask_groups: int = 1,
        mask_bias: bool = True,
        share_ece: bool = False,
        num_heads: int = 8,
        mlp_ratio: int = 4,
        attention_options: Optional[dict] = None,
        updater: str = "gated",
        updater_tail: bool = False,
        class_head: str = "no_object",
        upsample_scales: str = "stride",
        aggregation_options: Optional[dict] = None,
        align_corners: bool = False,
    ):
        """Keyword defaults: the paper-literal reading; ``from_config`` (``MODEL.ECENET.*``) defaults
        to the released head. ``fr_options``: keywords of :class:`FeatureReconstruction`,
        ``attention_options`` of :class:`SemanticsAttention`, ``aggregation_options`` of
        :class:`GhostShuffleAggregation`. ``pool_sizes``: the ECE levels (an int S = ``1..S``).
        ``upsample_scales``: the aggregation's factor of level i (0-based) is ``stride_i / stride_1``
        (``"stride"``) or ``2^i`` (``"level"``, the released code's fixed factors; the upsampled maps
        are then resized to level 1's size, which differs only for a dilated backbone)."""
        super().__init__()
        num_stages = len(in_features)
        if num_stages < 2 or len(in_channels) != num_stages or len(in_strides) != num_stages:
            raise ValueError(
                f"MODEL.ECENET.IN_FEATURES={list(in_features)}: need at least 2 features, each with a channel "
                "count and stride"
            )
        if any(s % in_strides[0] or s < p for p, s in zip(in_strides, in_strides[1:])):
            raise ValueError(
                f"MODEL.ECENET.IN_FEATURES={list(in_features)} have strides {list(in_strides)}: expected finest first, "
                f"each stride a multiple of the first"
            )
        if upsample_scales not in UPSAMPLE_SCALES:
            raise ValueError(
                f"MODEL.ECENET.UPSAMPLE_SCALES={upsample_scales!r}: expected one of {list(UPSAMPLE_SCALES)}"
            )
        if class_head not in CLASS_HEADS:
            raise ValueError(f"MODEL.ECENET.CLASS_HEAD={class_head!r}: expected one of {list(CLASS_HEADS)}")
        self.in_features = list(in_features)
        self.align_corners = align_corners
        self.fr = None
        if fr_enabled:
            self.fr = nn.ModuleList(FeatureReconstruction(c, norm=norm, **(fr_options or {})) for c in in_channels)
        self.unify = nn.ModuleList(nn.Conv2d(c, embed_dim, 1, bias=unify_bias) for c in in_channels)
        for conv in self.unify:
            weight_init.c2_msra_fill(conv)
        self.mask_head = build_mask_head(embed_dim, num_classes, mask_groups, mask_bias)
        self.eces = nn.ModuleList(
            ExplicitClassExtraction(pool_sizes, embed_dim) for _ in range(1 if share_ece else num_stages)
        )
        self.attentions = nn.ModuleList(
            SemanticsAttention(embed_dim, num_heads, mlp_ratio, **(attention_options or {}))
            for _ in range(num_stages - 1)
        )
        self.updaters = nn.ModuleList(build_updater(updater, embed_dim, updater_tail) for _ in range(num_stages - 1))
        if upsample_scales == "level":
            scales = [2**i for i in range(num_stages)]
        else:
            scales = [s // in_strides[0] for s in in_strides]
        self.aggregation = GhostShuffleAggregation(
            embed_dim,
            num_classes,
            scales,
            norm,
            align_corners=align_corners,
            **(aggregation_options or {}),
        )
        extra, self.gate = CLASS_HEADS[class_head]
        self.class_head = nn.Linear(embed_dim, num_classes + extra)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        e = cfg.MODEL.ECENET
        missing = [f for f in e.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.ECENET.IN_FEATURES={list(e.IN_FEATURES)}: {missing} not among the backbone's outputs "
                f"{sorted(input_shape)}"
            )
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        return {
            "in_features": e.IN_FEATURES,
            "in_channels": [input_shape[f].channels for f in e.IN_FEATURES],
            "in_strides": [input_shape[f].stride for f in e.IN_FEATURES],
            "num_classes": num_classes,
            "pool_sizes": ece_levels(num_classes, e.ECE.ALPHA, e.ECE.POOL_SIZE, e.ECE.LEVELS),
            "embed_dim": e.EMBED_DIM,
            "norm": e.NORM,
            "fr_enabled": e.FR.ENABLED,
            "fr_options": {
                "se_ratio": e.FR.SE_RATIO,
                "se_gate": e.FR.SE_GATE,
                "se_bias": e.FR.SE_BIAS,
                "cheap_relu": e.FR.CHEAP_RELU,
                "out_norm": e.FR.OUT_NORM,
                "diverse_first": e.FR.DIVERSE_FIRST,
            },
            "unify_bias": e.UNIFY_BIAS,
            "mask_groups": e.ECE.MASK_GROUPS,
            "mask_bias": e.ECE.MASK_BIAS,
            "share_ece": e.ECE.SHARED,
            "num_heads": e.NUM_HEADS,
            "mlp_ratio": e.MLP_RATIO,
            "attention_options": {
                "query": e.ATTENTION.QUERY,
                "query_act": e.ATTENTION.QUERY_ACT,
                "kv": e.ATTENTION.KV,
                "softmax": e.ATTENTION.SOFTMAX,
            },
            "updater": e.UPDATER,
            "updater_tail": e.UPDATER_TAIL,
            "class_head": e.CLASS_HEAD,
            "upsample_scales": e.UPSAMPLE_SCALES,
            "aggregation_options": {"upsample": e.UPSAMPLE, "fusion": e.FUSION, "dropout": e.FUSION_DROPOUT},
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
        }

    def ece(self, use: int) -> nn.Module:
        """The ECE of use ``use`` (0: the first masks, k: the k-th SAU stage)."""
        return self.eces[0 if len(self.eces) == 1 else use]

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        xs, diverse = [], []
        for i, name in enumerate(self.in_features):
            f = features[name]
            if self.fr is not None:
                f, d = self.fr[i](f)
                diverse.append(d)
            xs.append(self.unify[i](f))
        masks = [self.mask_head(xs[-1])]  # Eq. 4
        embeddings = [self.ece(0)(masks[0])]  # Eq. 5
        enhanced = [xs[-1]]
        for use, i in enumerate(reversed(range(len(xs) - 1)), start=1):
            x, sim = self.attentions[use - 1](xs[i], embeddings[-1])  # Eqs. 6-7
            enhanced.insert(0, x)
            masks.append(sim)
            embeddings.append(self.updaters[use - 1](self.ece(use)(sim), embeddings[-1]))  # Eqs. 8-10
        size = xs[0].shape[-2:]
        cumulative = list(itertools.accumulate(resize(m, size, self.align_corners) for m in masks))
        class_logits = [self.class_head(g) for g in embeddings]
        pred = self.aggregation(enhanced) + self.gate(class_logits[-1], cumulative[-1])
        return {"pred": pred, "pred_logits": class_logits, "pred_masks": cumulative, "diverse": diverse}
