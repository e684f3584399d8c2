"""
Whole-model and backbone converters: a peer library's state dict -> segcls parameter names, and
the guard that every tensor the target expects was mapped.

Source layouts (:func:`detect_layout`):

- ``"torchvision_segmentation"``: torchvision's ``fcn_resnet50/101`` and
  ``deeplabv3_resnet50/101`` (``backbone.layerX``, ``classifier.*``, ``aux_classifier.*``);
- ``"mmseg"``: an mmsegmentation 1.x segmentor (``backbone.*``, ``decode_head.conv_seg``,
  ``auxiliary_head.*``) with a ResNetV1c or ResNetV1d (target: ``MODEL.RESNETS.AVG_DOWN``)
  backbone and an FCN, PSP, ASPP (DeepLabV3), depthwise-separable ASPP (DeepLabV3+), UPerNet, Non-local, CCNet or DANet head, or OCRNet's
  cascade (``decode_head.0`` FCN, ``decode_head.1`` OCR); or, with UPerNet, a Swin backbone
  (``backbone.stages.i.blocks``) or mmpretrain's ConvNeXt (``mmpretrain.ConvNeXt``,
  ``backbone.downsample_layers``, ``backbone.stages.i.j``; target for both:
  ``build_timm_backbone`` with the same Swin / ConvNeXt and ``MODEL.TIMM.OUT_NORM`` for the
  backbone's ``norm0..3``);
- ``"hf_upernet"``: HF ``UperNetForSemanticSegmentation`` with a ConvNeXt backbone
  (``backbone.embeddings.patch_embeddings``, ``backbone.encoder.stages``) or a Swin backbone
  (``backbone.embeddings.patch_embeddings.projection``, ``backbone.encoder.layers``: the names of
  transformers 4.x and of 5.x's files; 5.x modules: ``backbone.swin.*``), with
  ``backbone.hidden_states_norms`` (target: ``build_timm_backbone`` with the same ConvNeXt / Swin,
  ``MODEL.TIMM.OUT_NORM``, ``UPerHead`` and an FCN auxiliary head on res4);
- ``"torchvision_resnet"`` / ``"openmmlab_resnet"``: ImageNet ResNet backbones (torchvision's
  ``conv1``/``layerX`` names; open-mmlab's ResNetV1c/V1d with the 3-conv stem ``stem.0..7``,
  V1d's average-pool shortcut ``downsample.0..2`` needing ``MODEL.RESNETS.AVG_DOWN``);
- ``"segcls"``: names that already are segcls's (e.g. a segcls or detectron2 checkpoint).

The target is a built segcls model (``PerPixelSegmentor``); backbone layouts fill
``backbone.*`` only. :func:`convert_state_dict` returns the mapped tensors and checks them
(:func:`check_mapping`): a tensor the target expects and the file does not provide, or one of
another shape, is an error naming them unless ``allow_partial``.

Known layout differences handled here: mmseg's ASPP concatenates [image pool, 1x1, atrous...],
segcls [1x1, atrous..., image pool] (the fusing conv's input-channel blocks are permuted);
mmseg's ConvModule ``X.conv`` / ``X.bn`` are segcls's ``Y`` / ``Y.norm``; mmcv's ``Scale`` gammas
are 0-d, segcls's (1,); mmseg's Swin concatenates PatchMerging's 2x2 neighbours in ``nn.Unfold``'s
order (permuted; HF's order is timm's); HF's Swin has separate q / k / v Linear layers (timm: one
fused ``qkv``); mmpretrain's and HF's ConvNeXt pointwise Linear layers are timm's 1x1 convs where
the timm model has ``conv_mlp`` (reshaped); a Swin's ``relative_position_index`` buffers are
derived (not mapped).
"""
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

logger = logging.getLogger(__name__)

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
LAYOUTS = ("torchvision_segmentation", "mmseg", "hf_upernet", "torchvision_resnet", "openmmlab_resnet", "segcls")


class ConversionError(ValueError):
    """A checkpoint does not fit the target model (unmapped or mis-shaped tensors); names them."""


@dataclass
class Conversion:
    """Result of :func:`convert_state_dict`: ``tensors`` ({segcls name: tensor}), the ``layout``
    read, ``scope`` ("model" or "backbone": the part of the target it fills), the source names it
    did not use, and the target names left unmapped (non-empty only with ``allow_partial``)."""

    tensors: Dict[str, torch.Tensor]
    layout: str
    scope: str
    unused: List[str] = field(default_factory=list)
    unmapped: List[str] = field(default_factory=list)


