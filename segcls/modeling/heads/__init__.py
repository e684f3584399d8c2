from ..layers import conv_norm_act
from .base import DecodeHead, input_feature
from .config import add_head_config, head_keys, validate_head_config
from .tail import HeadTail
from .fcn import FCNHead
from .cpnet import CPHead
from .danet import DAHead
from .ocr import OCRHead
from .self_attention import CCHead, NonLocalHead
from .aspp import ASPPHead, DeepLabV3PlusHead, KSACHead
from .psp import PSPHead, UPerHead
from .caa import CAAHead
