"""DANet decode head (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019)."""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ...utils.config import get_config_node
from ..classifiers import LinearClassifier
from ..layers import conv_norm_act
from ..losses import PixelLossSet
from ..outputs import Prediction, SegOutputs
from ..registry import DECODE_HEAD_REGISTRY
from .attention import ChannelAttention, PositionAttention
from .base import DecodeHead, input_feature
from .config import head_keys
from .tail import HeadTail


@head_keys("DANET", used_by=("DAHead",))
def declare_danet_keys(danet):
    """``DANET.*``. CAM_ENERGY: "official" = the released code's softmax(max_j e_ij - e_ij), which
    is softmax(-e_ij), what every DANet result (and mmsegmentation) uses; "paper" = DANet Eq. 3,
    softmax(e_ij). BRANCH_LOSS_WEIGHT: weight of the pixel losses of the position- and
    channel-attention branch predictions (1.0 in DANet and mmsegmentation), keys
    "loss_pam_<loss>" and "loss_cam_<loss>"."""
    danet.CAM_ENERGY = "official"
    danet.BRANCH_LOSS_WEIGHT = 1.0


@DECODE_HEAD_REGISTRY.register()
class DAHead(DecodeHead):
    """
    Two parallel branches on one backbone feature (DANet Fig. 2, the released ``DANetHead``):

    - position branch: 3x3 conv-norm-ReLU (C_in -> C) -> :class:`PositionAttention` -> tail_pam;
    - channel branch: 3x3 conv-norm-ReLU (C_in -> C) -> :class:`ChannelAttention` -> tail_cam;

    each tail a :class:`HeadTail` (C -> C; CAR's projection / change "A" apply to both). The
    classifier's input is their sum, ``"pixel_feature" = tail_pam + tail_cam`` (N, C, h, w).

    Regularizer features: ``"reg_feature_pam"`` / ``"reg_feature_cam"`` (N, C', h, w), each
    branch's feature: the branch tail's regularization projection with ``REG_PROJECTION``, else the
    branch feature entering the sum. ``"reg_feature"`` is not set (a regularizer of the main
    prediction sees the summed pixel feature). In training, each branch also has its own
    classifier (dropout ``MODEL.CLASSIFIER.DROPOUT`` + 1x1 conv) whose predictions ``"pam"`` and
    ``"cam"`` carry the head's pixel losses times ``DANET.BRANCH_LOSS_WEIGHT`` as their loss spec:
    ``"loss_pam_<loss>"``, ``"loss_cam_<loss>"`` (DANet and mmsegmentation supervise all three
    predictions with weight 1).
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        in_stride: int,
        channels: int,
        num_classes: int,
        tail_pam: HeadTail,
        tail_cam: HeadTail,
        branch_loss: PixelLossSet,
        cam_energy: str = "official",
        norm: str = "BN",
        dropout: float = 0.1,
    ):
        super().__init__(in_feature=in_feature, out_channels=channels, out_stride=in_stride)
        self.pam_in = conv_norm_act(in_channels, channels, 3, norm)
        self.pam = PositionAttention(channels)
        self.tail_pam = tail_pam
        self.cam_in = conv_norm_act(in_channels, channels, 3, norm)
        self.cam = ChannelAttention(cam_energy)
        self.tail_cam = tail_cam
        self.classifier_pam = LinearClassifier(in_channels=channels, num_classes=num_classes, dropout=dropout)
        self.classifier_cam = LinearClassifier(in_channels=channels, num_classes=num_classes, dropout=dropout)
        self.branch_loss = branch_loss

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], prefix="MODEL.DECODE_HEAD"):
        node = get_config_node(cfg, prefix)
        return {
            **input_feature(node, input_shape),
            "channels": node.CHANNELS,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "tail_pam": HeadTail.from_node(node, node.CHANNELS),
            "tail_cam": HeadTail.from_node(node, node.CHANNELS),
            "branch_loss": PixelLossSet.from_node(cfg, node, scale=node.DANET.BRANCH_LOSS_WEIGHT),
            "cam_energy": node.DANET.CAM_ENERGY,
            "norm": node.NORM,
            "dropout": cfg.MODEL.CLASSIFIER.DROPOUT,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets=None) -> SegOutputs:
        x = features[self.in_feature]
        pam = self.tail_pam(self.pam(self.pam_in(x)))
        cam = self.tail_cam(self.cam(self.cam_in(x)))
        out = SegOutputs(
            pixel_feature=pam.pixel_feature + cam.pixel_feature,
            reg_features={"reg_feature_pam": pam.reg_feature("reg_feature"), "reg_feature_cam": cam.reg_feature("reg_feature")},
        )
        if self.training and targets is not None:
            out.predictions["pam"] = Prediction(self.classifier_pam(pam.pixel_feature).logits, self.branch_loss)
            out.predictions["cam"] = Prediction(self.classifier_cam(cam.pixel_feature).logits, self.branch_loss)
        return out