class _Mapping:
    """Collects target <- source tensors, remembering which source names were used."""

    def __init__(self, source: Dict[str, torch.Tensor], name: str):
        self.source = source
        self.name = name  # of the file, for the errors
        self.out: Dict[str, torch.Tensor] = {}
        self.used = set()

    def take(self, dst: str, src: Union[str, Tuple[str, ...]], transform: Optional[Callable] = None) -> bool:
        """``dst`` <- the tensor ``src`` (``transform``-ed), or the tensors of the names ``src`` (a
        tuple, e.g. separate q, k, v projections for a fused qkv) concatenated along dim 0; nothing
        (False) when a source is absent."""
        names = (src,) if isinstance(src, str) else src
        if any(name not in self.source for name in names):
            return False
        tensor = self.source[src] if isinstance(src, str) else torch.cat([self.source[name] for name in names])
        self.out[dst] = transform(tensor) if transform is not None else tensor
        self.used.update(names)
        return True

    def conv_bn(self, dst: str, src_conv: str, src_bn: str, transform: Optional[Callable] = None):
        """A conv (``src_conv``.weight/.bias) + BN (``src_bn``.*) -> segcls ``dst`` / ``dst.norm``."""
        self.take(dst + ".weight", src_conv + ".weight", transform)
        self.take(dst + ".bias", src_conv + ".bias")
        for s in _BN:
            self.take(f"{dst}.norm.{s}", f"{src_bn}.{s}")

    def conv_module(self, dst: str, src: str, transform: Optional[Callable] = None, bn: str = "bn"):
        """mmcv's ``ConvModule`` (``src.conv``, ``src.bn``; HF's ``UperNetConvModule``: ``bn`` =
        "batch_norm") -> segcls ``conv_norm_act`` ``dst``."""
        self.conv_bn(dst, src + ".conv", f"{src}.{bn}", transform)

    def separable(self, dst: str, src: str):
        """mmcv's ``DepthwiseSeparableConvModule`` -> segcls ``separable_conv_norm_act``."""
        self.conv_module(dst + ".0", src + ".depthwise_conv")
        self.conv_module(dst + ".1", src + ".pointwise_conv")

    def linear(self, dst: str, src: str):
        """A plain conv with bias (a classifier): ``src.weight/bias`` -> ``dst.weight/bias``."""
        self.take(dst + ".weight", src + ".weight")
        self.take(dst + ".bias", src + ".bias")


