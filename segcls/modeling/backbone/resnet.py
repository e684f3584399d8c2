"""
Dilated ResNets as detectron2 backbones, for semantic segmentation.

``build_resnet_dilated_backbone`` builds detectron2's :class:`ResNet` with

- depth 18/34 (:class:`DilatedBasicBlock`, since detectron2's ``BasicBlock`` has no dilation) or
  50/101/152 (detectron2's ``BottleneckBlock``);
- the standard 7x7 stem (``STEM_TYPE: basic``) or DeepLab's three-3x3 stem (``deeplab``, the
  "ResNet-D/V1c" stem of DeepLab, PSPNet and mmsegmentation);
- output stride 8 (res4 dilation 2, res5 dilation 4), 16 (res5 dilation 2) or 32: a dilated stage
  keeps the resolution of the stage before it (stride 1) and dilates its 3x3 convs by its rate.
  ``CONTRACT_DILATION`` True (default): the first block of a dilated stage uses half the rate
  (res4: 1, 2, 2, ...; res5: 2, 4, 4), the convention of torchvision's
  ``replace_stride_with_dilation`` (the first block keeps the previous stage's dilation) and of
  mmsegmentation's ``contract_dilation=True`` (its ResNetV1c configs), so that their checkpoints
  compute the same features. False: every block uses the stage's rate (segcls before this option).
- ``RES5_MULTI_GRID`` (DeepLabV3's multi-grid, Sec. 3.2 of Chen et al. 2017): res5 block ``i`` uses
  the stage rate *times* ``grid[i]`` (``[1, 2, 4]`` at output stride 8 = dilations 4, 8, 16), with
  no contraction of the first block. mmsegmentation's ``multi_grid`` is absolute instead (block
  ``i`` uses ``multi_grid[i]``): mmseg's ``g`` is ``RES5_MULTI_GRID = g / rate`` here, e.g. its
  ``(4, 8, 16)`` at dilation 4 is ``[1, 2, 4]`` and its ``(1, 2, 4)`` is ``[0.25, 0.5, 1]`` (the
  products must be integers).
- ``AVG_DOWN`` (ResNet-D's shortcut, He et al. 2019 "Bag of Tricks", Fig. 2c; mmsegmentation's
  ``avg_down=True``, its ``ResNetV1d``): a downsampling shortcut average-pools (kernel = stride =
  the block's stride, ``ceil_mode``, ``count_include_pad=False``) before its 1x1 conv, which then
  has stride 1 (:class:`AvgDownConv2d`; same parameter names as the plain shortcut).

Outputs are named ``res2``..``res5``; ``output_shape()`` reports each one's true stride
(so a dilated res5 reports stride 8) and channels.

The backbone is a :class:`DilatedResNet`: detectron2's ``ResNet`` (same modules, same parameter
names) that loads a local torchvision, open-mmlab or detectron2-named checkpoint with
:meth:`DilatedResNet.load_pretrained`.
"""

import torch.nn.functional as F
from torch import nn
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
from detectron2.projects.deeplab.resnet import DeepLabStem
from fvcore.nn import weight_init

from ...converters.convert import resnet_names
from .weights import load_checked_state_dict, read_state_dict

