"""CSFRN (paper 003): CSFLM, the Class-Aware Consistency and smooth losses, AAM, as a decode-head
wrapper around any per-pixel head (:class:`CSFRNHead`)."""
from .config import add_csfrn_config
from .head import AAM, CSFLM, CSFRNHead
from .loss import class_aware_consistency_loss, class_statistics, downsample_labels
