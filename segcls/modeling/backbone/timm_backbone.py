"""
timm models as detectron2 backbones: ``build_timm_backbone`` wraps any timm model that supports
``features_only`` (Swin, ConvNeXt, EfficientNet, MobileNetV2, ResNet-D, HRNet, ...), chosen by
``MODEL.TIMM.NAME`` (see :func:`add_timm_backbone_config` for every key).

Outputs
    timm's feature levels are named by their nominal stride (the stride without dilation):
    4 -> ``res2``, 8 -> ``res3``, 16 -> ``res4``, 32 -> ``res5``. ``output_shape()`` reports each
    output's true stride and channels (with ``OUTPUT_STRIDE: 8``, res4 and res5 report stride 8).
    Every output is NCHW (Swin's NHWC features are permuted).

HRNet (``hrnet_*``)
    res2..res5 are the four branch outputs of the last stage (timm's ``feature_location=''``, not
    the classification "incre" features), and ``hrnetv2`` is their concatenation at stride 4 with
    the three coarser branches upsampled bilinearly (``MODEL.ALIGN_CORNERS``): HRNetV2, the
    feature OCR and the HRNet segmentation heads use (W18: 270 channels, W48: 720).

Swin (``swin_*``)
    Built as the official Swin *segmentation* backbone: every block partitions into full windows
    and shifts (timm's ``always_partition``), and a feature map that is not a multiple of the
    window is zero-padded at the bottom/right *before* the cyclic shift, with the shift mask built
    for the padded size (timm pads after the shift, which misaligns the mask with the wrapped rows,
    e.g. 128x128 stage-1 features at 512x512 with window 7). Any input that is a multiple of
    ``size_divisibility`` (32) works, whatever ``MODEL.TIMM.IMG_SIZE``.

Dilation
    ``OUTPUT_STRIDE`` 8 or 16 is passed to timm as ``output_stride`` (dilated last stages), for
    CNNs whose timm model supports it (ResNet(-D), ConvNeXt, EfficientNet, MobileNetV2);
    transformers and HRNet accept only 32 and fail with a clear error otherwise.

Norms, frozen stages
    ``NORM``: "BN" (timm's BatchNorm layers), "SyncBN", "FrozenBN" (timm's converters, which keep
    the activation of fused ``BatchNormAct2d`` layers). ``MODEL.BACKBONE.FREEZE_AT`` (detectron2's
    key, as for the ResNet backbone): 0 = nothing frozen, 1 = the stem, k = the stem and the first
    k - 1 stages (res2 .. res_k); frozen parameters get ``requires_grad=False`` and the frozen
    stages' BatchNorms become FrozenBatchNorm. The stem is everything before the stride-4 stage;
    stage k ends with the module that produces timm's k-th stride-4..32 feature (for HRNet,
    HRNet's own stages: layer1, transition1 + stage2, transition2 + stage3, transition3 + stage4).

Per-stage output norms
    ``MODEL.TIMM.OUT_NORM`` adds a LayerNorm over the channels of every output level
    (``out_norms.res2`` ..), as the segmentation backbones of the official UperNet-Swin /
    UperNet-ConvNeXt releases, mmsegmentation (``norm0`` .. ``norm3``) and HF
    (``hidden_states_norms``) have: eps 1e-6 for ConvNeXt (its ``LayerNorm(channels_first)``),
    1e-5 otherwise (``nn.LayerNorm``, Swin). Loaded from those checkpoints' ``norm<i>`` /
    ``hidden_states_norms.stage<i+1>`` tensors (``load_pretrained``) or a converted checkpoint.

Weights
    ``MODEL.TIMM.WEIGHTS``: a local timm, torchvision or official checkpoint, see
    :meth:`TimmBackbone.load_pretrained`. Nothing is downloaded.
"""
import logging
import re
import sys
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse

from .weights import load_checked_state_dict, read_state_dict

logger = logging.getLogger(__name__)

_LEVEL_NAMES = {4: "res2", 8: "res3", 16: "res4", 32: "res5"}
_HRNET_STAGE_MODULES = ("layer1", "stage2", "stage3", "stage4")
_NORMS = ("BN", "SyncBN", "FrozenBN")


