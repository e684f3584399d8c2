"""
DeepLab decode heads: DeepLabV3 (:class:`ASPPHead`), the thesis' kernel-sharing variant
(:class:`KSACHead`, thesis ch. 2, Algorithm 1) and DeepLabV3+ (:class:`DeepLabV3PlusHead`),
built on one :class:`ASPP` module.
"""
from typing import Dict, Sequence

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
from .blocks import ImagePooling, separable_conv_norm_act
from .config import head_keys
from .tail import HeadTail

# Default atrous rates by the stride of the ASPP input: DeepLabV3 Sec. 4.1 / thesis Sec. 2.3
# ((6, 12, 18) at output stride 16, doubled at output stride 8).
_DEFAULT_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
_MERGES = ("concat_project", "concat", "sum")


@head_keys("ASPP", used_by=("ASPPHead", "KSACHead", "DeepLabV3PlusHead"))
def declare_aspp_keys(aspp):
    """
    ``ASPP.*``, read by the DeepLab heads:

    - ``RATES``: atrous rates of the 3x3 branches. [] (default) = by the stride of the input
      feature: (6, 12, 18) at 16 and (12, 24, 36) at 8 (DeepLabV3 Sec. 4.1; thesis Sec. 2.3). KSAC
      takes any list, e.g. (1, 6, 12, 18, 24) (thesis Table 2.2).
    - ``IMAGE_POOLING``: add the image-level branch (DeepLabV3 Sec. 3.3). Default True.
    - ``MERGE``: how the branches [1x1, atrous..., image pooling] meet:
      ``"concat_project"`` (default; DeepLabV3 Sec. 3.3, torchvision, and the issue's reading of
      KSAC): concatenate -> 1x1 conv-norm-ReLU to CHANNELS -> dropout ``ASPP.DROPOUT``;
      ``"concat"`` (mmsegmentation's ASPPHead): concatenate only, the head's last conv fuses them;
      ``"sum"`` (KSAC's "sum everything, no projection" option): elementwise sum of all branches.
    - ``DROPOUT``: dropout after the projection of ``"concat_project"``. Default 0.1 (the
      authors' DeepLab code, keep probability 0.9); torchvision's DeepLabV3 uses 0.5.
    - ``PROJECT_KERNEL``: kernel of that projection conv: 1 (default; DeepLabV3 Sec. 3.3,
      torchvision) or 3 (mmsegmentation's ``bottleneck`` of ``ASPPHead`` /
      ``DepthwiseSeparableASPPHead``, used with ``DROPOUT: 0.0``).
    - ``SEPARABLE``: depthwise-separable atrous branches and decoder convs (DeepLabV3+
      Sec. 3.2, mmsegmentation's ``DepthwiseSeparableASPPHead``). Default False. Not with KSAC.
    """
    aspp.RATES = []
    aspp.IMAGE_POOLING = True
    aspp.MERGE = "concat_project"
    aspp.DROPOUT = 0.1
    aspp.SEPARABLE = False
    aspp.PROJECT_KERNEL = 1


@head_keys("DEEPLABV3PLUS", used_by=("DeepLabV3PlusHead",))
def declare_deeplabv3plus_keys(dlv3p):
    """
    ``DEEPLABV3PLUS.*``:

    - ``ENCODER``: ``"ASPP"`` (default, DeepLabV3+) or ``"KSAC"`` (the thesis' "KSAC + D", Table 2.1).
    - ``LOW_LEVEL_CHANNELS``: channels of the 1x1 projection of the stride-4 feature
      (48, DeepLabV3+ Sec. 4.1).
    - ``NUM_CONVS``: 3x3 convs after the concatenation, the last one being the head's
      last block (2, DeepLabV3+ Sec. 4.1).
    - ``SEPARABLE_LAST_CONV``: with ``ASPP.SEPARABLE``, make the last of them (the
      :class:`HeadTail` conv) depthwise-separable too. Default False (a plain 3x3 conv, as CAR's
      change "A" expects). True with ``ASPP.PROJECT_KERNEL: 3`` and ``ASPP.DROPOUT: 0.0`` is
      mmsegmentation's ``DepthwiseSeparableASPPHead`` (17,765,126 parameters with the classifier
      at 2048 -> 512 channels, 150 classes, checked against mmsegmentation 1.2.2).
    """
    dlv3p.ENCODER = "ASPP"
    dlv3p.LOW_LEVEL_CHANNELS = 48
    dlv3p.NUM_CONVS = 2
    dlv3p.SEPARABLE_LAST_CONV = False


