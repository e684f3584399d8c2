from .fcn import FCNHead
from .tail import HeadTail, conv_norm_act
