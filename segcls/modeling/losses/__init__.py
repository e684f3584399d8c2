from .cross_entropy import CrossEntropyLoss
from .dice import DiceLoss
from .focal import FocalLoss
from .lovasz import LovaszHingeLoss, LovaszSoftmaxLoss, lovasz_grad, lovasz_hinge, lovasz_hinge_flat
from .ohem import OhemCrossEntropyLoss, OhemTopKCrossEntropyLoss
from .loss_set import PixelLossSet, SegmentationLoss, loss_key
