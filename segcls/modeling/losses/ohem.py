"""
Online hard example mining (OHEM) cross-entropy, in its two common forms. Both select pixels
without gradient, then take :class:`CrossEntropyLoss`'s class-weighted mean over the selection.
"""
import torch
from detectron2.config import configurable

from ..registry import PIXEL_LOSS_REGISTRY
from .cross_entropy import CrossEntropyLoss


@PIXEL_LOSS_REGISTRY.register()
class OhemTopKCrossEntropyLoss(CrossEntropyLoss):
    """
    The top-k-percent form of detectron2's DeepLab project (``DeepLabCE`` with
    ``top_k_percent_pixels``, from DeepLab's TF code): the cross-entropy averaged over the
    ``k = max(1, int(top_k_percent * n_valid))`` valid pixels with the largest cross-entropy.
    ``top_k_percent = 1`` is the plain cross-entropy.

    Difference from ``DeepLabCE``: ``n_valid`` counts non-ignored pixels only (``DeepLabCE`` counts
    ignored pixels, whose loss is 0, in both ``k`` and the mean); with class weights the mean is
    :class:`CrossEntropyLoss`'s weighted mean of the selected pixels (ranked by unweighted loss).

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "ohem_topk"

    @configurable
    def __init__(self, *, ignore_value: int = 255, class_weights=None, normalization: str = "valid", top_k_percent: float = 0.2):
        super().__init__(ignore_value=ignore_value, class_weights=class_weights, normalization=normalization)
        if not 0.0 < top_k_percent <= 1.0:
            raise ValueError(f"MODEL.LOSS.TOP_K_PERCENT={top_k_percent}: must be in (0, 1]")
        self.top_k_percent = top_k_percent

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return {**super().from_config(cfg, ignore_value), "top_k_percent": cfg.MODEL.LOSS.TOP_K_PERCENT}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.pixel_losses(logits, targets)
        valid = targets != self.ignore_value
        with torch.no_grad():
            valid_losses = losses[valid]
            k = max(1, int(self.top_k_percent * valid_losses.numel())) if valid_losses.numel() else 0
            selected = torch.zeros_like(valid_losses, dtype=torch.bool)
            selected[valid_losses.topk(k).indices] = True
            keep = torch.zeros_like(valid)
            keep[valid] = selected
        return self.reduce(losses, targets, keep)


OHEM_SELECTIONS = ("count", "threshold")
OHEM_NORMALIZATIONS = ("kept", "valid", "all")


@PIXEL_LOSS_REGISTRY.register()
class OhemCrossEntropyLoss(CrossEntropyLoss):
    """
    The threshold / min-kept form used by OCNet/OCR (``OhemCrossEntropy``), mmsegmentation's
    ``OHEMPixelSampler`` and CSFRN (Table 6). With ``p_i`` the predicted probability of pixel
    ``i``'s ground-truth class and ``m = min_kept * N`` (N = batch size, mmsegmentation's per-image
    count), the kept pixels are (``selection``, ``MODEL.LOSS.OHEM_SELECTION``):

    - ``"count"`` (default): the valid pixels with ``p_i < thresh``, or, if fewer than ``m``, the
      ``min(m, n_valid)`` lowest-probability valid pixels;
    - ``"threshold"``: the released code's rule (HRNet-OCR ``OhemCrossEntropy``, mmsegmentation
      1.2.2 ``OHEMPixelSampler``): ``p_i < max(thresh, p_sorted[min(m, n_valid - 1)])``. It
      equals ``"count"`` except for ties at the boundary and when ``m >= n_valid`` (it then
      drops the most confident pixel(s)).

    The loss (``normalization``, ``MODEL.LOSS.OHEM_NORMALIZATION``) is ``sum_kept w_{y_i} l_i / Z``
    with ``Z`` =

    - ``"kept"`` (default): ``sum_kept w_{y_i}``, the (class-weighted) mean over the kept pixels,
      as HRNet-OCR's released ``OhemCrossEntropy``;
    - ``"valid"``: the number of valid pixels (mmsegmentation's ``OHEMPixelSampler`` with
      ``CrossEntropyLoss(avg_non_ignore=True)``: the sampler's 0/1 weights, averaged over the
      non-ignored pixels);
    - ``"all"``: the number of label pixels N*H*W (mmsegmentation's default
      ``avg_non_ignore=False``).

    With few kept pixels "kept" is several times "valid"/"all". ``MODEL.LOSS.CE_NORMALIZATION``
    does not apply here.

    logits: (N, K, H, W); targets: (N, H, W) long. Returns a scalar (0 if every pixel is ignored).
    """

    name = "ohem"

    @configurable
    def __init__(
        self,
        *,
        ignore_value: int = 255,
        class_weights=None,
        normalization: str = "kept",
        thresh: float = 0.7,
        min_kept: int = 100000,
        selection: str = "count",
    ):
        if normalization not in OHEM_NORMALIZATIONS:
            raise ValueError(f"MODEL.LOSS.OHEM_NORMALIZATION={normalization!r}: expected one of {list(OHEM_NORMALIZATIONS)}")
        if selection not in OHEM_SELECTIONS:
            raise ValueError(f"MODEL.LOSS.OHEM_SELECTION={selection!r}: expected one of {list(OHEM_SELECTIONS)}")
        super().__init__(ignore_value=ignore_value, class_weights=class_weights, normalization="valid")
        self.ohem_normalization = normalization
        self.selection = selection
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"MODEL.LOSS.OHEM_THRESH={thresh}: must be in (0, 1]")
        if min_kept < 0:
            raise ValueError(f"MODEL.LOSS.OHEM_MIN_KEPT={min_kept}: must be >= 0")
        self.thresh = thresh
        self.min_kept = min_kept

    @classmethod
    def from_config(cls, cfg, ignore_value):
        return {
            **super().from_config(cfg, ignore_value),
            "normalization": cfg.MODEL.LOSS.OHEM_NORMALIZATION,
            "thresh": cfg.MODEL.LOSS.OHEM_THRESH,
            "min_kept": cfg.MODEL.LOSS.OHEM_MIN_KEPT,
            "selection": cfg.MODEL.LOSS.OHEM_SELECTION,
        }

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.pixel_losses(logits, targets)
        valid = targets != self.ignore_value
        with torch.no_grad():
            # Probability of the ground-truth class: p_y = exp(-CE).
            prob = torch.exp(-losses[valid].float())
            batch_kept = self.min_kept * targets.shape[0]
            if self.selection == "threshold":
                sorted_prob = prob.sort().values
                boundary = sorted_prob[min(batch_kept, prob.numel() - 1)] if prob.numel() else 0.0
                selected = prob < max(float(boundary), self.thresh)
            else:
                num_keep = max(int((prob < self.thresh).sum()), min(batch_kept, prob.numel()))
                selected = torch.zeros_like(prob, dtype=torch.bool)
                selected[prob.argsort()[:num_keep]] = True
            keep = torch.zeros_like(valid)
            keep[valid] = selected
        if self.ohem_normalization == "kept":
            return self.reduce(losses, targets, keep)
        weights = keep.to(losses.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights.to(losses.dtype)[targets.masked_fill(~keep, 0)]
        total = (losses * weights).sum()
        return total / max(int(valid.sum()) if self.ohem_normalization == "valid" else targets.numel(), 1)
