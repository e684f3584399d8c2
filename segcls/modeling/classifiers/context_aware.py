"""
CAC: the context-aware classifier (Tian et al., "Learning Context-aware Classifiers for Semantic
Segmentation", AAAI 2023), written once as a classifier plug-in that works with every per-pixel
head (select it with ``MODEL.CLASSIFIER.NAME: ContextAwareClassifier``; keys under ``MODEL.CAC``).

The name is "ContextAwareClassifier" / ``MODEL.CAC``; CSFRN's "Class-Aware Consistency" lives
under ``MODEL.CSFRN``.

Notation (the paper's): ``f`` (N, d, h, w) is the head's pixel feature, ``C`` (K, d) and ``b`` (K,)
the weight and bias of the ordinary 1x1 classifier, ``y`` the labels, ``tau`` the cosine scale.
Where the paper is silent the authors' released implementation is followed; each rule is stated
next to the function that implements it.

Training outputs (a :class:`~segcls.modeling.outputs.SegOutputs`, Eq. 8):
predictions ``main`` = p_p, ``static`` = p, ``oracle`` = p_y, each (N, K, h, w), and the
ready-made term ``loss_cac_kl`` = lambda_KL * L_KL. Inference returns the main prediction p_p only.

Loss rules of the released code (the default; every term has weight 1, Eq. 8):

- ``L_p^ce`` on p_p (``loss_ce``): the main prediction carries no loss spec, so it gets
  ``MODEL.DECODE_HEAD.LOSSES`` with ``MODEL.ALIGN_CORNERS`` (False: bilinear,
  align_corners=False, as the inference resize); the shipped CAC configs set
  ``MODEL.LOSS.CE_NORMALIZATION: "all"`` (sum over valid pixels / all B*H*W label pixels,
  mmsegmentation's ``CrossEntropyLoss`` with ``avg_non_ignore=False``, which the released code runs);
- ``L^ce`` on p (``loss_static_ce``) and ``L_y^ce`` on p_y (``loss_oracle_ce``): their own loss
  spec, a cross-entropy after a bilinear resize with ``MODEL.CAC.SIDE_LOSS_ALIGN_CORNERS`` (True)
  and normalisation ``MODEL.CAC.SIDE_LOSS_NORMALIZATION`` ("valid": the mean over valid pixels,
  ``nn.CrossEntropyLoss(ignore_index)``), with ``MODEL.LOSS.CLASS_WEIGHTS``;
- ``L_KL`` (``loss_cac_kl``) on the feature grid, see :meth:`ContextAwareClassifier.distillation_loss`.

The paper alone states one standard CE for the three terms: ``SIDE_LOSS_ALIGN_CORNERS`` equal to
``MODEL.ALIGN_CORNERS`` and ``SIDE_LOSS_NORMALIZATION`` equal to ``MODEL.LOSS.CE_NORMALIZATION``.
"""
from typing import Optional, Tuple

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from ..losses import CrossEntropyLoss, PixelLossSet
from ..outputs import MAIN, Prediction, SegOutputs
from ..precision import float32
from ..registry import CLASSIFIER_REGISTRY

EPS = 1e-12

# MODEL.CAC.FUSION -> (projector input: "concat" = [C_* || C] (2d), "add" = C_* + C (d),
# "proto" = C_* (d); projector used; C added to the projector's output). Table 5 of the paper.
FUSIONS = {
    "concat_proj": ("concat", True, False),  # (#) A = theta([C_* || C]), Eqs. 2 and 5 (default)
    "concat_proj_residual": ("concat", True, True),  # (e) A = theta([C_* || C]) + C
    "add_proj": ("add", True, False),  # (d) A = theta(C_* + C)
    "add": ("add", False, False),  # (b) A = C_* + C
    "proto_proj": ("proto", True, False),  # (c) A = theta(C_*)
    "proto": ("proto", False, False),  # (a) A = C_*
}
SIMILARITIES = ("cos", "dot")
ENTROPY_SOURCES = ("oracle", "estimated", "static", "none")