def add_timm_backbone_config(cfg):
    """Add ``MODEL.TIMM.*`` (the timm backbone's keys) to ``cfg`` in place."""
    cfg.MODEL.TIMM = CN()
    # timm model name (timm.list_models()), e.g. "swin_tiny_patch4_window7_224", "convnext_large",
    # "tf_efficientnet_b5", "hrnet_w48", "mobilenetv2_100", "resnet101d". Used with
    # MODEL.BACKBONE.NAME = "build_timm_backbone".
    cfg.MODEL.TIMM.NAME = "resnet50d"
    # Outputs, by nominal stride: "res2" (4), "res3" (8), "res4" (16), "res5" (32); HRNet also
    # "hrnetv2" (the four branches concatenated at stride 4).
    cfg.MODEL.TIMM.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # 32 = no dilation; 8 or 16 dilate the last stages (CNNs only: ResNet, ConvNeXt, EfficientNet,
    # MobileNetV2). The CNN configs in configs/backbones use 8, as the CAR/CAC papers.
    cfg.MODEL.TIMM.OUTPUT_STRIDE = 32
    # BatchNorm type: "BN", "SyncBN" or "FrozenBN" (no effect on LayerNorm models: Swin, ConvNeXt).
    # Frozen stages: detectron2's MODEL.BACKBONE.FREEZE_AT, as for the ResNet backbone (0 = none,
    # 1 = stem, k = stem + res2..res_k).
    cfg.MODEL.TIMM.NORM = "BN"
    # Stochastic depth rate (0.3 for Swin-T/B/L, 0.4 for ConvNeXt-L in mmsegmentation's UperNet
    # recipes); must be 0 for models without stochastic depth (HRNet).
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    # [height, width] given as img_size to models with a fixed input size (timm's
    # "fixed_input_size": ViT-style transformers), which then accept other sizes dynamically.
    # It sizes their patch grid / position tables; Swin's outputs do not depend on it (see the
    # module docstring), set it to the training crop size.
    cfg.MODEL.TIMM.IMG_SIZE = [512, 512]
    # A LayerNorm over the channels of each output level (module docstring, "Per-stage output
    # norms"), as the official / mmsegmentation / HF UperNet-Swin and UperNet-ConvNeXt backbones.
    # False (default) = the timm features as they are; the UperNet-Swin configs of the CAR/CAC
    # papers set True.
    cfg.MODEL.TIMM.OUT_NORM = False
    # Local pretrained checkpoint (.pth/.pt/.bin or .safetensors: timm, torchvision or the official
    # release; "module."/"backbone."/"model." prefixes are stripped, official Swin/ConvNeXt names
    # converted by timm). "" = random initialisation. A converted detectron2 checkpoint
    # (tools/convert_pretrained.py) goes to MODEL.WEIGHTS instead.
    cfg.MODEL.TIMM.WEIGHTS = ""
    return cfg


class _PadFirstSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the official segmentation backbone's window attention: pad the
    (N, H, W, C) map to a multiple of the window, then shift, so the shift mask (built for the
    padded size) matches the wrapped rows and columns; equal to timm's on a padded input."""

    def _attn(self, x):
        _, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, -W % self.window_size[1], 0, -H % self.window_size[0]))
        Hp, Wp = x.shape[1:3]
        has_shift = any(self.shift_size)
        if has_shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=self.get_attn_mask(x) if has_shift else None)
        x = window_reverse(windows.view(-1, *self.window_size, C), self.window_size, Hp, Wp)
        if has_shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :H, :W].contiguous()


