"""
The typed output contract of decode heads and classifiers.

A head's or classifier's ``forward`` returns one :class:`SegOutputs`:

- ``pixel_feature`` (N, C, h, w): the feature that feeds the classifier (heads set it);
- ``reg_features``: named features a regularizer such as CAR acts on (``"reg_feature"`` by
  default; DANet adds ``"reg_feature_pam"`` / ``"reg_feature_cam"``); a regularizer asking for
  ``"reg_feature"`` of a head that set none gets ``pixel_feature``;
- ``predictions``: named :class:`Prediction` logits, each with **its own loss spec** (a
  :class:`~segcls.modeling.losses.PixelLossSet`: losses, weights, resize mode, and through the
  losses their normalisation). ``MAIN`` is the prediction used at inference;
- ``losses``: ready-made scalar loss terms (``"loss_<name>"``), added to the loss dict as they are.

One loss path (:class:`~segcls.modeling.losses.SegmentationLoss`) scores every prediction:
``loss_<loss>`` for ``MAIN`` and ``loss_<name>_<loss>`` for the prediction ``<name>``. A
prediction without a loss spec gets its meta-architecture's default (``MODEL.DECODE_HEAD.LOSSES``
for the main model, ``MODEL.AUX_HEAD.LOSSES`` for the auxiliary head).
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

MAIN = "main"


@dataclass
class Prediction:
    """``logits`` (N, K, h, w) at the producer's resolution, and ``loss`` (a ``PixelLossSet``, or
    None for the meta-architecture's default) saying how they are resized and scored."""

    logits: torch.Tensor
    loss: Optional[nn.Module] = None


@dataclass
class SegOutputs:
    """What a decode head or a classifier returns (see the module docstring)."""

    pixel_feature: Optional[torch.Tensor] = None
    reg_features: Dict[str, torch.Tensor] = field(default_factory=dict)
    predictions: Dict[str, Prediction] = field(default_factory=dict)
    losses: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def logits(self) -> torch.Tensor:
        """The main prediction's logits (N, K, h, w)."""
        if MAIN not in self.predictions:
            raise KeyError(f"no main prediction: the outputs hold {sorted(self.predictions)}")
        return self.predictions[MAIN].logits

    def reg_feature(self, key: str) -> torch.Tensor:
        """The regularizer feature ``key``; ``"reg_feature"`` falls back to ``pixel_feature``."""
        if key in self.reg_features:
            return self.reg_features[key]
        if key == "reg_feature" and self.pixel_feature is not None:
            return self.pixel_feature
        raise KeyError(
            f"the head returned no regularizer feature {key!r} (it returned {sorted(self.reg_features)}); "
            "'reg_feature' needs MODEL.DECODE_HEAD.REG_PROJECTION: True"
        )

    def merge(self, other: "SegOutputs", prefix: str = "", default_loss: Optional[nn.Module] = None) -> "SegOutputs":
        """
        Add ``other``'s predictions and losses to these outputs (in place; returns self).
        With ``prefix`` (e.g. ``"aux"``) names are prefixed: ``MAIN`` -> ``"aux"``, ``"pam"`` ->
        ``"aux_pam"``, ``"loss_x"`` -> ``"loss_aux_x"``, and the features of ``other`` are not
        taken; without it, ``other``'s pixel feature and regularizer features are taken too.
        ``default_loss`` becomes the loss spec of ``other``'s predictions that have none.
        """
        for name, prediction in other.predictions.items():
            if prefix:
                name = prefix if name == MAIN else f"{prefix}_{name}"
            loss = prediction.loss if prediction.loss is not None else default_loss
            self._add(self.predictions, name, Prediction(prediction.logits, loss))
        for name, value in other.losses.items():
            self._add(self.losses, f"loss_{prefix}_{name[len('loss_'):]}" if prefix else name, value)
        if not prefix:
            if other.pixel_feature is not None:
                self.pixel_feature = other.pixel_feature
            for name, value in other.reg_features.items():
                self._add(self.reg_features, name, value)
        return self

    @staticmethod
    def _add(target: dict, name: str, value):
        if name in target:
            raise ValueError(f"two outputs are named {name!r}: give one of them another name")
        target[name] = value