# Dilation of (res4, res5) for each supported output stride.
_STAGE_DILATIONS = {8: (2, 4), 16: (1, 2), 32: (1, 1)}
_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class DilatedBasicBlock(CNNBlockBase):
    """
    ResNet-18/34 basic block (two 3x3 convs + shortcut) whose 3x3 convs can be dilated
    (padding = dilation keeps the size). Input (N, in_channels, H, W) ->
    (N, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels, out_channels, *, stride=1, dilation=1, norm="BN"):
        super().__init__(in_channels, out_channels, stride)
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels, out_channels, kernel_size=1, stride=stride, bias=False, norm=get_norm(norm, out_channels)
            )
        else:
            self.shortcut = None
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            padding=dilation,
            dilation=dilation,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class AvgDownConv2d(Conv2d):
    """
    ResNet-D's downsampling shortcut (``MODEL.RESNETS.AVG_DOWN``): ``AvgPool2d(stride, stride,
    ceil_mode=True, count_include_pad=False)`` (mmsegmentation's ``avg_down`` pool; none at stride
    1) then a 1x1 :class:`Conv2d` (+ norm) at stride 1. (N, C_in, H, W) -> (N, C_out,
    ceil(H / stride), ceil(W / stride)); parameters named like the plain shortcut conv's
    (``weight``, ``norm.*``), so open-mmlab ResNetV1d files map onto them.
    """

    def __init__(self, in_channels, out_channels, *, stride, norm):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=False, norm=get_norm(norm, out_channels))
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else None
        weight_init.c2_msra_fill(self)

    def forward(self, x):
        return super().forward(x if self.pool is None else self.pool(x))


def _use_avg_down(stage, norm):
    """Replace every downsampling shortcut of ``stage`` (a list of blocks) by an :class:`AvgDownConv2d`
    of the same channels and stride."""
    for block in stage:
        if block.shortcut is not None:
            conv = block.shortcut
            block.shortcut = AvgDownConv2d(conv.in_channels, conv.out_channels, stride=conv.stride[0], norm=norm)


class DilatedResNet(ResNet):
    """detectron2's :class:`ResNet` (modules and parameter names unchanged) with its own loader of
    pretrained weights."""

    def load_pretrained(self, path: str, key: str = "weights"):
        """Load the local checkpoint ``path`` (see :func:`read_state_dict`; ``key`` names the option
        that gave it, for the errors): torchvision and open-mmlab (ResNetV1c stem ``stem.0..7``)
        ResNet names are mapped to detectron2's (:func:`segcls.converters.resnet_names`; an
        open-mmlab ResNetV1d file needs ``MODEL.RESNETS.AVG_DOWN``),
        detectron2 names are loaded as they are; the classifier (fc.*) is skipped; shapes are
        checked (:func:`load_checked_state_dict`). Returns the keys left unloaded."""
        state_dict = read_state_dict(path, key)
        if "layer1.0.conv1.weight" in state_dict:
            names = resnet_names(state_dict, self, path)
            state_dict = {names[k] or k: v for k, v in state_dict.items()}
        return load_checked_state_dict(self, state_dict, path, "detectron2 ResNet", skipped=("fc.weight", "fc.bias"))


def _block_dilations(dilation, num_blocks, multi_grid, contract):
    """Dilation of each block of a stage of rate ``dilation`` (see the module docstring):
    ``dilation * multi_grid[i]`` when a multi-grid is given; else ``dilation`` for every block,
    the first one using ``dilation // 2`` when ``contract`` and ``dilation > 1``."""
    if multi_grid:
        dilations = [dilation * g for g in multi_grid]
        if any(d != int(d) or d < 1 for d in dilations):
            raise ValueError(
                f"MODEL.RESNETS.RES5_MULTI_GRID={list(multi_grid)}: times the res5 rate {dilation} it gives "
                f"dilations {dilations}; expected positive integers"
            )
        return [int(d) for d in dilations]
    first = dilation // 2 if contract and dilation > 1 else dilation
    return [first] + [dilation] * (num_blocks - 1)


@BACKBONE_REGISTRY.register()
def build_resnet_dilated_backbone(cfg, input_shape: ShapeSpec):
    """Build a dilated ResNet from ``cfg.MODEL.RESNETS`` (see the module docstring)."""
    r = cfg.MODEL.RESNETS
    norm = r.NORM
    depth = r.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH={depth}: expected one of {sorted(_BLOCKS_PER_STAGE)}")
    if r.OUTPUT_STRIDE not in _STAGE_DILATIONS:
        raise ValueError(f"MODEL.RESNETS.OUTPUT_STRIDE={r.OUTPUT_STRIDE}: expected 8, 16 or 32")
    if r.RES5_MULTI_GRID and len(r.RES5_MULTI_GRID) != _BLOCKS_PER_STAGE[depth][3]:
        raise ValueError(
            f"MODEL.RESNETS.RES5_MULTI_GRID={list(r.RES5_MULTI_GRID)}: expected one value per res5 block "
            f"({_BLOCKS_PER_STAGE[depth][3]} for depth {depth})"
        )
    if r.STEM_TYPE == "basic":
        stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=norm)
    elif r.STEM_TYPE == "deeplab":
        stem = DeepLabStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=norm)
    else:
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE={r.STEM_TYPE!r}: expected 'basic' or 'deeplab'")

    dilations = (1, 1) + _STAGE_DILATIONS[r.OUTPUT_STRIDE]
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        dilation = dilations[idx]
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        stage_kargs = {
            "num_blocks": num_blocks,
            "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        stage_kargs["dilation_per_block"] = _block_dilations(
            dilation, num_blocks, r.RES5_MULTI_GRID if idx == 3 else [], r.CONTRACT_DILATION
        )
        if depth >= 50:
            stage_kargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=r.STRIDE_IN_1X1,
                num_groups=r.NUM_GROUPS,
            )
            bottleneck_channels *= 2
        else:
            stage_kargs["block_class"] = DilatedBasicBlock
        stage = ResNet.make_stage(**stage_kargs)
        if r.AVG_DOWN:
            _use_avg_down(stage, norm)
        stages.append(stage)
        in_channels = out_channels
        out_channels *= 2
    return DilatedResNet(stem, stages, out_features=r.OUT_FEATURES).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