class TimmBackbone(Backbone):
    """
    A timm ``features_only`` model as a detectron2 backbone (see the module docstring).

    ``forward(x)``: x (N, C_in, H, W), H and W multiples of ``size_divisibility`` ->
    ``{name: (N, channels[name], H / stride[name], W / stride[name])}`` for ``out_features``.
    """

    def __init__(
        self,
        model_name: str,
        *,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        in_chans: int = 3,
        output_stride: int = 32,
        norm: str = "BN",
        drop_path_rate: float = 0.0,
        img_size: Sequence[int] = (512, 512),
        freeze_at: int = 0,
        weights: str = "",
        align_corners: bool = False,
        out_norm: bool = False,
        model_kwargs: Optional[dict] = None,
    ):
        """
        Args: see :func:`add_timm_backbone_config` (``freeze_at`` is ``MODEL.BACKBONE.FREEZE_AT``,
        ``align_corners`` ``MODEL.ALIGN_CORNERS``); ``model_kwargs``: extra keyword arguments of
        ``timm.create_model`` (e.g. a tiny ``embed_dim``/``depths`` in tests).
        """
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"MODEL.TIMM.OUTPUT_STRIDE={output_stride}: expected 8, 16 or 32")
        if norm not in _NORMS:
            raise ValueError(f"MODEL.TIMM.NORM={norm!r}: expected one of {_NORMS}")
        if not timm.is_model(model_name):
            raise ValueError(f"MODEL.TIMM.NAME={model_name!r}: not a timm model (see timm.list_models())")
        family = timm.models.model_entrypoint(model_name).__module__
        self._is_hrnet = family.endswith(".hrnet")
        kwargs = {"in_chans": in_chans, "drop_path_rate": drop_path_rate, **(model_kwargs or {})}
        if self._is_hrnet:
            kwargs["feature_location"] = ""  # the branch outputs, not the classification features
        if family.endswith(".swin_transformer"):
            kwargs["always_partition"] = True
        probe = self._probe(model_name, kwargs)
        if probe.pretrained_cfg.get("fixed_input_size"):
            kwargs.update(img_size=tuple(img_size), dynamic_img_size=True)

        # Level names by nominal stride; keep the levels that the requested outputs need.
        nominal = dict(zip(probe.feature_info.out_indices, probe.feature_info.reduction()))
        channels = dict(zip(probe.feature_info.out_indices, probe.feature_info.channels()))
        levels = {_LEVEL_NAMES[r]: i for i, r in nominal.items() if r in _LEVEL_NAMES}
        available = sorted(levels) + (["hrnetv2"] if self._is_hrnet else [])
        unknown = [f for f in out_features if f not in available]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.TIMM.OUT_FEATURES={list(out_features)}: {unknown or 'empty'}; "
                f"{model_name} provides {available}"
            )
        needed = set(levels.values()) if "hrnetv2" in out_features else {levels[f] for f in out_features}
        out_indices = sorted(needed)
        self._level_names = [_LEVEL_NAMES[nominal[i]] for i in out_indices]
        module_names = dict(zip(probe.feature_info.out_indices, probe.feature_info.module_name()))
        self._stage_modules = (
            _HRNET_STAGE_MODULES if self._is_hrnet else [module_names[i] for i in sorted(levels.values())]
        )

        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        try:
            self.model = timm.create_model(model_name, features_only=True, out_indices=out_indices, **kwargs)
        except (TypeError, AssertionError) as e:
            if output_stride == 32:
                raise
            raise ValueError(
                f"MODEL.TIMM.OUTPUT_STRIDE={output_stride}: timm's {model_name} cannot dilate "
                f"(it takes no output_stride={output_stride}); use 32"
            ) from e
        true_strides = self.model.feature_info.reduction()
        expected = [min(nominal[i], output_stride) for i in out_indices]
        if true_strides != expected:
            raise ValueError(
                f"MODEL.TIMM.OUTPUT_STRIDE={output_stride}: timm's {model_name} returned strides "
                f"{true_strides}, expected {expected}"
            )
        for module in self.model.modules():
            if type(module) is SwinTransformerBlock:
                module.__class__ = _PadFirstSwinBlock
        self._nhwc = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        self._create_args = (model_name, kwargs)
        self.align_corners = align_corners

        self._out_features = list(out_features)
        self._out_feature_strides = {}
        self._out_feature_channels = {}
        for name, i, stride in zip(self._level_names, out_indices, true_strides):
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = channels[i]
        if self._is_hrnet:
            self._out_feature_strides["hrnetv2"] = self._out_feature_strides["res2"]
            self._out_feature_channels["hrnetv2"] = sum(channels[i] for i in levels.values())
        self._size_divisibility = max(nominal[i] for i in out_indices) if output_stride == 32 else output_stride
        # Stage of each level's output norm (1 = the first stride-4..32 level), for stage_ids().
        self._level_stage = {_LEVEL_NAMES[nominal[i]]: k + 1 for k, i in enumerate(sorted(levels.values()))}
        self.out_norms = None
        if out_norm:
            eps = 1e-6 if family.endswith(".convnext") else 1e-5
            self.out_norms = torch.nn.ModuleDict(
                {name: torch.nn.LayerNorm(channels[i], eps=eps) for name, i in zip(self._level_names, out_indices)}
            )

        if weights:
            self.load_pretrained(weights)
        if norm == "FrozenBN":
            self.model = freeze_batch_norm_2d(self.model)
        elif norm == "SyncBN":
            self.model = convert_sync_batchnorm(self.model)
        self.freeze(freeze_at)

    @staticmethod
    def _probe(model_name, kwargs):
        """The model on the meta device (no memory, no init cost), for its feature levels. Drops
        ``drop_path_rate=0`` for models without stochastic depth (from ``kwargs`` in place)."""
        try:
            with torch.device("meta"):
                return timm.create_model(model_name, features_only=True, **kwargs)
        except TypeError as e:
            if "drop_path_rate" not in str(e):
                raise
            if kwargs["drop_path_rate"]:
                raise ValueError(
                    f"MODEL.TIMM.DROP_PATH_RATE={kwargs['drop_path_rate']}: timm's {model_name} has no "
                    "stochastic depth; use 0"
                ) from e
            del kwargs["drop_path_rate"]
            return TimmBackbone._probe(model_name, kwargs)

    @property
    def size_divisibility(self) -> int:
        """Inputs are padded to a multiple of the largest true stride (32 undilated)."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.model(x)
        if self.out_norms is not None:  # LayerNorm over channels, on NHWC
            features = [f if self._nhwc else f.permute(0, 2, 3, 1) for f in features]
            features = [self.out_norms[n](f) for n, f in zip(self._level_names, features)]
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        elif self._nhwc:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        outputs = dict(zip(self._level_names, features))
        if "hrnetv2" in self._out_features:
            outputs["hrnetv2"] = self.hrnetv2_concat(features)
        return {name: outputs[name] for name in self._out_features}

    def hrnetv2_concat(self, branches: List[torch.Tensor]) -> torch.Tensor:
        """HRNetV2: the 4 branches (N, C_i, H / 2^(i+2), W / 2^(i+2)) upsampled to the first one's
        size and concatenated -> (N, sum C_i, H / 4, W / 4)."""
        size = branches[0].shape[-2:]
        upsampled = [
            F.interpolate(b, size=size, mode="bilinear", align_corners=self.align_corners) for b in branches[1:]
        ]
        return torch.cat([branches[0]] + upsampled, dim=1)

    def stage_ids(self) -> Dict[str, int]:
        """Stage of every parameter (by name relative to this backbone): 0 = stem, k = the stage
        ending in the k-th stride-4..32 level (see the module docstring); for freezing and
        layer-wise LR decay. Parameters come in forward order, so stage boundaries are the last
        parameter of each level's producing module."""
        names = [n for n, _ in self.model.named_parameters()]
        spans = []  # (first, last) parameter index of each stage's final module
        for module_name in self._stage_modules:
            flat = "_".join(module_name.rsplit(".", 1))  # FeatureListNet flattens "layers.0" to "layers_0"
            inside = [i for i, n in enumerate(names) if n.startswith((module_name + ".", flat + "."))]
            if inside:  # the modules after the last requested level are not built
                spans.append((inside[0], inside[-1]))
        ids = {
            "model." + name: 0 if i < spans[0][0] else min(1 + sum(i > end for _, end in spans), len(spans))
            for i, name in enumerate(names)
        }
        if self.out_norms is not None:
            for name, _ in self.out_norms.named_parameters():
                ids["out_norms." + name] = self._level_stage[name.split(".")[0]]
        return ids

    def freeze(self, freeze_at: int = 0):
        """Freeze the stem (``freeze_at`` >= 1) and stages 1 .. freeze_at - 1: no gradient, and
        their BatchNorms become FrozenBatchNorm (running statistics fixed)."""
        if freeze_at <= 0:
            return self
        ids = self.stage_ids()
        for name, module in list(self.named_modules()):
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and isinstance(weight, torch.nn.Parameter):
                if ids[name + ".weight"] < freeze_at:
                    parent, _, child = name.rpartition(".")
                    setattr(self.get_submodule(parent), child, freeze_batch_norm_2d(module))
        for name, param in self.named_parameters():
            if ids[name] < freeze_at:
                param.requires_grad_(False)
        return self

    def load_pretrained(self, path: str, key: str = "MODEL.TIMM.WEIGHTS"):
        """
        Load a local checkpoint into the timm model (``key``: the config key or option that gave
        ``path``, for the errors). The file (.safetensors, or a torch pickle
        holding a state dict, possibly under "state_dict"/"model") may use the full model's names
        (timm, torchvision ResNet, or the official release converted by timm's own
        ``checkpoint_filter_fn``, e.g. Swin, ConvNeXt) or the ``features_only`` names; leading
        "module."/"backbone."/"model." are stripped. The classifier and other parts outside the
        feature extractor are skipped (logged); missing and unexpected keys are logged; an absent
        file, shape mismatches (the first ones named) or a file sharing no key with the model
        raise. The per-stage output norms (``OUT_NORM``) are read from the file's ``norm<i>.*``
        (official / mmsegmentation segmentation backbones, level i = 0..3) or
        ``hidden_states_norms.stage<i+1>.*`` (HF) tensors; a file without any (an ImageNet
        classification checkpoint) leaves them at their init (weight 1, bias 0), as training from
        ImageNet weights does in mmsegmentation; a file with only some of them is an error.
        Without ``OUT_NORM`` they are reported as unused. Returns the trunk's keys (``model.*``)
        the file left unloaded.
        """
        model_name, _ = self._create_args
        state_dict = read_state_dict(path, key)
        self._load_out_norms(state_dict, path)
        full = self._full_model()
        full_keys = set(full.state_dict())
        to_features = self.full_to_features_names()
        to_full = {v: k for k, v in to_features.items()}
        state_dict = {to_full.get(k, k): v for k, v in state_dict.items()}
        filter_fn = getattr(sys.modules[type(full).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:  # converts official releases (Swin, ConvNeXt, ...) to timm's names
            try:
                state_dict = filter_fn(state_dict, full)
            except (KeyError, RuntimeError) as e:
                raise ValueError(
                    f"{key}: timm's checkpoint_filter_fn for {model_name} failed on '{path}' "
                    f"({type(e).__name__}: {e}); does the file hold tensors that are not part of {model_name}?"
                ) from e
        outside = {k for k in state_dict if k in full_keys and k not in to_features}
        state_dict = {to_features.get(k, k): v for k, v in state_dict.items()}
        missing = load_checked_state_dict(self.model, state_dict, path, f"timm {model_name} (features_only)", skipped=outside)
        return ["model." + k for k in missing]


    def _full_model(self):
        """The full (classification) timm model of this backbone, on the meta device."""
        model_name, kwargs = self._create_args
        with torch.device("meta"):
            return timm.create_model(model_name, **{k: v for k, v in kwargs.items() if k != "feature_location"})

    def full_to_features_names(self) -> Dict[str, str]:
        """{full timm model name: ``self.model`` (features_only) name} of every trunk tensor
        (FeatureListNet flattens "stages.0" to "stages_0")."""
        full_keys = set(self._full_model().state_dict())
        mapping = {}
        for key in self.model.state_dict():
            head, _, rest = key.partition(".")
            mapping[key if key in full_keys else ".".join(head.rsplit("_", 1)) + "." + rest] = key
        return mapping

    def _load_out_norms(self, state_dict: Dict[str, torch.Tensor], path: str):
        """Move the output-norm tensors of a segmentation-backbone file out of ``state_dict``
        (in place) into ``out_norms`` (see :meth:`load_pretrained`)."""
        if self.out_norms is None:
            return
        level_names = [n for n, _ in sorted(self._level_stage.items(), key=lambda kv: kv[1])]
        found = {}
        for name in list(state_dict):
            match = re.fullmatch(r"(?:norm(\d)|hidden_states_norms\.stage(\d))\.(weight|bias)", name)
            if match:
                level = int(match.group(1)) if match.group(1) is not None else int(match.group(2)) - 1
                found[f"{level_names[level]}.{match.group(3)}"] = state_dict.pop(name)
        found = {k: v for k, v in found.items() if k.split(".")[0] in self.out_norms}
        if not found:  # an ImageNet classification checkpoint: the norms start fresh, as in mmseg's training
            logger.info(f"'{path}' has no per-stage output norms: MODEL.TIMM.OUT_NORM's LayerNorms keep their init")
            return
        load_checked_state_dict(self.out_norms, found, path, "the per-stage output norms")
        missing = sorted(set(self.out_norms.state_dict()) - set(found))
        if missing:
            raise ValueError(f"'{path}' lacks the output norms {missing} (MODEL.TIMM.OUT_NORM=True)")


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec):
    """Build :class:`TimmBackbone` from ``cfg.MODEL.TIMM`` (see :func:`add_timm_backbone_config`)."""
    t = cfg.MODEL.TIMM
    return TimmBackbone(
        t.NAME,
        out_features=t.OUT_FEATURES,
        in_chans=input_shape.channels,
        output_stride=t.OUTPUT_STRIDE,
        norm=t.NORM,
        drop_path_rate=t.DROP_PATH_RATE,
        img_size=t.IMG_SIZE,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        weights=t.WEIGHTS,
        align_corners=cfg.MODEL.ALIGN_CORNERS,
        out_norm=t.OUT_NORM,
    )
