"""An example segcls fork: a squeeze-and-excitation wrapper head and a label-smoothing loss,
added through segcls's registries without touching ``segcls/``. Importing registers them."""
from .config import add_se_fcn_config
from .head import SEHead
from .loss import LabelSmoothingCrossEntropyLoss
