from .resnet import DilatedBasicBlock, DilatedResNet, build_resnet_dilated_backbone, torchvision_to_detectron2_resnet
from .timm_backbone import TimmBackbone, add_timm_backbone_config, build_timm_backbone
from .weights import load_backbone_weights, read_state_dict
