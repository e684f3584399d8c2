"""
Every place where the benchmarks reach into segcls models beyond their public ``list[dict]``
forward (``model(inputs)``): ``predict``'s :class:`~segcls.modeling.outputs.SegOutputs`, the
inference resize, the decode head's and classifier's outputs, the regularizers and CAC's
parameter names. Kept here, together,
so that a change of the model API is adapted in one file.
"""
from typing import List, Sequence

import torch
from torch import nn

from segcls.modeling.layers import resize

# CAC's two projectors: the only parameters ContextAwareClassifier adds to LinearClassifier.
CAC_PROJECTOR_PREFIX = "classifier.theta_"


def logits_at_input_size(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The segmentor's logits for the normalised batch ``x`` (N, 3, H, W), resized to (H, W)."""
    return resize(model.predict(x).logits, x.shape[-2:], model.inferencer.align_corners)


def regularizer_names(model: nn.Module) -> List[str]:
    """Class names of the segmentor's regularizers (e.g. ["CARRegularizer"])."""
    return [type(r).__name__ for r in model.regularizers]


class HeadAndClassifier(nn.Module):
    """Decode head + classifier of a segmentor as one module: ``forward(*features)`` (the backbone
    features named ``names``, in order) -> the logits, for FLOP counts by module."""

    def __init__(self, names: Sequence[str], head: nn.Module, classifier: nn.Module):
        super().__init__()
        self.names = list(names)
        self.head = head
        self.classifier = classifier

    @classmethod
    def from_config(cls, cfg, names: Sequence[str], backbone_shape):
        from segcls.modeling.registry import build_classifier, build_decode_head

        head = build_decode_head(cfg, backbone_shape)
        return cls(names, head, build_classifier(cfg, head.out_channels, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES))

    def forward(self, *features):
        out = self.head(dict(zip(self.names, features)))
        return self.classifier(out.pixel_feature).logits
