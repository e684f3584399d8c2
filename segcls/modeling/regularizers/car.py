"""
CAR: Class-Aware Regularizations (Huang et al., ECCV 2022; thesis ch. 4), a training-only plug-in
for every per-pixel head.

For each regularized head feature X (default ``"reg_feature"``, the output of the head's 1x1
projection with bias, see :class:`segcls.modeling.heads.tail.HeadTail`) CAR computes class centers
from the ground truth and adds three losses:

- intra-class center-to-pixel (Eqs. 2-3): pulls every pixel to its class center;
- inter-class center-to-center (Eqs. 4-7): pushes class centers apart;
- inter-class center-to-pixel (Eqs. 8-14): pushes pixels away from the other classes' centers.

The total is ``INTER_WEIGHT * (L_c2c + L_c2p) + INTRA_WEIGHT * L_intra`` (each term reported as
its own weighted loss). Nothing runs at inference: :class:`PerPixelSegmentor` calls regularizers
only in training, and CAR has no parameters.

Where the paper is ambiguous the authors' released implementation (which produced the paper's
numbers) decides; each such rule is stated next to its equation below. Notation: N images,
P = h * w pixels of the feature grid, C channels, K = ``N_class`` = the dataset's number of
classes (absent classes included).
"""
import math
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from ..outputs import SegOutputs
from ..precision import float32
from ..registry import REGULARIZER_REGISTRY

# Floor of L_intra-c2p (released implementation).
INTRA_C2P_FLOOR = 1e-5
# Per-row / per-pixel sums of the inter-class losses are clipped to [CLIP_EPS, 1 - CLIP_EPS].
CLIP_EPS = 1e-7


def add_car_config(cfg):
    """
    ``MODEL.CAR.*``: keys of :class:`CARRegularizer` (enable it with
    ``MODEL.REGULARIZERS.NAMES: ["CARRegularizer"]``; the paper's architecture also sets
    ``MODEL.DECODE_HEAD.REG_PROJECTION: True`` and, for change "A", ``LAST_CONV_KERNEL: 1``).
    """
    cfg.MODEL.CAR = CN()
    # Each loss on/off: L_intra-c2p (Eq. 3), L_inter-c2c (Eq. 7), L_inter-c2p (Eq. 14); Table 1's
    # ablations. Default: all three on.
    cfg.MODEL.CAR.INTRA_C2P = True
    cfg.MODEL.CAR.INTER_C2C = True
    cfg.MODEL.CAR.INTER_C2P = True
    # Total = INTER_WEIGHT * (L_c2c + L_c2p) + INTRA_WEIGHT * L_intra (both 1 in the paper).
    cfg.MODEL.CAR.INTRA_WEIGHT = 1.0
    cfg.MODEL.CAR.INTER_WEIGHT = 1.0
    # Released implementation's ``intra_class_loss_remove_max``: L_intra-c2p drops the largest
    # element of D over the pixels of each (image, channel) before the mean (over N * C * (P - 1)).
    # Default False, as released (and as in the paper).
    cfg.MODEL.CAR.INTRA_REMOVE_MAX = False
    # Margins: similarities above eps / (N_class - 1) are penalized. eps0 (Eq. 6) = 0.5; Table 2's
    # "§" runs use 0.25. eps1 (Eq. 13) = 0.25.
    cfg.MODEL.CAR.INTER_C2C_EPS = 0.5
    cfg.MODEL.CAR.INTER_C2P_EPS = 0.25
    # Class centers (Eq. 1): "batch" = over every image of the batch on every process (all-reduced
    # sums and counts), as in the paper; "image" = per image (thesis Table 4.3).
    cfg.MODEL.CAR.CENTERS = "batch"
    # > 0: batch centers tracked by a moving average with this decay (weight of the old center;
    # thesis Table 4.2 tries 0.8, 0.9, 0.99). 0 = off (paper default).
    cfg.MODEL.CAR.MOVING_AVERAGE_DECAY = 0.0
    # > 1: the feature is average-pooled with kernel = stride = POOLING_RATE before CAR (the
    # released UperNet and OCR heads use 2); labels are resized to the pooled grid. 1 = off.
    cfg.MODEL.CAR.POOLING_RATE = 1
    # Head outputs to regularize, each with its own centers; losses get a suffix per key when
    # several are given (DANet: ["reg_feature_pam", "reg_feature_cam"]). "reg_feature" falls
    # back to "pixel_feature" for a head without the regularization projection.
    cfg.MODEL.CAR.FEATURE_KEYS = ["reg_feature"]


