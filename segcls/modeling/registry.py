"""
Registries of segcls's pluggable pieces. A research fork adds its own piece with the decorator
(``@DECODE_HEAD_REGISTRY.register()``) in its own package and selects it by class name from yaml;
nothing in ``segcls/`` needs to change.

Contracts (all tensors are NCHW unless said otherwise; ``K`` = number of classes). Heads and
classifiers return one typed value, :class:`~segcls.modeling.outputs.SegOutputs` (pixel feature,
regularizer features, named predictions each with its own loss spec, ready-made loss terms):

- ``DECODE_HEAD_REGISTRY``: ``build(cfg, input_shape: Dict[str, ShapeSpec], prefix) -> nn.Module``
  whose ``forward(features: Dict[str, Tensor], targets: Optional[Tensor (N, H, W)]) -> SegOutputs``
  sets ``pixel_feature`` (N, C, h, w), the feature that feeds the classifier, and optionally
  ``reg_features`` (``"reg_feature"``: the feature a regularizer sees; defaults to the pixel
  feature), extra ``predictions`` (e.g. DANet's ``"pam"``/``"cam"``, OCR's ``"ocr_coarse"``, each a
  :class:`~segcls.modeling.outputs.Prediction` whose ``loss`` is a
  :class:`~segcls.modeling.losses.PixelLossSet`) and ready-made ``losses`` (``"loss_<name>"``
  scalars, e.g. CPNet's affinity loss). It must expose ``out_channels`` (C) and ``out_stride``
  (input size / h). ``prefix`` is ``MODEL.DECODE_HEAD`` or ``MODEL.AUX_HEAD``. segcls's heads
  derive from :class:`~segcls.modeling.heads.base.DecodeHead`, and their config keys are
  declared with :func:`~segcls.modeling.heads.config.head_keys` in the head's own file.
- ``CLASSIFIER_REGISTRY``: ``build(cfg, in_channels, num_classes) -> nn.Module`` whose
  ``forward(x: Tensor (N, C, h, w), targets: Optional[Tensor (N, H, W)]) -> SegOutputs`` returns the
  main prediction (``outputs.MAIN``: (N, K, h, w) logits, the one used at inference) and, in
  training, optionally further predictions with their own loss specs and ready-made losses (CAC:
  ``"static"``, ``"oracle"``, ``"loss_cac_kl"``).
- ``PIXEL_LOSS_REGISTRY``: ``build(cfg, ignore_value) -> nn.Module`` with a ``name`` attribute and
  ``forward(logits: Tensor (N, K, H, W), targets: Tensor (N, H, W) long) -> Tensor scalar``.
  Logits arrive already resized to the label size by the prediction's ``PixelLossSet``.
- ``REGULARIZER_REGISTRY``: ``build(cfg, in_channels, num_classes) -> nn.Module`` whose
  ``forward(outputs: SegOutputs, targets: Tensor (N, H, W)) -> Dict[str, Tensor]`` returns
  ``"loss_<name>"`` scalars. Regularizers run in training only (e.g. CAR).

One loss path (:class:`~segcls.modeling.losses.SegmentationLoss`) scores every prediction:
``loss_<loss>`` for the main one, ``loss_<name>_<loss>`` for the prediction ``<name>``; a
prediction without a loss spec gets the meta-architecture's (``MODEL.DECODE_HEAD.LOSSES``, for the
auxiliary head ``MODEL.AUX_HEAD.LOSSES`` and the name prefix ``aux``).
"""
from detectron2.utils.registry import Registry

from ..utils.config import get_config_node

DECODE_HEAD_REGISTRY = Registry("DECODE_HEAD")
DECODE_HEAD_REGISTRY.__doc__ = "Decode heads: multi-scale backbone features -> pixel feature."

CLASSIFIER_REGISTRY = Registry("CLASSIFIER")
CLASSIFIER_REGISTRY.__doc__ = "Classifiers: pixel feature -> class logits."

PIXEL_LOSS_REGISTRY = Registry("PIXEL_LOSS")
PIXEL_LOSS_REGISTRY.__doc__ = "Per-pixel losses on logits at label resolution."

REGULARIZER_REGISTRY = Registry("REGULARIZER")
REGULARIZER_REGISTRY.__doc__ = "Training-only feature regularizers (e.g. CAR)."


def build_decode_head(cfg, input_shape, prefix="MODEL.DECODE_HEAD"):
    """Build the decode head named by ``<prefix>.NAME`` (``prefix`` selects main or auxiliary), after
    checking that no key of the node that this head does not read is set (and, for the main head,
    no dead ``MODEL.SEM_SEG_HEAD`` key)."""
    from .heads.config import validate_head_node, validate_sem_seg_head

    if prefix == "MODEL.DECODE_HEAD":
        validate_sem_seg_head(cfg)
    validate_head_node(cfg, prefix)
    return DECODE_HEAD_REGISTRY.get(get_config_node(cfg, prefix).NAME)(cfg, input_shape, prefix=prefix)


def build_classifier(cfg, in_channels, num_classes):
    return CLASSIFIER_REGISTRY.get(cfg.MODEL.CLASSIFIER.NAME)(cfg, in_channels, num_classes)


def build_pixel_losses(cfg, names, ignore_value):
    return [PIXEL_LOSS_REGISTRY.get(name)(cfg, ignore_value=ignore_value) for name in names]


def build_regularizers(cfg, in_channels, num_classes):
    return [
        REGULARIZER_REGISTRY.get(name)(cfg, in_channels, num_classes)
        for name in cfg.MODEL.REGULARIZERS.NAMES
    ]
