"""
ECENet's decoder (Sec. 3.5, Fig. 3): backbone stages F_1..F_L (finest first; L = 4 in the paper)
-> FR (Eqs. 1-2, optional) -> 1x1 conv (with bias) to C channels, ``X_1..X_L`` ->

1. ``M_L = Mask(X_L)`` (Eq. 4), ``G = ECE(M_L)`` (Eq. 5);
2. for stages ``i = L-1, ..., 1``: ``X_i', S_i = SA(X_i, G)`` (Eqs. 6-7),
   ``G = Updater(ECE_i(S_i), G)`` (Eqs. 8-10), each stage with its own SA, ECE and updater
   (``share_ece`` makes all ECE uses one module);
3. class logits ``Linear(C -> N + 1)`` on every ``G`` (one shared class head); masks
   ``M_L, S_{L-1}, ..., S_1`` bilinearly resized to stride ``stride_1`` and summed cumulatively
   (the last sum is ``M_sum``);
4. ``pred = Aggregation(X_1', ..., X_{L-1}', X_L) + einsum(softmax(cls)[..., :N], sigmoid(M_sum))``
   (:mod:`.aggregation`), (B, N, H_1, W_1).

Every Linear (attention, Mix-FFN, ECE, updater, class head) is initialised ViT/SegViT-style:
truncated normal with std 0.02, bias 0.
"""
import itertools
from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ..layers import conv_norm_act, resize
from .aggregation import GhostShuffleAggregation
from .ece import ExplicitClassExtraction, build_mask_head, ece_pool_size
from .fr import FeatureReconstruction
from .semantics_attention import SemanticsAttention
from .updater import build_updater


class ECENetDecoder(nn.Module):
    """
    forward(features: dict name -> (B, C_i, H_i, W_i)) -> dict with

    - ``"pred"``: (B, N, H_1, W_1) fused logits;
    - ``"pred_logits"``: list of L (B, N, N + 1) class logits, from the first ``G`` to the final one;
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
        pool_size: int,
        embed_dim: int = 256,
        norm: str = "BN",
        fr_enabled: bool = True,
        se_ratio: int = 4,
        se_gate: str = "sigmoid",
        share_ece: bool = False,
        num_heads: int = 8,
        mlp_ratio: int = 4,
        updater: str = "gated",
        align_corners: bool = False,
    ):
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
        self.in_features = list(in_features)
        self.align_corners = align_corners
        self.fr = None
        if fr_enabled:
            self.fr = nn.ModuleList(
                FeatureReconstruction(c, se_ratio=se_ratio, se_gate=se_gate, norm=norm) for c in in_channels
            )
        self.unify = nn.ModuleList(conv_norm_act(c, embed_dim, 1, norm="", act=False) for c in in_channels)
        self.mask_head = build_mask_head(embed_dim, num_classes)
        self.eces = nn.ModuleList(
            ExplicitClassExtraction(pool_size, embed_dim) for _ in range(1 if share_ece else num_stages)
        )
        self.attentions = nn.ModuleList(
            SemanticsAttention(embed_dim, num_heads, mlp_ratio) for _ in range(num_stages - 1)
        )
        self.updaters = nn.ModuleList(build_updater(updater, embed_dim) for _ in range(num_stages - 1))
        self.aggregation = GhostShuffleAggregation(
            embed_dim, num_classes, [s // in_strides[0] for s in in_strides], norm
        )
        self.class_head = nn.Linear(embed_dim, num_classes + 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
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
            "pool_size": ece_pool_size(num_classes, e.ECE.ALPHA, e.ECE.POOL_SIZE),
            "embed_dim": e.EMBED_DIM,
            "norm": e.NORM,
            "fr_enabled": e.FR.ENABLED,
            "se_ratio": e.FR.SE_RATIO,
            "se_gate": e.FR.SE_GATE,
            "share_ece": e.ECE.SHARED,
            "num_heads": e.NUM_HEADS,
            "mlp_ratio": e.MLP_RATIO,
            "updater": e.UPDATER,
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
        probs = class_logits[-1].softmax(dim=-1)[..., :-1]
        pred = self.aggregation(enhanced) + torch.einsum("bqc,bqhw->bchw", probs, cumulative[-1].sigmoid())
        return {"pred": pred, "pred_logits": class_logits, "pred_masks": cumulative, "diverse": diverse}