# -------------------------------------------------------------------------------------------------
# Labels
# -------------------------------------------------------------------------------------------------
def align_corners_nearest_index(in_size: int, out_size: int, device=None) -> torch.Tensor:
    """
    Source indices of nearest-neighbour resizing with align-corners index rounding (TensorFlow's
    ``resize_nearest_neighbor(align_corners=True)``, used by the released implementation):
    ``src = round_half_away(dst * (in - 1) / (out - 1))``, ``src = 0`` when ``out == 1``.
    Computed exactly in integers (``dst >= 0``, so rounding half away from zero is
    ``floor(v + 1/2)``). Returns an (out_size,) long tensor.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize labels from size {in_size} to {out_size}")
    dst = torch.arange(out_size, device=device)
    if out_size == 1:
        return dst
    return (2 * dst * (in_size - 1) + (out_size - 1)) // (2 * (out_size - 1))


def resize_labels(labels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, H, W) labels -> (N, h, w) with :func:`align_corners_nearest_index` on each axis."""
    rows = align_corners_nearest_index(labels.shape[-2], size[0], labels.device)
    cols = align_corners_nearest_index(labels.shape[-1], size[1], labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols)


# -------------------------------------------------------------------------------------------------
# Class centers (Eq. 1)
# -------------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of a sum over processes is the sum of the
    processes' gradients (as TensorFlow's ``ReplicaContext.all_reduce``), so that with DDP's
    gradient averaging a loss on all-reduced centers gets the single-process gradient."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def class_centers(x: torch.Tensor, onehot: torch.Tensor, per_image: bool = False):
    """
    Eq. 1: ``mu = Y_flat^T X_flat / N_non-zero``.

    Args:
        x: (N, P, C) pixel features.
        onehot: (N, P, K) one-hot labels, all-zero rows for ignored pixels (so they count toward
            no center).
        per_image: centers per image (thesis Table 4.3); else over the whole batch on every
            process: sums and pixel counts are all-reduced under ``torch.distributed`` before the
            division (the sums differentiably, see :class:`_AllReduceSum`).
    Returns:
        centers (B, K, C) with B = N (per image) or 1 (batch) -- a class with no pixel has the
        center exactly 0 (no L2 normalization) -- and pixel counts (B, K).
    """
    sums = onehot.transpose(1, 2) @ x  # (N, K, C)
    counts = onehot.sum(1)  # (N, K)
    if not per_image:
        sums, counts = sums.sum(0, keepdim=True), counts.sum(0, keepdim=True)
        if _distributed():
            sums = _AllReduceSum.apply(sums)
            counts = counts.clone()
            dist.all_reduce(counts)
    return sums / counts.clamp(min=1).unsqueeze(-1), counts


