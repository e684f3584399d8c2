from .resnet import DilatedBasicBlock, DilatedResNet, build_resnet_dilated_backbone
from .timm_backbone import TimmBackbone, add_timm_backbone_config, build_timm_backbone
from .weights import load_backbone_weights, read_state_dict