class SharedAtrousConv(nn.Module):
    """
    Kernel-Sharing Atrous Convolution, thesis ch. 2, Algorithm 1: one 3x3 kernel ``W`` of shape
    (out_channels, in_channels, 3, 3), no bias, applied with dilation = padding = r for every rate r;
    a separate norm per rate; ReLU per branch; elementwise sum over rates:

        KSAC(T) = sum_{r in R} ReLU(BN_r(Conv2D(T, W, rate=r)))

    (N, in_channels, h, w) -> (N, out_channels, h, w). Extra rates add one norm layer each and no
    conv weights (thesis Sec. 2.4, Table 2.2).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], norm: str = "BN"):
        super().__init__()
        if not norm:
            raise ValueError("KSAC needs a norm layer per rate (Algorithm 1); NORM is empty")
        self.rates = list(rates)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # = c2_msra_fill
        self.norms = nn.ModuleList([get_norm(norm, out_channels) for _ in self.rates])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        for rate, norm in zip(self.rates, self.norms):
            out = out + F.relu(norm(F.conv2d(x, self.weight, padding=rate, dilation=rate)))
        return out


class ASPP(nn.Module):
    """
    Atrous spatial pyramid pooling (DeepLabV3 Sec. 3.3) or, with ``shared_kernel``, KSAC (thesis
    ch. 2, Fig. 2.3).

    Branches, each with ``channels`` outputs: a 1x1 conv-norm-ReLU; the atrous part (ASPP: one
    3x3 conv-norm-ReLU per rate, dilation = padding = rate; KSAC: :class:`SharedAtrousConv`, whose
    output is already the sum over rates); the image-level branch (:class:`ImagePooling`).
    They are merged by ``merge`` (see :func:`declare_aspp_keys`): ``"concat_project"``: concatenation ->
    ``project_kernel`` x ``project_kernel`` conv-norm-ReLU -> dropout; ``"concat"``: concatenation;
    ``"sum"``: elementwise sum. The concatenation order is [1x1, atrous..., image pooling]
    (mmsegmentation: [image pooling, 1x1, atrous...]; the converters in
    :mod:`segcls.checkpoint.convert` permute the projection's input channels).

    (N, in_channels, h, w) -> (N, out_channels, h, w), ``out_channels`` = ``channels`` except for
    ``"concat"`` (``channels`` x number of branches).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        rates: Sequence[int],
        *,
        norm: str = "BN",
        image_pooling: bool = True,
        shared_kernel: bool = False,
        separable: bool = False,
        merge: str = "concat_project",
        dropout: float = 0.1,
        project_kernel: int = 1,
    ):
        super().__init__()
        if merge not in _MERGES:
            raise ValueError(f"ASPP.MERGE={merge!r}: expected one of {_MERGES}")
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"ASPP.RATES={list(rates)}: expected a non-empty list of positive rates")
        if shared_kernel and separable:
            raise ValueError("ASPP.SEPARABLE=True cannot be combined with KSAC's shared kernel")
        if project_kernel not in (1, 3):
            raise ValueError(f"ASPP.PROJECT_KERNEL={project_kernel}: expected 1 (DeepLabV3) or 3 (mmsegmentation)")
        self.conv1x1 = conv_norm_act(in_channels, channels, 1, norm)
        if shared_kernel:
            self.atrous = nn.ModuleList([SharedAtrousConv(in_channels, channels, rates, norm)])
        else:
            block = separable_conv_norm_act if separable else conv_norm_act
            self.atrous = nn.ModuleList([block(in_channels, channels, 3, norm, dilation=r) for r in rates])
        self.image_pool = ImagePooling(in_channels, channels, norm) if image_pooling else None
        self.merge = merge
        num_branches = 1 + len(self.atrous) + int(image_pooling)
        self.project = None
        if merge == "concat_project":
            self.project = nn.Sequential(
                conv_norm_act(num_branches * channels, channels, project_kernel, norm),
                nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            )
        self.out_channels = num_branches * channels if merge == "concat" else channels

    @classmethod
    def from_node(cls, node, in_channels: int, in_stride: int, shared_kernel: bool):
        """Build from a head config node (``MODEL.DECODE_HEAD`` or ``MODEL.AUX_HEAD``) for an input
        feature with ``in_channels`` channels at stride ``in_stride``."""
        rates = list(node.ASPP.RATES)
        if not rates:
            if in_stride not in _DEFAULT_RATES:
                raise ValueError(
                    f"ASPP.RATES=[] picks the rates by the input stride, known for strides "
                    f"{sorted(_DEFAULT_RATES)}, but the input has stride {in_stride}: set ASPP.RATES"
                )
            rates = list(_DEFAULT_RATES[in_stride])
        return cls(
            in_channels,
            node.CHANNELS,
            rates,
            norm=node.NORM,
            image_pooling=node.ASPP.IMAGE_POOLING,
            shared_kernel=shared_kernel,
            separable=node.ASPP.SEPARABLE,
            merge=node.ASPP.MERGE,
            dropout=node.ASPP.DROPOUT,
            project_kernel=node.ASPP.PROJECT_KERNEL,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.conv1x1(x)] + [branch(x) for branch in self.atrous]
        if self.image_pool is not None:
            branches.append(self.image_pool(x))
        if self.merge == "sum":
            return torch.stack(branches).sum(0)
        out = torch.cat(branches, dim=1)
        return out if self.project is None else self.project(out)