# -------------------------------------------------------------------------------------------------
# The three losses. x: (N, P, C); onehot: (N, P, K); centers: (B, K, C), B in {1, N}.
# -------------------------------------------------------------------------------------------------
def intra_c2p_loss(
    x: torch.Tensor, onehot: torch.Tensor, centers: torch.Tensor, remove_max: bool = False
) -> torch.Tensor:
    """
    Eqs. 2-3: ``D = (1 - sigma) |Y_flat mu - X_flat|``, ``L = f_mse(D)``.

    Released-implementation rules: the centers are detached (constants); ``f_mse`` is the
    **square of the mean** of D over all N * P * C elements, ignored pixels contributing 0 but
    staying in the denominator; the result is floored at 1e-5 (``max(mean(D)^2, 1e-5)``).

    ``remove_max`` (``MODEL.CAR.INTRA_REMOVE_MAX``): the released implementation's option
    ``intra_class_loss_remove_max`` (off by default there and here). D is sorted along the pixels
    of each (image n, channel c), the largest value dropped, and the mean taken over the remaining
    N * C * (P - 1) elements (ignored pixels' zeros stay in), then squared and floored as above.
    Computed without sorting, as the sum minus the per-(n, c) maximum: the same sum, whatever the
    ties; ``max(dim)`` routes the gradient to a single index, so exactly one element of each
    (n, c) gets no gradient, as when one sorted element is dropped.
    """
    valid = onehot.sum(-1, keepdim=True)  # 1 - sigma: (N, P, 1)
    distance = valid * (onehot @ centers.detach() - x).abs()
    if not remove_max:
        return distance.mean().square().clamp(min=INTRA_C2P_FLOOR)
    n, p, c = distance.shape
    if p < 2:
        raise ValueError(f"MODEL.CAR.INTRA_REMOVE_MAX needs at least 2 pixels in the regularized feature, got {p}")
    kept = distance.sum() - distance.max(dim=1).values.sum()
    return (kept / (n * c * (p - 1))).square().clamp(min=INTRA_C2P_FLOOR)


def _thresholded_other_sum(similarity: torch.Tensor, other: torch.Tensor, eps: float) -> torch.Tensor:
    """Eqs. 6 / 13: ``f_sum(max(other * A - eps / (N_class - 1), 0))`` over the class axis, each sum
    clipped to [1e-7, 1 - 1e-7] (released implementation)."""
    num_classes = similarity.shape[-1]
    excess = (other * similarity - eps / (num_classes - 1)).clamp(min=0)
    return excess.sum(-1).clamp(CLIP_EPS, 1 - CLIP_EPS)


def inter_c2c_loss(centers: torch.Tensor, eps: float) -> torch.Tensor:
    """
    Eqs. 4-7: ``A = softmax(mu mu^T / sqrt(C))`` over each row, diagonal zeroed **after** the
    softmax (Eq. 5), thresholded row sums (Eq. 6), ``L = f_mse`` (Eq. 7).

    Released-implementation rules: the keys (right-hand ``mu``) are detached, the queries are not;
    ``f_mse`` is the square of the mean over all N_class rows (absent classes, whose center is 0,
    included; with per-image centers over all N * N_class rows).
    """
    num_classes, channels = centers.shape[-2:]
    similarity = torch.softmax(centers @ centers.detach().transpose(-1, -2) / math.sqrt(channels), dim=-1)
    off_diagonal = 1 - torch.eye(num_classes, dtype=centers.dtype, device=centers.device)
    return _thresholded_other_sum(similarity, off_diagonal, eps).mean().square()


def inter_c2p_loss(x: torch.Tensor, onehot: torch.Tensor, centers: torch.Tensor, eps: float) -> torch.Tensor:
    """
    Eqs. 8-14: ``Lambda_c2p = X_flat mu^T`` (Eq. 8); in each pixel's own ground-truth column the dot
    product is replaced by ``||mu_y||^2`` (Eqs. 9-10); softmax over classes (Eq. 11); the non-GT
    entries (Eq. 12) above ``eps / (N_class - 1)`` are summed per pixel (Eq. 13); ``L = f_mse``
    (Eq. 14).

    Released-implementation rules: the centers are detached; the logits ``Lambda'`` are divided
    by ``sqrt(C)`` before the softmax (as in Eq. 4); per-pixel sums are clipped to
    [1e-7, 1 - 1e-7]; ``f_mse`` is the square of the mean over all N * P pixels, ignored pixels
    included, with every class of an ignored pixel treated as "other" (its one-hot row is 0).
    """
    centers = centers.detach()
    logits = x @ centers.transpose(-1, -2)  # (N, P, K)
    logits = (1 - onehot) * logits + onehot * centers.square().sum(-1).unsqueeze(-2)
    similarity = torch.softmax(logits / math.sqrt(centers.shape[-1]), dim=-1)
    return _thresholded_other_sum(similarity, 1 - onehot, eps).mean().square()


