from .fcn import FCNHead
from .tail import HeadTail, conv_norm_act
from .cpnet import CPHead
from .danet import DAHead
from .ocr import OCRHead
from .self_attention import CCHead, NonLocalHead
from .aspp import ASPPHead, DeepLabV3PlusHead, KSACHead
from .psp import PSPHead, UPerHead
from .caa import CAAHead