# ------------------------------------------------------------------------------------------------
# Layout detection
# ------------------------------------------------------------------------------------------------
def detect_layout(state: Dict[str, torch.Tensor], target_keys) -> str:
    """The source layout of ``state`` (one of :data:`LAYOUTS`), from its names."""
    keys = set(state)
    if "decode_head.conv_seg.weight" in keys or "decode_head.1.conv_seg.weight" in keys:  # (cascade: OCRNet)
        return "mmseg"
    if "decode_head.classifier.weight" in keys and "decode_head.fpn_bottleneck.conv.weight" in keys:
        return "hf_upernet"
    if any(k.startswith("backbone.layer1.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        return "torchvision_segmentation"
    stripped = {_strip(k) for k in keys}
    if "stem.0.weight" in stripped and "layer1.0.conv1.weight" in stripped:
        return "openmmlab_resnet"
    if "layer1.0.conv1.weight" in stripped:
        return "torchvision_resnet"
    if keys & set(target_keys):
        return "segcls"
    raise ConversionError(
        f"unknown checkpoint layout: none of {sorted(keys)[:4]}... is a name of a known layout "
        f"({', '.join(LAYOUTS)}) or of the target model"
    )


def _strip(name: str) -> str:
    while name.startswith(("module.", "backbone.")):
        name = name.split(".", 1)[1]
    return name


# ------------------------------------------------------------------------------------------------
# ResNet backbones
# ------------------------------------------------------------------------------------------------
_OPENMMLAB_STEM = {"0": ("conv1", "conv"), "1": ("conv1", "norm"), "3": ("conv2", "conv"), "4": ("conv2", "norm"),
                   "6": ("conv3", "conv"), "7": ("conv3", "norm")}  # fmt: skip


def resnet_name(name: str, avg_down: bool = False) -> Optional[str]:
    """torchvision / open-mmlab ResNet name -> detectron2 ResNet name (None for other names, e.g.
    ``fc.*``): conv1/bn1 -> stem.conv1(.norm); stem.{0,1,3,4,6,7} (open-mmlab's V1c/V1d stem) ->
    stem.conv{1,2,3}(.norm); layerX.Y.convZ/bnZ -> res{X+1}.Y.convZ(.norm); downsample.0/1 ->
    shortcut(.norm), or with ``avg_down`` (open-mmlab's ResNetV1d: downsample.0 is the average
    pool) downsample.1/2 -> shortcut(.norm)."""
    m = re.fullmatch(r"stem\.(\d)\.(\w+)", name)
    if m:
        if m.group(1) not in _OPENMMLAB_STEM:
            return None
        conv, part = _OPENMMLAB_STEM[m.group(1)]
        return f"stem.{conv}.{m.group(2)}" if part == "conv" else f"stem.{conv}.norm.{m.group(2)}"
    m = re.fullmatch(r"(conv1|bn1)\.(\w+)", name)
    if m:
        return f"stem.conv1.{m.group(2)}" if m.group(1) == "conv1" else f"stem.conv1.norm.{m.group(2)}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", name)
    if not m:
        return None
    conv, norm = (1, 2) if avg_down else (0, 1)
    rest = m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(rf"^downsample\.{conv}\.", "shortcut.", rest)
    rest = re.sub(rf"^downsample\.{norm}\.", "shortcut.norm.", rest)
    return f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"


def _shortcut_layout(names, backbone, source: str) -> bool:
    """Whether the ResNet file ``names`` has ResNet-D's average-pool shortcut (open-mmlab's
    ResNetV1d: ``downsample.0`` pool, ``.1`` conv, ``.2`` BN); an error if the segcls
    ``backbone`` has the other shortcut (``MODEL.RESNETS.AVG_DOWN``), since the weights would
    load and compute other features."""
    from ..modeling.backbone.resnet import AvgDownConv2d  # (the backbone module imports this one)

    avg_down = any(re.search(r"layer\d\.\d+\.downsample\.2\.", k) for k in names)
    target = any(isinstance(m, AvgDownConv2d) for m in backbone.modules())
    if avg_down != target:
        kinds = ("the ResNet-D average-pool shortcut (open-mmlab ResNetV1d)", "the strided 1x1-conv shortcut (ResNetV1c, torchvision)")
        raise ConversionError(
            f"'{source}' has {kinds[not avg_down]} and the model {kinds[not target]}: set MODEL.RESNETS.AVG_DOWN "
            f"{avg_down} to load it"
        )
    return avg_down


def resnet_names(names, backbone, source: str) -> Dict[str, Optional[str]]:
    """{name: :func:`resnet_name` of it} for the torchvision / open-mmlab ResNet ``names``, read
    with the shortcut layout of the file, which must be the segcls ``backbone``'s
    (:func:`_shortcut_layout`)."""
    names = list(names)
    avg_down = _shortcut_layout(names, backbone, source)
    return {name: resnet_name(name, avg_down) for name in names}


def _map_resnet(mapping: _Mapping, src_prefix: str, dst_prefix: str, backbone):
    files = {src[len(src_prefix):]: src for src in mapping.source if src.startswith(src_prefix)}
    for name, dst in resnet_names(files, backbone, mapping.name).items():
        if dst is not None:
            mapping.take(dst_prefix + dst, files[name])


# ------------------------------------------------------------------------------------------------
# torchvision segmentation models
# ------------------------------------------------------------------------------------------------
def _map_torchvision_head(mapping: _Mapping, src: str, head: str, classifier: str):
    """torchvision's ``FCNHead`` / ``DeepLabHead`` Sequential ``src`` -> segcls ``head`` + ``classifier``."""
    if f"{src}.0.convs.0.0.weight" in mapping.source:  # DeepLabHead: ASPP, conv, BN, ReLU, conv
        aspp = f"{src}.0"
        mapping.conv_bn(f"{head}.aspp.conv1x1", f"{aspp}.convs.0.0", f"{aspp}.convs.0.1")
        # convs: 0 = 1x1, 1..R = atrous (conv, BN, ReLU), R + 1 = pooling (pool, conv, BN, ReLU)
        pool = sum(1 for k in mapping.source if re.fullmatch(rf"{re.escape(aspp)}\.convs\.\d+\.0\.weight", k))
        for i in range(1, pool):
            mapping.conv_bn(f"{head}.aspp.atrous.{i - 1}", f"{aspp}.convs.{i}.0", f"{aspp}.convs.{i}.1")
        mapping.conv_bn(f"{head}.aspp.image_pool.conv", f"{aspp}.convs.{pool}.1", f"{aspp}.convs.{pool}.2")
        mapping.conv_bn(f"{head}.aspp.project.0", f"{aspp}.project.0", f"{aspp}.project.1")
        mapping.conv_bn(f"{head}.tail.conv", f"{src}.1", f"{src}.2")
    else:  # FCNHead: conv, BN, ReLU, dropout, conv
        mapping.conv_bn(f"{head}.tail.conv", f"{src}.0", f"{src}.1")
    mapping.linear(f"{classifier}.conv", f"{src}.4")


def _convert_torchvision_segmentation(mapping: _Mapping, model):
    _map_resnet(mapping, "backbone.", "backbone.", model.backbone)
    _map_torchvision_head(mapping, "classifier", "decode_head", "classifier")
    if any(k.startswith("aux_classifier.") for k in mapping.source):
        _map_torchvision_head(mapping, "aux_classifier", "aux_head", "aux_classifier")


# ------------------------------------------------------------------------------------------------
# mmsegmentation segmentors
# ------------------------------------------------------------------------------------------------
def _aspp_order(num_branches: int):
    """mmseg's ASPP concatenation [pool, 1x1, atrous...] -> segcls's [1x1, atrous..., pool]: a
    transform of the fusing conv's weight (C_out, num_branches * C, k, k) permuting its input blocks."""

    def permute(weight):
        blocks = weight.chunk(num_branches, dim=1)
        return torch.cat(list(blocks[1:]) + [blocks[0]], dim=1)

    return permute


def _mmseg_ppm(mapping: _Mapping, src: str, dst: str, bn: str = "bn"):
    i = 0
    while f"{src}.{i}.1.conv.weight" in mapping.source:
        mapping.conv_module(f"{dst}.branches.{i}", f"{src}.{i}.1", bn=bn)
        i += 1


def _uper_head(mapping: _Mapping, head_module, src: str, dst: str, bn: str = "bn"):
    """mmseg's / HF's ``UPerHead`` (same names but the norm's) -> segcls ``UPerHead``."""
    _mmseg_ppm(mapping, f"{src}.psp_modules", f"{dst}.ppm", bn)
    mapping.conv_module(f"{dst}.ppm_bottleneck", f"{src}.bottleneck", bn=bn)
    for i in range(len(head_module.laterals)):
        mapping.conv_module(f"{dst}.laterals.{i}", f"{src}.lateral_convs.{i}", bn=bn)
        mapping.conv_module(f"{dst}.fpn_convs.{i}", f"{src}.fpn_convs.{i}", bn=bn)
    mapping.conv_module(f"{dst}.tail.conv", f"{src}.fpn_bottleneck", bn=bn)


def _mmseg_aspp_branches(mapping: _Mapping, src: str, dst: str, separable: bool) -> int:
    """image_pool + aspp_modules -> segcls ASPP ``dst``; returns the number of branches."""
    mapping.conv_module(f"{dst}.image_pool.conv", f"{src}.image_pool.1")
    mapping.conv_module(f"{dst}.conv1x1", f"{src}.aspp_modules.0")
    i = 1
    while any(k.startswith(f"{src}.aspp_modules.{i}.") for k in mapping.source):
        if separable:
            mapping.separable(f"{dst}.atrous.{i - 1}", f"{src}.aspp_modules.{i}")
        else:
            mapping.conv_module(f"{dst}.atrous.{i - 1}", f"{src}.aspp_modules.{i}")
        i += 1
    return i + 1


def _scalar(t: torch.Tensor) -> torch.Tensor:
    """mmcv's ``Scale`` parameter (0-d) -> segcls's (1,) gamma."""
    return t.reshape(1)


def _mmseg_head(mapping: _Mapping, head_module, src: str, dst: str):
    """One mmseg decode/auxiliary head ``src`` -> the segcls head ``dst`` (of class ``head_module``)."""
    kind = type(head_module).__name__
    if kind == "FCNHead":
        num_convs = sum(1 for k in mapping.source if re.fullmatch(rf"{re.escape(src)}\.convs\.\d+\.conv\.weight", k))
        if f"{src}.conv_cat.conv.weight" in mapping.source:  # concat_input: convs -> body, conv_cat -> tail
            for i in range(num_convs):
                mapping.conv_module(f"{dst}.convs.{i}", f"{src}.convs.{i}")
            mapping.conv_module(f"{dst}.tail.conv", f"{src}.conv_cat")
        else:
            for i in range(num_convs - 1):
                mapping.conv_module(f"{dst}.convs.{i}", f"{src}.convs.{i}")
            mapping.conv_module(f"{dst}.tail.conv", f"{src}.convs.{num_convs - 1}")
    elif kind == "PSPHead":
        _mmseg_ppm(mapping, f"{src}.psp_modules", f"{dst}.ppm")
        mapping.conv_module(f"{dst}.tail.conv", f"{src}.bottleneck")
    elif kind == "UPerHead":
        _uper_head(mapping, head_module, src, dst)
    elif kind == "ASPPHead":
        if head_module.aspp.merge != "concat":
            raise ConversionError(
                "mmseg's ASPPHead fuses the concatenated branches with its 3x3 bottleneck: the target needs "
                "MODEL.DECODE_HEAD.ASPP.MERGE 'concat' (configs/ade20k/deeplabv3_r50-d8_512x512_80k.yaml)"
            )
        n = _mmseg_aspp_branches(mapping, src, f"{dst}.aspp", separable=False)
        mapping.conv_module(f"{dst}.tail.conv", f"{src}.bottleneck", _aspp_order(n))
    elif kind == "DeepLabV3PlusHead":
        project = head_module.aspp.project
        if project is None or project[0].kernel_size != (3, 3) or not isinstance(head_module.tail.conv, torch.nn.Sequential):
            raise ConversionError(
                "mmseg's DepthwiseSeparableASPPHead needs segcls's mmseg layout: ASPP.SEPARABLE True, "
                "ASPP.PROJECT_KERNEL 3, DEEPLABV3PLUS.SEPARABLE_LAST_CONV True "
                "(configs/ade20k/deeplabv3plus_r50-d8_512x512_80k.yaml)"
            )
        n = _mmseg_aspp_branches(mapping, src, f"{dst}.aspp", separable=True)
        mapping.conv_module(f"{dst}.aspp.project.0", f"{src}.bottleneck", _aspp_order(n))
        mapping.conv_module(f"{dst}.low_project", f"{src}.c1_bottleneck")
        mapping.separable(f"{dst}.convs.0", f"{src}.sep_bottleneck.0")
        mapping.separable(f"{dst}.tail.conv", f"{src}.sep_bottleneck.1")
    elif kind in ("NonLocalHead", "CCHead"):  # mmseg's NLHead / CCHead: FCN convs around the block
        mapping.conv_module(f"{dst}.conv_in", f"{src}.convs.0")
        if kind == "NonLocalHead":
            for part in ("theta", "phi", "g"):
                mapping.linear(f"{dst}.block.{part}", f"{src}.nl_block.{part}.conv")
            mapping.conv_module(f"{dst}.block.out", f"{src}.nl_block.conv_out")
        else:
            for part in ("query", "key", "value"):
                mapping.linear(f"{dst}.block.{part}", f"{src}.cca.{part}_conv")
            mapping.take(f"{dst}.block.gamma", f"{src}.cca.gamma.scale", _scalar)
        if f"{src}.conv_cat.conv.weight" in mapping.source:  # concat_input (mmseg's default)
            mapping.conv_module(f"{dst}.conv_out", f"{src}.convs.1")
            mapping.conv_module(f"{dst}.tail.conv", f"{src}.conv_cat")
        else:
            mapping.conv_module(f"{dst}.tail.conv", f"{src}.convs.1")
    elif kind == "DAHead":  # the main classifier (conv_seg, on the sum) is mapped by the caller
        for branch in ("pam", "cam"):
            mapping.conv_module(f"{dst}.{branch}_in", f"{src}.{branch}_in_conv")
            mapping.take(f"{dst}.{branch}.gamma", f"{src}.{branch}.gamma.scale", _scalar)
            mapping.conv_module(f"{dst}.tail_{branch}.conv", f"{src}.{branch}_out_conv")
            mapping.linear(f"{dst}.classifier_{branch}.conv", f"{src}.{branch}_conv_seg")
        for part in ("query", "key", "value"):
            mapping.linear(f"{dst}.pam.{part}", f"{src}.pam.{part}_project")
    else:
        raise ConversionError(
            f"no mmsegmentation converter for segcls's {kind} yet (supported: FCNHead, PSPHead, UPerHead, "
            "ASPPHead, DeepLabV3PlusHead, NonLocalHead, CCHead, DAHead)"
        )


def _mmseg_ocr_cascade(mapping: _Mapping, src: str, dst: str):
    """mmseg's OCRNet (CascadeEncoderDecoder): ``src.0`` the coarse FCNHead (num_convs 1), ``src.1``
    the OCRHead -> segcls's one OCRHead (coarse_conv/coarse_classifier, conv_in, object_context,
    tail = mmseg's ObjectAttentionBlock bottleneck on [context, pixels]); query = pixels (phi),
    key / value = object regions (psi / delta), out_project = rho."""
    mapping.conv_module(f"{dst}.coarse_conv", f"{src}.0.convs.0")
    mapping.linear(f"{dst}.coarse_classifier.conv", f"{src}.0.conv_seg")
    ocr, block = f"{src}.1", f"{src}.1.object_context_block"
    mapping.conv_module(f"{dst}.conv_in", f"{ocr}.bottleneck")
    for segcls_name, mmseg_name in (("phi", "query_project"), ("psi", "key_project")):
        for i in (0, 1):
            mapping.conv_module(f"{dst}.object_context.{segcls_name}.{i}", f"{block}.{mmseg_name}.{i}")
    mapping.conv_module(f"{dst}.object_context.delta", f"{block}.value_project")
    mapping.conv_module(f"{dst}.object_context.rho", f"{block}.out_project")
    mapping.conv_module(f"{dst}.tail.conv", f"{block}.bottleneck")


# ------------------------------------------------------------------------------------------------
# Swin / ConvNeXt backbones -> segcls's timm backbone
# ------------------------------------------------------------------------------------------------
def _rename(name: str, table) -> Optional[str]:
    """``name`` rewritten by the first (pattern, replacement) of ``table`` that matches (a
    replacement string or function, as for ``re.sub``), else None."""
    for pattern, replacement in table:
        renamed, n = re.subn(pattern, replacement, name)
        if n:
            return renamed
    return None


class _TimmTarget:
    """segcls's ``TimmBackbone`` with output norms (``build_timm_backbone`` with the peer's Swin /
    ConvNeXt and ``MODEL.TIMM.OUT_NORM``) as the target of a peer backbone ``backbone.*``: the peer's
    output norms (``out_norm``: a pattern of their names whose groups are the level number and
    weight/bias, and the number of the first level) go to ``out_norms.res2..res5``; the trunk
    tensors, named by the full timm model's names, to ``model.*`` (its features_only names)."""

    def __init__(self, mapping: _Mapping, backbone, source: str, out_norm: Tuple[str, int]):
        if not hasattr(backbone, "full_to_features_names") or getattr(backbone, "out_norms", None) is None:
            raise ConversionError(
                f"{source}'s backbone needs build_timm_backbone with the same model (MODEL.TIMM.NAME) and "
                "MODEL.TIMM.OUT_NORM True (its per-stage output norms)"
            )
        self.mapping = mapping
        self.to_features = backbone.full_to_features_names()
        self.shapes = {k: v.shape for k, v in backbone.model.state_dict().items()}
        self.levels = sorted(backbone.out_norms.keys())
        self.out_norm = out_norm

    def names(self):
        """(source name, name without ``backbone.``) of the trunk tensors to map; maps the output
        norms and marks the derived ``relative_position_index`` buffers used (timm rebuilds them)."""
        pattern, first = self.out_norm
        for src in list(self.mapping.source):
            if not src.startswith("backbone."):
                continue
            name = src[len("backbone."):]
            m = re.fullmatch(pattern, name)
            if m:
                self.mapping.take(f"backbone.out_norms.{self.levels[int(m.group(1)) - first]}.{m.group(2)}", src)
            elif name.endswith("relative_position_index"):
                self.mapping.used.add(src)
            else:
                yield src, name

    def take(self, timm_name: Optional[str], src, transform: Optional[Callable] = None):
        """``src`` (see :meth:`_Mapping.take`) -> timm's ``timm_name``, reshaped to the target's shape
        where only the shape differs (a pointwise Linear (C_out, C_in) as timm's 1x1 conv with
        conv_mlp); names that are no trunk tensor (None, a classifier) are left unused."""
        if timm_name not in self.to_features:
            return
        dst = self.to_features[timm_name]
        shape = self.shapes[dst]

        def fit(t):
            t = transform(t) if transform is not None else t
            return t.reshape(shape) if t.numel() == shape.numel() else t

        self.mapping.take("backbone.model." + dst, src, fit)


_MMSEG_OUT_NORM = (r"norm(\d)\.(weight|bias)", 0)  # mmseg's Swin, mmpretrain's ConvNeXt: norm0..3
_HF_OUT_NORM = (r"hidden_states_norms\.stage(\d)\.(weight|bias)", 1)  # HF backbones: stage1..4

_MMSEG_SWIN = [
    (r"patch_embed\.projection\.", "patch_embed.proj."),
    (r"patch_embed\.norm\.", "patch_embed.norm."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.", r"layers.\1.blocks.\2.attn."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\.", r"layers.\1.blocks.\2.mlp.fc2."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.(norm\d)\.", r"layers.\1.blocks.\2.\3."),
]  # mmseg SwinTransformer name -> timm SwinTransformer name (PatchMerging: see _map_mmseg_swin)


def _unfold_to_timm_order(channels: int) -> torch.Tensor:
    """Index permutation of PatchMerging's 4C inputs: mmseg concatenates the 2x2 neighbours with
    ``nn.Unfold`` (index c * 4 + kh * 2 + kw), timm / the official Swin as [x(0,0), x(1,0), x(0,1),
    x(1,1)] (index kw * 2C + kh * C + c); entry t of the result is the mmseg index of timm's t."""
    t = torch.arange(4 * channels)
    kw, kh, c = t // (2 * channels), (t // channels) % 2, t % channels
    return c * 4 + kh * 2 + kw


def _map_mmseg_swin(mapping: _Mapping, backbone):
    """mmseg's SwinTransformer (``backbone.*``) -> segcls's timm Swin (``build_timm_backbone``,
    ``MODEL.TIMM.OUT_NORM`` for mmseg's ``norm0..3``). mmseg's PatchMerging closes stage i, timm's
    opens stage i + 1; its 4C inputs are permuted (:func:`_unfold_to_timm_order`)."""
    target = _TimmTarget(mapping, backbone, "mmseg's Swin", _MMSEG_OUT_NORM)
    for src, name in target.names():
        m = re.fullmatch(r"stages\.(\d+)\.downsample\.(norm|reduction)\.(weight|bias)", name)
        if m:
            perm = _unfold_to_timm_order(mapping.source[src].shape[-1] // 4)
            transform = (lambda t, p=perm: t[:, p]) if mapping.source[src].dim() == 2 else (lambda t, p=perm: t[p])
            target.take(f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}.{m.group(3)}", src, transform)
        else:
            target.take(_rename(name, _MMSEG_SWIN), src)


_MMPRETRAIN_CONVNEXT = [
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.depthwise_conv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^stages\.(\d+)\.(\d+)\.norm\.", r"stages.\1.blocks.\2.norm."),
    (r"^stages\.(\d+)\.(\d+)\.pointwise_conv1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d+)\.(\d+)\.pointwise_conv2\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d+)\.(\d+)\.gamma$", r"stages.\1.blocks.\2.gamma"),
]  # mmpretrain ConvNeXt name -> timm ConvNeXt name: downsample_layers.0 = (stem conv, LN), .i = (LN, 2x2 conv)


def _map_mmpretrain_convnext(mapping: _Mapping, backbone):
    """mmseg's ``mmpretrain.ConvNeXt`` backbone (``backbone.*``, ``gap_before_final_norm=False``)
    -> segcls's timm ConvNeXt (``MODEL.TIMM.OUT_NORM`` for its ``norm0..3``); its pointwise Linear
    layers (``linear_pw_conv``, the default) fit timm's 1x1 convs (``conv_mlp``) by a reshape."""
    target = _TimmTarget(mapping, backbone, "mmpretrain's ConvNeXt", _MMSEG_OUT_NORM)
    for src, name in target.names():
        target.take(_rename(name, _MMPRETRAIN_CONVNEXT), src)


def _convert_mmseg(mapping: _Mapping, model):
    if any(k.startswith("backbone.stages.0.blocks.0.attn.w_msa.") for k in mapping.source):
        _map_mmseg_swin(mapping, model.backbone)
    elif "backbone.downsample_layers.0.0.weight" in mapping.source:
        _map_mmpretrain_convnext(mapping, model.backbone)
    else:
        _map_resnet(mapping, "backbone.", "backbone.", model.backbone)
    if type(model.decode_head).__name__ == "OCRHead":
        _mmseg_ocr_cascade(mapping, "decode_head", "decode_head")
        mapping.linear("classifier.conv", "decode_head.1.conv_seg")
    else:
        _mmseg_head(mapping, model.decode_head, "decode_head", "decode_head")
        mapping.linear("classifier.conv", "decode_head.conv_seg")
    if getattr(model, "aux_head", None) is not None and "auxiliary_head.conv_seg.weight" in mapping.source:
        _mmseg_head(mapping, model.aux_head, "auxiliary_head", "aux_head")
        mapping.linear("aux_classifier.conv", "auxiliary_head.conv_seg")


# ------------------------------------------------------------------------------------------------
# HF UperNet (ConvNeXt or Swin backbone)
# ------------------------------------------------------------------------------------------------
_HF_CONVNEXT = [
    (r"embeddings\.patch_embeddings\.", "stem.0."),
    (r"embeddings\.layernorm\.", "stem.1."),
    (r"encoder\.stages\.(\d+)\.downsampling_layer\.", r"stages.\1.downsample."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", r"stages.\1.blocks.\2.gamma"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages.\1.blocks.\2.norm."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.", r"stages.\1.blocks.\2.mlp.fc2."),
]  # HF ConvNextModel name -> timm ConvNeXt name

_HF_BLOCK = r"^(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_HF_SWIN = [
    (r"^(?:swin\.)?embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(?:swin\.)?embeddings\.norm\.", "patch_embed.norm."),
    (r"^(?:swin\.)?encoder\.layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample."),
    (_HF_BLOCK + r"layernorm_before\.", r"layers.\1.blocks.\2.norm1."),
    (_HF_BLOCK + r"layernorm_after\.", r"layers.\1.blocks.\2.norm2."),
    (_HF_BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_bias_table$",
     r"layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (_HF_BLOCK + r"attention\.(?:self\.query|q_proj)\.", r"layers.\1.blocks.\2.attn.qkv."),
    (_HF_BLOCK + r"attention\.(?:output\.dense|o_proj)\.", r"layers.\1.blocks.\2.attn.proj."),
    (_HF_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (_HF_BLOCK + r"(?:output\.dense|mlp\.fc2)\.", r"layers.\1.blocks.\2.mlp.fc2."),
]  # HF SwinBackbone name (files: transformers 4.x names; modules of 5.x: swin.*, q/k/v/o_proj, mlp.*) -> timm Swin
_HF_QKV = {"self.query": ("self.query", "self.key", "self.value"), "q_proj": ("q_proj", "k_proj", "v_proj")}  # 4.x, 5.x


def _map_hf_convnext(mapping: _Mapping, backbone):
    """HF's ConvNextBackbone -> segcls's timm ConvNeXt (``MODEL.TIMM.OUT_NORM`` for HF's
    ``hidden_states_norms``); HF's pointwise Linear layers fit timm's 1x1 convs by a reshape."""
    target = _TimmTarget(mapping, backbone, "HF UperNet's ConvNeXt", _HF_OUT_NORM)
    for src, name in target.names():
        target.take(_rename(name, _HF_CONVNEXT), src)


def _map_hf_swin(mapping: _Mapping, backbone):
    """HF's SwinBackbone -> segcls's timm Swin (``MODEL.TIMM.OUT_NORM`` for HF's
    ``hidden_states_norms``). HF's separate query / key / value Linear layers are timm's fused
    ``attn.qkv`` (concatenated in that order); HF's ``layers.i.downsample`` closes stage i, timm's
    opens stage i + 1, with the same 2x2 concatenation order (no permutation, unlike mmseg's).
    HF SwinModel's final ``layernorm`` is not part of the backbone's computation: left unused."""
    target = _TimmTarget(mapping, backbone, "HF UperNet's Swin", _HF_OUT_NORM)
    for src, name in target.names():
        m = re.fullmatch(r"(.+\.attention\.)(self\.query|q_proj)(\.weight|\.bias)", name)
        if m:  # the key / value names are consumed with the query's
            parts = _HF_QKV[m.group(2)]
            target.take(_rename(name, _HF_SWIN), tuple(f"backbone.{m.group(1)}{p}{m.group(3)}" for p in parts))
        else:
            target.take(_rename(name, _HF_SWIN), src)


def _convert_hf_upernet(mapping: _Mapping, model):
    swin = r"backbone\.(swin\.)?embeddings\.patch_embeddings\.projection\.weight"  # ConvNeXt's: patch_embeddings.weight
    if any(re.fullmatch(swin, k) for k in mapping.source):
        _map_hf_swin(mapping, model.backbone)
    else:
        _map_hf_convnext(mapping, model.backbone)
    _uper_head(mapping, model.decode_head, "decode_head", "decode_head", bn="batch_norm")
    mapping.linear("classifier.conv", "decode_head.classifier")
    if getattr(model, "aux_head", None) is not None and "auxiliary_head.classifier.weight" in mapping.source:
        num_convs = sum(1 for k in mapping.source if re.fullmatch(r"auxiliary_head\.convs\.\d+\.conv\.weight", k))
        for i in range(num_convs - 1):
            mapping.conv_module(f"aux_head.convs.{i}", f"auxiliary_head.convs.{i}", bn="batch_norm")
        mapping.conv_module("aux_head.tail.conv", f"auxiliary_head.convs.{num_convs - 1}", bn="batch_norm")
        mapping.linear("aux_classifier.conv", "auxiliary_head.classifier")


def _convert_backbone(mapping: _Mapping, model):
    prefix = next((p for p in ("backbone.", "module.", "") if any(k.startswith(p + "layer1.") for k in mapping.source)))
    _map_resnet(mapping, prefix, "backbone.", model.backbone)


def _convert_segcls(mapping: _Mapping, model):
    for name in model.state_dict():
        mapping.take(name, name)


_CONVERTERS = {
    "torchvision_segmentation": (_convert_torchvision_segmentation, "model"),
    "mmseg": (_convert_mmseg, "model"),
    "hf_upernet": (_convert_hf_upernet, "model"),
    "torchvision_resnet": (_convert_backbone, "backbone"),
    "openmmlab_resnet": (_convert_backbone, "backbone"),
    "segcls": (_convert_segcls, "model"),
}


# ------------------------------------------------------------------------------------------------
# Entry point and guard
# ------------------------------------------------------------------------------------------------
def check_mapping(target: Dict[str, torch.Tensor], mapped: Dict[str, torch.Tensor], scope: str, source: str,
                  allow_partial: bool = False) -> List[str]:  # fmt: skip
    """Check ``mapped`` against the ``target`` state dict: every mapped name must exist there with
    the same shape (always an error otherwise); every target tensor in ``scope`` ("model" = all,
    "backbone" = ``backbone.*``) except ``num_batches_tracked`` must be mapped, unless
    ``allow_partial`` (then the unmapped names are returned and logged). ``source`` names the
    file, for the errors."""
    unknown = [k for k in mapped if k not in target]
    if unknown:
        raise ConversionError(f"'{source}': the converter produced names the model lacks: {unknown[:8]}")
    shapes = [f"{k}: {tuple(v.shape)} in the file, {tuple(target[k].shape)} in the model"
              for k, v in mapped.items() if tuple(v.shape) != tuple(target[k].shape)]  # fmt: skip
    if shapes:
        raise ConversionError(f"'{source}' does not fit the model: {len(shapes)} tensors have other shapes, first: "
                              + "; ".join(shapes[:5]))  # fmt: skip
    expected = [k for k in target if (scope == "model" or k.startswith("backbone.")) and not k.endswith("num_batches_tracked")]
    unmapped = [k for k in expected if k not in mapped]
    if unmapped and not allow_partial:
        raise ConversionError(
            f"'{source}' leaves {len(unmapped)} of the {len(expected)} tensors the model expects "
            f"({'the backbone' if scope == 'backbone' else 'the whole model'}) unmapped, at their random "
            f"initialisation: {unmapped[:10]}{' ...' if len(unmapped) > 10 else ''}. Check the config "
            "(depth, stem, head layout) against the file, or allow partial loading explicitly (--allow-partial)"
        )
    if unmapped:
        logger.warning(f"'{source}': {len(unmapped)} tensors left unmapped (partial loading allowed): {unmapped[:10]}")
    return unmapped


def convert_state_dict(state: Dict[str, torch.Tensor], model: torch.nn.Module, source: str = "checkpoint",
                       layout: Optional[str] = None, allow_partial: bool = False) -> Conversion:  # fmt: skip
    """Map the peer state dict ``state`` onto segcls ``model``'s names (``layout`` detected by
    :func:`detect_layout` when None) and check the result (:func:`check_mapping`)."""
    target = model.state_dict()
    layout = layout or detect_layout(state, target)
    if layout not in _CONVERTERS:
        raise ConversionError(f"layout={layout!r}: expected one of {list(_CONVERTERS)}")
    convert, scope = _CONVERTERS[layout]
    mapping = _Mapping(state, source)
    convert(mapping, model)
    unmapped = check_mapping(target, mapping.out, scope, source, allow_partial)
    unused = sorted(k for k in state if k not in mapping.used and not k.endswith("num_batches_tracked"))
    if unused:
        logger.info(f"'{source}': {len(unused)} tensors not used by the model, e.g. {unused[:5]}")
    return Conversion(mapping.out, layout, scope, unused, unmapped)