@DECODE_HEAD_REGISTRY.register()
class ASPPHead(DecodeHead):
    """
    DeepLabV3 (Chen et al. 2017): :class:`ASPP` on ``IN_FEATURES[-1]``, then the :class:`HeadTail`
    (conv ``LAST_CONV_KERNEL`` -> norm -> ReLU to CHANNELS) before the classifier. With the default
    ``MERGE: concat_project`` this is torchvision's ``DeepLabHead`` (ASPP -> projection -> dropout
    -> 3x3 conv-BN-ReLU); ``LAST_CONV_KERNEL: 1`` gives the paper's ASPP -> 1x1 -> classifier.

    Input ``features[IN_FEATURES[-1]]`` (N, C_in, h, w). Output: the pixel feature ``(N, CHANNELS,
    h, w)`` (+ ``"reg_feature"`` with ``REG_PROJECTION``).
    """

    shared_kernel = False  # KSACHead sets True

    @configurable
    def __init__(self, *, in_feature: str, in_stride: int, aspp: ASPP, tail: HeadTail):
        super().__init__(in_feature=in_feature, out_channels=tail.out_channels, out_stride=in_stride)
        self.aspp = aspp
        self.tail = tail

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        inputs = input_feature(node, input_shape)
        aspp = ASPP.from_node(node, inputs["in_channels"], inputs["in_stride"], cls.shared_kernel)
        return {
            "in_feature": inputs["in_feature"],
            "in_stride": inputs["in_stride"],
            "aspp": aspp,
            "tail": HeadTail.from_node(node, aspp.out_channels),
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        return self.tail(self.aspp(features[self.in_feature]))


@DECODE_HEAD_REGISTRY.register()
class KSACHead(ASPPHead):
    """
    KSAC head (thesis ch. 2, Fig. 2.3, Algorithm 1): :class:`ASPPHead` whose atrous branches share
    one 3x3 kernel (:class:`SharedAtrousConv`). Same keys as ASPPHead (``ASPP.*``); the default
    ``MERGE: concat_project`` concatenates [1x1, shared-kernel sum, image pooling] -> 1x1
    conv-BN-ReLU -> dropout 0.1 (DeepLab's combination; the thesis does not say), ``MERGE: sum`` sums
    everything without projection.
    """

    shared_kernel = True


@DECODE_HEAD_REGISTRY.register()
class DeepLabV3PlusHead(DecodeHead):
    """
    DeepLabV3+ (Chen et al., ECCV 2018, Sec. 3.1 and Fig. 2): encoder :class:`ASPP` (or KSAC,
    ``DEEPLABV3PLUS.ENCODER``) on the deep feature ``IN_FEATURES[-1]``; decoder: the low-level
    feature ``IN_FEATURES[0]`` (stride 4, ``res2``) -> 1x1 conv-norm-ReLU to
    ``LOW_LEVEL_CHANNELS`` (48); the encoder output upsampled bilinearly to its size and concatenated;
    ``NUM_CONVS`` 3x3 conv-norm-ReLU to CHANNELS, the last of which is the :class:`HeadTail`
    (``ASPP.SEPARABLE`` makes the others depthwise-separable; the tail stays a plain conv, so that
    CAR's change "A" and projection work as on every head, unless ``SEPARABLE_LAST_CONV``).
    mmsegmentation's ``DepthwiseSeparableASPPHead``: ``ASPP.SEPARABLE``, ``ASPP.PROJECT_KERNEL: 3``,
    ``ASPP.DROPOUT: 0.0``, ``DEEPLABV3PLUS.SEPARABLE_LAST_CONV`` (see :func:`declare_deeplabv3plus_keys`).

    Output: the pixel feature ``(N, CHANNELS, H/4, W/4)`` at the low-level feature's stride.
    """

    @configurable
    def __init__(
        self,
        *,
        low_feature: str,
        high_feature: str,
        low_stride: int,
        aspp: ASPP,
        low_project: nn.Module,
        convs: nn.Module,
        tail: HeadTail,
        align_corners: bool = False,
    ):
        super().__init__(out_channels=tail.out_channels, out_stride=low_stride)
        self.low_feature = low_feature
        self.high_feature = high_feature
        self.aspp = aspp
        self.low_project = low_project
        self.convs = convs
        self.tail = tail
        self.align_corners = align_corners

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        if len(node.IN_FEATURES) < 2:
            raise ValueError(
                f"{prefix}.IN_FEATURES={list(node.IN_FEATURES)}: DeepLabV3PlusHead needs [low-level, deep] "
                "features, e.g. ['res2', 'res5']"
            )
        encoders = {"ASPP": False, "KSAC": True}
        if node.DEEPLABV3PLUS.ENCODER not in encoders:
            raise ValueError(
                f"{prefix}.DEEPLABV3PLUS.ENCODER={node.DEEPLABV3PLUS.ENCODER!r}: expected one of {list(encoders)}"
            )
        num_convs = node.DEEPLABV3PLUS.NUM_CONVS
        if num_convs < 1:
            raise ValueError(f"{prefix}.DEEPLABV3PLUS.NUM_CONVS={num_convs}: expected >= 1")
        if node.DEEPLABV3PLUS.SEPARABLE_LAST_CONV and not node.ASPP.SEPARABLE:
            raise ValueError(f"{prefix}.DEEPLABV3PLUS.SEPARABLE_LAST_CONV=True needs {prefix}.ASPP.SEPARABLE=True")
        low, high = input_feature(node, input_shape, 0), input_feature(node, input_shape)
        aspp = ASPP.from_node(node, high["in_channels"], high["in_stride"], encoders[node.DEEPLABV3PLUS.ENCODER])
        low_channels = node.DEEPLABV3PLUS.LOW_LEVEL_CHANNELS
        block = separable_conv_norm_act if node.ASPP.SEPARABLE else conv_norm_act
        concat_channels = aspp.out_channels + low_channels
        ch = node.CHANNELS
        convs = [block(concat_channels if i == 0 else ch, ch, 3, node.NORM) for i in range(num_convs - 1)]
        return {
            "low_feature": low["in_feature"],
            "high_feature": high["in_feature"],
            "low_stride": low["in_stride"],
            "aspp": aspp,
            "low_project": conv_norm_act(low["in_channels"], low_channels, 1, node.NORM),
            "convs": nn.Sequential(*convs),
            "tail": HeadTail.from_node(
                node, concat_channels if num_convs == 1 else ch, separable=node.DEEPLABV3PLUS.SEPARABLE_LAST_CONV
            ),
            "align_corners": cfg.MODEL.ALIGN_CORNERS,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        low = self.low_project(features[self.low_feature])
        high = resize(self.aspp(features[self.high_feature]), low.shape[-2:], self.align_corners)
        return self.tail(self.convs(torch.cat([high, low], dim=1)))