def add_cac_config(cfg):
    """``MODEL.CAC``: the context-aware classifier's keys (used with
    ``MODEL.CLASSIFIER.NAME: ContextAwareClassifier``). Defaults = the paper's main setting."""
    cfg.MODEL.CAC = CN()
    # tau: scale of the cosine logits p_y, p_p = tau * cos(f, A_*) (Eqs. 3, 6). Paper: 15
    # (Table 4 (1)-(3) try 5, 10, 20).
    cfg.MODEL.CAC.TAU = 15.0
    # lambda_KL: weight of the distillation loss L_KL in Eq. 8. Paper: 1 (Table 2 (g), (h): 0.1, 10;
    # 0 = no distillation, Table 2 (d) / Table 3 (a)).
    cfg.MODEL.CAC.KL_WEIGHT = 1.0
    # Weight s of the oracle's soft prediction in the distillation target
    # t = s * softmax(p_y) + (1 - s) * onehot(y). Released implementation: 0.5; 1.0 = the paper's
    # pure soft target sigma(p_y) of Eqs. 7, 10, 11.
    cfg.MODEL.CAC.KL_SOFT_WEIGHT = 0.5
    # Class-wise distillation (Eq. 11): a weighted mean per class present in the labels, then the
    # mean over those classes. False = one weighted mean over all labelled pixels (Eqs. 7, 10).
    cfg.MODEL.CAC.KL_CLASSWISE = True
    # Pixel weights of the distillation: the entropy (Eq. 9) of "oracle" softmax(p_y) (paper),
    # "estimated" softmax(p_p) or "static" softmax(p) (Table 3 (1), (2)), or "none" (weight 1).
    # Table 3: (b) vanilla = KL_CLASSWISE False + "none"; (c) entropy = False + "oracle";
    # (d) class-wise = True + "none"; (e) class-wise entropy = True + "oracle" (default).
    cfg.MODEL.CAC.KL_ENTROPY = "oracle"
    # Table 2's loss terms: CE on the original classifier's p ("pred_static", L^ce) and on the
    # oracle p_y ("pred_oracle", L_y^ce). With ORACLE_LOSS False and KL_WEIGHT > 0 the oracle
    # projector theta_y receives no gradient (Table 2 (e)) and is frozen (requires_grad False, so
    # DistributedDataParallel sees no unused parameter); with both off it is not built.
    cfg.MODEL.CAC.STATIC_LOSS = True
    cfg.MODEL.CAC.ORACLE_LOSS = True
    # The loss spec of the static and oracle predictions (L^ce, L_y^ce): a cross-entropy after a
    # bilinear resize to the label size with SIDE_LOSS_ALIGN_CORNERS, normalised by
    # SIDE_LOSS_NORMALIZATION ("valid" / "all", see MODEL.LOSS.CE_NORMALIZATION). Released code:
    # True / "valid" (nn.CrossEntropyLoss(ignore_index) on align_corners=True logits); the main
    # prediction p_p uses MODEL.DECODE_HEAD.LOSSES, MODEL.ALIGN_CORNERS, MODEL.LOSS.CE_NORMALIZATION.
    cfg.MODEL.CAC.SIDE_LOSS_ALIGN_CORNERS = True
    cfg.MODEL.CAC.SIDE_LOSS_NORMALIZATION = "valid"
    # How A_* is formed from the prototypes C_* and the classifier weight C (Table 5):
    # "concat_proj" theta([C_* || C]) (Eqs. 2, 5, default), "concat_proj_residual"
    # theta([C_* || C]) + C, "add_proj" theta(C_* + C), "add" C_* + C, "proto_proj" theta(C_*),
    # "proto" C_*. theta = Linear(in -> d/2, no bias) -> ReLU -> Linear(d/2 -> d).
    cfg.MODEL.CAC.FUSION = "concat_proj"
    # Table 4: similarity of the context-aware classifiers ("cos": tau * cos(f, A_*), Eqs. 3, 6;
    # "dot": f . A_*) and of the original classifier ("dot": conv1x1 with bias, the usual one;
    # "cos": tau * cos(f, C), no bias).
    cfg.MODEL.CAC.CONTEXT_SIMILARITY = "cos"
    cfg.MODEL.CAC.STATIC_SIMILARITY = "dot"
    # False = the original classifier alone (Table 4 (a)/(b)): pred = p, no projectors, no extra
    # losses; only STATIC_SIMILARITY and TAU apply.
    cfg.MODEL.CAC.CONTEXT = True