# -------------------------------------------------------------------------------------------------
# The regularizer
# -------------------------------------------------------------------------------------------------
@REGULARIZER_REGISTRY.register()
class CARRegularizer(nn.Module):
    """
    CAR as a regularizer (REGULARIZER_REGISTRY contract): ``forward(head_outputs, targets)`` with
    the merged head + classifier outputs and the padded labels (N, H, W) at input resolution
    returns ``{"loss_car_intra_c2p", "loss_car_inter_c2c", "loss_car_inter_c2p"}`` (weighted;
    only the enabled ones; with several ``feature_keys`` each name gets the suffix ``_<key>``,
    ``"reg_feature_"`` stripped, e.g. ``loss_car_intra_c2p_pam``).

    Per feature X (N, C, h, w): optional ``pooling_rate`` average pooling (kernel = stride, partial
    windows at the bottom/right edges kept and averaged over their valid pixels, TensorFlow's
    "SAME"); labels resized to X's grid by :func:`resize_labels`; one-hot labels with zero rows for
    the ignore value; centers by :func:`class_centers`; the losses above. Computed in float32
    (autocast off) unless X is float64. No parameters; with ``moving_average_decay`` one buffer of
    running centers per feature key.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        ignore_value: int = 255,
        intra_c2p: bool = True,
        inter_c2c: bool = True,
        inter_c2p: bool = True,
        intra_weight: float = 1.0,
        inter_weight: float = 1.0,
        intra_remove_max: bool = False,
        inter_c2c_eps: float = 0.5,
        inter_c2p_eps: float = 0.25,
        centers: str = "batch",
        moving_average_decay: float = 0.0,
        pooling_rate: int = 1,
        feature_keys: List[str] = ("reg_feature",),
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"CAR needs at least 2 classes (thresholds eps / (N_class - 1)); "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes}"
            )
        if not (intra_c2p or inter_c2c or inter_c2p):
            raise ValueError(
                "MODEL.CAR.INTRA_C2P, INTER_C2C and INTER_C2P are all False: remove 'CARRegularizer' from "
                "MODEL.REGULARIZERS.NAMES instead"
            )
        for key, value in (("INTRA_WEIGHT", intra_weight), ("INTER_WEIGHT", inter_weight),
                           ("INTER_C2C_EPS", inter_c2c_eps), ("INTER_C2P_EPS", inter_c2p_eps)):
            if value < 0:
                raise ValueError(f"MODEL.CAR.{key}={value}: must be >= 0")
        if centers not in ("batch", "image"):
            raise ValueError(f"MODEL.CAR.CENTERS={centers!r}: expected 'batch' or 'image'")
        if not 0 <= moving_average_decay < 1:
            raise ValueError(f"MODEL.CAR.MOVING_AVERAGE_DECAY={moving_average_decay}: expected 0 (off) or in (0, 1)")
        if moving_average_decay > 0 and centers != "batch":
            raise ValueError(
                f"MODEL.CAR.MOVING_AVERAGE_DECAY={moving_average_decay} tracks batch centers; it cannot be used "
                f"with MODEL.CAR.CENTERS={centers!r}"
            )
        if int(pooling_rate) != pooling_rate or pooling_rate < 1:
            raise ValueError(f"MODEL.CAR.POOLING_RATE={pooling_rate}: expected an integer >= 1")
        feature_keys = list(feature_keys)
        if not feature_keys or len(set(feature_keys)) != len(feature_keys):
            raise ValueError(f"MODEL.CAR.FEATURE_KEYS={feature_keys}: expected one or more distinct head output names")
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.intra_c2p = intra_c2p
        self.inter_c2c = inter_c2c
        self.inter_c2p = inter_c2p
        self.intra_weight = intra_weight
        self.inter_weight = inter_weight
        self.intra_remove_max = bool(intra_remove_max)
        self.inter_c2c_eps = inter_c2c_eps
        self.inter_c2p_eps = inter_c2p_eps
        self.per_image = centers == "image"
        self.moving_average_decay = moving_average_decay
        self.pooling_rate = int(pooling_rate)
        self.feature_keys = feature_keys
        if moving_average_decay > 0:
            # (K, C) running centers per key, allocated on first use (C is the feature's channels).
            for i in range(len(feature_keys)):
                self.register_buffer(f"running_centers_{i}", torch.zeros(0))

    @classmethod
    def from_config(cls, cfg, in_channels, num_classes):
        c = cfg.MODEL.CAR
        return {
            "num_classes": num_classes,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "intra_c2p": c.INTRA_C2P,
            "inter_c2c": c.INTER_C2C,
            "inter_c2p": c.INTER_C2P,
            "intra_weight": c.INTRA_WEIGHT,
            "inter_weight": c.INTER_WEIGHT,
            "intra_remove_max": c.INTRA_REMOVE_MAX,
            "inter_c2c_eps": c.INTER_C2C_EPS,
            "inter_c2p_eps": c.INTER_C2P_EPS,
            "centers": c.CENTERS,
            "moving_average_decay": c.MOVING_AVERAGE_DECAY,
            "pooling_rate": c.POOLING_RATE,
            "feature_keys": c.FEATURE_KEYS,
        }

    def extra_repr(self):
        losses = [n for n, on in (("intra_c2p", self.intra_c2p), ("inter_c2c", self.inter_c2c),
                                  ("inter_c2p", self.inter_c2p)) if on]
        return (
            f"num_classes={self.num_classes}, losses={losses}, intra_weight={self.intra_weight}, "
            f"inter_weight={self.inter_weight}, intra_remove_max={self.intra_remove_max}, "
            f"eps0={self.inter_c2c_eps}, eps1={self.inter_c2p_eps}, "
            f"centers={'image' if self.per_image else 'batch'}, moving_average_decay={self.moving_average_decay}, "
            f"pooling_rate={self.pooling_rate}, feature_keys={self.feature_keys}"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Running centers are allocated lazily: take the checkpoint's shape.
        for name, buffer in self._buffers.items():
            loaded = state_dict.get(prefix + name)
            if loaded is not None and buffer.numel() == 0 and loaded.shape != buffer.shape:
                self._buffers[name] = torch.empty_like(loaded, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, outputs: SegOutputs, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """outputs: the head's :class:`~segcls.modeling.outputs.SegOutputs`, whose regularizer
        features ``feature_keys`` (N, C, h, w) are used ("reg_feature" falls back to the pixel
        feature); targets (N, H, W) long labels. Returns the weighted CAR losses (scalars)."""
        losses = {}
        for index, key in enumerate(self.feature_keys):
            suffix = ""
            if len(self.feature_keys) > 1:
                suffix = "_" + (key[len("reg_feature_") :] if key.startswith("reg_feature_") else key)
            try:
                x = outputs.reg_feature(key)
            except KeyError as e:
                raise KeyError(f"MODEL.CAR.FEATURE_KEYS: {e.args[0]}") from None
            for name, value in self.losses(x, targets, index).items():
                losses[name + suffix] = value
        return losses

    def losses(self, x: torch.Tensor, targets: torch.Tensor, index: int = 0) -> Dict[str, torch.Tensor]:
        """The CAR losses of one feature x (N, C, h, w) with labels (N, H, W); ``index`` selects
        the running centers of that feature key."""
        if x.dim() != 4 or targets.dim() != 3 or x.shape[0] != targets.shape[0]:
            raise ValueError(
                f"CAR expects features (N, C, h, w) and labels (N, H, W) with the same N, "
                f"got {tuple(x.shape)} and {tuple(targets.shape)}"
            )
        return self._float32_losses(x, targets, index)

    @float32
    def _float32_losses(self, x: torch.Tensor, targets: torch.Tensor, index: int) -> Dict[str, torch.Tensor]:
        """:meth:`losses` after the shape checks; the centers and softmaxes run in float32 under
        autocast (:func:`~segcls.modeling.precision.float32`)."""
        x, onehot = self.prepare(x, targets)
        centers, counts = class_centers(x, onehot, self.per_image)
        if self.moving_average_decay > 0:
            centers = self._moving_average(centers, counts, index)
        out = {}
        if self.intra_c2p:
            intra = intra_c2p_loss(x, onehot, centers, self.intra_remove_max)
            out["loss_car_intra_c2p"] = self.intra_weight * intra
        if self.inter_c2c:
            out["loss_car_inter_c2c"] = self.inter_weight * inter_c2c_loss(centers, self.inter_c2c_eps)
        if self.inter_c2p:
            out["loss_car_inter_c2p"] = self.inter_weight * inter_c2p_loss(x, onehot, centers, self.inter_c2p_eps)
        return out

    def prepare(self, x: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        The pixels CAR sees: x (N, C, h, w) in float32 (float64 kept), average-pooled by
        ``pooling_rate``, flattened to (N, P, C); labels (N, H, W) resized to its grid by
        :func:`resize_labels` and one-hot encoded (N, P, K), all-zero for ignored pixels.
        """
        if x.dtype != torch.float64:
            x = x.float()
        if self.pooling_rate > 1:
            x = F.avg_pool2d(x, self.pooling_rate, ceil_mode=True)
        labels = resize_labels(targets, x.shape[-2:]).flatten(1)  # (N, P)
        return x.flatten(2).transpose(1, 2), self._one_hot(labels, x.dtype)

    def _one_hot(self, labels: torch.Tensor, dtype) -> torch.Tensor:
        """(N, P) labels -> (N, P, K) one-hot, all-zero for the ignore value; other labels outside
        [0, K) raise ValueError."""
        valid = labels != self.ignore_value
        bad = valid & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"CAR: labels {labels[bad].unique()[:10].tolist()} are neither in [0, {self.num_classes}) "
                f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES={self.num_classes}) nor the ignore value "
                f"(MODEL.SEM_SEG_HEAD.IGNORE_VALUE={self.ignore_value})"
            )
        onehot = F.one_hot(torch.where(valid, labels, 0), self.num_classes).to(dtype)
        return onehot * valid.unsqueeze(-1).to(dtype)

    def _moving_average(self, centers: torch.Tensor, counts: torch.Tensor, index: int) -> torch.Tensor:
        """
        Moving-average centers (thesis Table 4.2, "similar to BatchNorm"): running centers start
        at 0 (as BatchNorm's running mean); a class present in the batch (on any process) gets
        ``decay * running + (1 - decay) * mu_batch``, an absent class keeps its running center.
        The result is both used by the losses and stored. The thesis does not say how gradients
        flow; here they flow through the current batch's share ``(1 - decay) * mu_batch`` (the
        stored running centers are constants).
        """
        name = f"running_centers_{index}"
        running = getattr(self, name)
        if running.numel() == 0:
            running = torch.zeros(centers.shape[1:], dtype=torch.float32, device=centers.device)
            setattr(self, name, running)
        old = running.to(centers.dtype, copy=True).unsqueeze(0)
        present = (counts > 0).unsqueeze(-1)
        d = self.moving_average_decay
        centers = torch.where(present, d * old + (1 - d) * centers, old)
        with torch.no_grad():
            running.copy_(centers[0])
        return centers