def _projector(in_dim: int, dim: int) -> nn.Sequential:
    """theta_*: Linear(in_dim -> d/2, no bias) -> ReLU -> Linear(d/2 -> d, bias) (paper Sec. 4.1)."""
    return nn.Sequential(nn.Linear(in_dim, dim // 2, bias=False), nn.ReLU(), nn.Linear(dim // 2, dim))


def _check_choice(key: str, value, choices):
    if value not in choices:
        raise ValueError(f"MODEL.CAC.{key}={value!r}: expected one of {list(choices)}")


@CLASSIFIER_REGISTRY.register()
class ContextAwareClassifier(nn.Module):
    """
    The context-aware classifier (CAC). Input ``x = f`` (N, d, h, w) and, in training, the padded
    labels ``targets`` (N, H, W) (any H >= h, W >= w; they are brought to the feature grid with
    PyTorch's legacy ``nearest``). See the module docstring for the outputs.

    Parameters: the original classifier (``conv``: C (K, d) and b (K,)) and two projectors
    ``theta_p`` / ``theta_y`` of 2d*d/2 + d/2*d + d parameters each (787,456 in total for d = 512).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        ignore_value: int = 255,
        dropout: float = 0.1,
        tau: float = 15.0,
        kl_weight: float = 1.0,
        kl_soft_weight: float = 0.5,
        kl_classwise: bool = True,
        kl_entropy: str = "oracle",
        static_loss: bool = True,
        oracle_loss: bool = True,
        side_loss: Optional[PixelLossSet] = None,
        fusion: str = "concat_proj",
        context_similarity: str = "cos",
        static_similarity: str = "dot",
        context: bool = True,
    ):
        super().__init__()
        _check_choice("FUSION", fusion, FUSIONS)
        _check_choice("CONTEXT_SIMILARITY", context_similarity, SIMILARITIES)
        _check_choice("STATIC_SIMILARITY", static_similarity, SIMILARITIES)
        _check_choice("KL_ENTROPY", kl_entropy, ENTROPY_SOURCES)
        if not tau > 0:
            raise ValueError(f"MODEL.CAC.TAU={tau}: must be > 0")
        if not kl_weight >= 0:
            raise ValueError(f"MODEL.CAC.KL_WEIGHT={kl_weight}: must be >= 0")
        if not 0.0 <= kl_soft_weight <= 1.0:
            raise ValueError(f"MODEL.CAC.KL_SOFT_WEIGHT={kl_soft_weight}: must be in [0, 1]")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MODEL.CLASSIFIER.DROPOUT={dropout}: must be in [0, 1)")
        if in_channels < 2:
            raise ValueError(f"ContextAwareClassifier needs a pixel feature of >= 2 channels, got {in_channels}")
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.tau = tau
        self.kl_weight = kl_weight
        self.kl_soft_weight = kl_soft_weight
        self.kl_classwise = kl_classwise
        self.kl_entropy = kl_entropy
        self.static_loss = static_loss
        self.oracle_loss = oracle_loss
        # Loss spec of p and p_y (None: the meta-architecture's default, the main one's).
        self.side_loss = side_loss
        self.fusion = fusion
        self.context_similarity = context_similarity
        self.static_similarity = static_similarity
        self.context = context

        # The original classifier p = conv1x1(dropout(f)) (mmsegmentation's conv_seg init).
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=static_similarity == "dot")
        nn.init.normal_(self.conv.weight, std=0.01)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

        self.theta_p = self.theta_y = None
        self.use_oracle = context and (oracle_loss or kl_weight > 0)
        proj_input, projected, _ = FUSIONS[fusion]
        if context and projected:
            in_dim = 2 * in_channels if proj_input == "concat" else in_channels
            self.theta_p = _projector(in_dim, in_channels)
            if self.use_oracle:
                self.theta_y = _projector(in_dim, in_channels)
                self.theta_y.requires_grad_(oracle_loss)

    @classmethod
    def from_config(cls, cfg, in_channels, num_classes):
        c = cfg.MODEL.CAC
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "dropout": cfg.MODEL.CLASSIFIER.DROPOUT,
            "tau": c.TAU,
            "kl_weight": c.KL_WEIGHT,
            "kl_soft_weight": c.KL_SOFT_WEIGHT,
            "kl_classwise": c.KL_CLASSWISE,
            "kl_entropy": c.KL_ENTROPY,
            "static_loss": c.STATIC_LOSS,
            "oracle_loss": c.ORACLE_LOSS,
            "side_loss": PixelLossSet(
                [
                    CrossEntropyLoss(
                        ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                        class_weights=list(cfg.MODEL.LOSS.CLASS_WEIGHTS),
                        normalization=c.SIDE_LOSS_NORMALIZATION,
                    )
                ],
                [1.0],
                align_corners=c.SIDE_LOSS_ALIGN_CORNERS,
            ),
            "fusion": c.FUSION,
            "context_similarity": c.CONTEXT_SIMILARITY,
            "static_similarity": c.STATIC_SIMILARITY,
            "context": c.CONTEXT,
        }

    @property
    def weight(self) -> torch.Tensor:
        """C: the original classifier's weight, (K, d)."""
        return self.conv.weight.flatten(1)

    # ---------------------------------------------------------------------------------------------
    # Building blocks (each one equation; public so that tests check them one by one)
    # ---------------------------------------------------------------------------------------------
    def static_logits(self, f: torch.Tensor) -> torch.Tensor:
        """p (N, K, h, w): the original classifier on ``dropout(f)`` (dropout in training only and
        only on this path). "dot": p = C dropout(f) + b; "cos" (Table 4 (b), (e)): tau * cos(., C)."""
        x = self.dropout(f)
        if self.static_similarity == "dot":
            return self.conv(x)
        return self.similarity_logits(x, self.weight, "cos")

    @float32
    def similarity_logits(self, f: torch.Tensor, A: torch.Tensor, similarity: Optional[str] = None) -> torch.Tensor:
        """
        Eqs. 3 and 6: p_* = tau * eta(f) eta(A_*)^T, i.e. tau * <f, A_k> / ((|f| + 1e-12)(|A_k| + 1e-12))
        per pixel and class (finite for an all-zero feature); "dot" (Table 4 (c)): <f, A_k>.

        f: (N, d, h, w); A: (K, d) shared by the batch or (N, K, d) per image. Returns (N, K, h, w).
        Float32 under autocast (norms and cosine; :func:`~segcls.modeling.precision.float32`).
        """
        similarity = similarity or self.context_similarity
        if similarity == "cos":
            A = A / (A.norm(dim=-1, keepdim=True) + EPS)
        if A.dim() == 2:
            logits = F.conv2d(f, A[:, :, None, None])
        else:
            logits = torch.einsum("nkd,ndhw->nkhw", A, f)
        if similarity == "cos":
            logits = logits * (self.tau / (f.norm(dim=1, keepdim=True) + EPS))
        return logits

    @staticmethod
    @float32
    def estimated_prototypes(f: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """
        Eq. 4: C_p[n, k] = sum_i softmax(p[n, :, i])_k f[n, :, i] / (sum_i softmax(p[n, :, i])_k + 1e-12):
        per image, softmax over classes, a weighted mean of f over all pixels; no labels.

        f: (N, d, h, w), p: (N, K, h, w). Returns (N, K, d). Float32 under autocast.
        """
        prob = F.softmax(p, dim=1)
        return torch.einsum("nkhw,ndhw->nkd", prob, f) / (prob.sum(dim=(2, 3))[..., None] + EPS)

    def downsample_labels(self, targets: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Labels (N, H, W) -> (N, h, w) on the feature grid with PyTorch's legacy ``nearest``
        (source index floor(i * H / h)), as the released implementation. Raises on a value that is
        neither a class in [0, K) nor the ignore value."""
        if targets.dim() != 3:
            raise ValueError(f"ContextAwareClassifier expects targets of shape (N, H, W), got {tuple(targets.shape)}")
        bad = (targets != self.ignore_value) & ((targets < 0) | (targets >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"label value {targets[bad][0].item()} is neither a class in [0, {self.num_classes}) "
                f"nor the ignore value {self.ignore_value} (MODEL.SEM_SEG_HEAD.NUM_CLASSES/IGNORE_VALUE)"
            )
        if tuple(targets.shape[-2:]) == tuple(size):
            return targets.long()
        return F.interpolate(targets[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()

    def one_hot(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Labels (N, h, w) -> M (N, K, h, w) with M[n, k, i] = [y_i == k]; ignore pixels are all-zero."""
        n, h, w = labels.shape
        index = torch.where(labels == self.ignore_value, torch.full_like(labels, self.num_classes), labels)
        onehot = torch.zeros(n, self.num_classes + 1, h, w, dtype=dtype, device=labels.device)
        return onehot.scatter_(1, index[:, None], 1.0)[:, : self.num_classes]

    @float32
    def oracle_prototypes(self, f: torch.Tensor, onehot: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Eq. 1: C_y[k] = sum_{n, i} [y_{n,i} = k] f[n, :, i] / sum_{n, i} [y_{n,i} = k]: one prototype per
        class pooled over the **whole batch** on this process, ignore pixels excluded; a class absent
        from the (downsampled) batch labels gets the **detached** classifier row C[k] (released
        implementation), so no gradient reaches C through it.

        f: (N, d, h, w); onehot: (N, K, h, w) from :meth:`one_hot`. Returns C_y (K, d) and the
        present-class mask (K,) bool. Float32 under autocast.
        """
        counts = onehot.sum(dim=(0, 2, 3))
        present = counts > 0
        sums = torch.einsum("nkhw,ndhw->kd", onehot, f)
        return torch.where(present[:, None], sums / counts.clamp(min=1)[:, None], self.weight.detach()), present

    def context_classifier(self, theta: Optional[nn.Module], prototypes: torch.Tensor) -> torch.Tensor:
        """
        Eqs. 2 and 5: A_* = theta_*([C_* || C]) (prototype first, then the live, not detached,
        classifier weight C without bias), or a Table 5 variant (``MODEL.CAC.FUSION``).

        prototypes: (K, d) or (N, K, d). Returns A_* of the same shape.
        """
        proj_input, _, residual = FUSIONS[self.fusion]
        C = self.weight.expand_as(prototypes)
        if proj_input == "concat":
            z = torch.cat([prototypes, C], dim=-1)
        elif proj_input == "add":
            z = prototypes + C
        else:
            z = prototypes
        if theta is None:
            return z
        A = theta(z)
        return A + C if residual else A

    @float32
    def distillation_loss(
        self, p_p: torch.Tensor, p_y: torch.Tensor, onehot: torch.Tensor, p: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        L_KL, Eq. 11 as released. With q = softmax(detach(p_y)) and the target
        t = s q + (1 - s) onehot(y) (s = KL_SOFT_WEIGHT, 0.5; s = 1 is the paper's sigma(p_y)), the
        per-pixel loss is l_i = -sum_k t_ik log softmax(p_p)_ik; the pixel weight is the entropy
        H_i = -sum_k q_ik log q_ik of Eq. 9 (natural log; detached; 0 at ignore pixels). For each
        class k present in the downsampled labels, sum_i M_ki H_i l_i / (sum_i M_ki H_i + 1e-12) over
        the batch, then the mean over the present classes (0, with a gradient path, if none).

        Variants (Table 3): ``KL_CLASSWISE`` False: one weighted mean over all labelled pixels
        (Eqs. 7, 10); ``KL_ENTROPY`` "estimated"/"static": H from detach(p_p)/detach(p); "none": H = 1.

        p_p, p_y, p: (N, K, h, w) logits; onehot: (N, K, h, w) from :meth:`one_hot`. Returns a scalar.
        Float32 under autocast (softmaxes, entropy).
        """
        q = F.softmax(p_y.detach(), dim=1)
        target = self.kl_soft_weight * q + (1.0 - self.kl_soft_weight) * onehot
        per_pixel = -(target * F.log_softmax(p_p, dim=1)).sum(dim=1)  # (N, h, w)
        valid = onehot.sum(dim=1)  # 1 at labelled pixels, 0 at ignore pixels
        if self.kl_entropy == "none":
            weight = valid
        else:
            source = {"oracle": p_y, "estimated": p_p, "static": p}[self.kl_entropy].detach()
            weight = -(F.softmax(source, dim=1) * F.log_softmax(source, dim=1)).sum(dim=1) * valid
        if not self.kl_classwise:
            return (weight * per_pixel).sum() / (weight.sum() + EPS)
        class_weight = onehot * weight[:, None]  # M_k^i H^i: (N, K, h, w)
        per_class = torch.einsum("nkhw,nhw->k", class_weight, per_pixel) / (class_weight.sum(dim=(0, 2, 3)) + EPS)
        present = (onehot.sum(dim=(0, 2, 3)) > 0).to(per_class.dtype)
        return (per_class * present).sum() / present.sum().clamp(min=1)

    # ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, targets: Optional[torch.Tensor] = None) -> SegOutputs:
        """
        x = f: (N, d, h, w) pixel feature; targets: (N, H, W) long labels (training only).
        Returns the main prediction p_p at inference and, in training, also the predictions
        ``static`` (p) and ``oracle`` (p_y) with the side loss spec and ``loss_cac_kl`` =
        lambda_KL * L_KL (terms switched off by the config are absent); with ``CONTEXT`` False,
        the main prediction p.
        """
        p = self.static_logits(x)
        if not self.context:
            return SegOutputs(predictions={MAIN: Prediction(p)})
        C_p = self.estimated_prototypes(x, p)
        p_p = self.similarity_logits(x, self.context_classifier(self.theta_p, C_p))
        out = SegOutputs(predictions={MAIN: Prediction(p_p)})
        if not self.training:
            return out
        if self.static_loss:
            out.predictions["static"] = Prediction(p, self.side_loss)
        if self.use_oracle:
            if targets is None:
                raise ValueError("ContextAwareClassifier needs targets in training (oracle prototypes, Eq. 1)")
            onehot = self.one_hot(self.downsample_labels(targets, x.shape[-2:]), x.dtype)
            C_y, _ = self.oracle_prototypes(x, onehot)
            p_y = self.similarity_logits(x, self.context_classifier(self.theta_y, C_y))
            if self.oracle_loss:
                out.predictions["oracle"] = Prediction(p_y, self.side_loss)
            if self.kl_weight > 0:
                out.losses["loss_cac_kl"] = self.kl_weight * self.distillation_loss(p_p, p_y, onehot, p)
        return out
