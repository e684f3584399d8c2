from detectron2.config import CfgNode as CN


def add_se_fcn_config(cfg):
    """Keys of this fork, under MODEL.SE_FCN."""
    cfg.MODEL.SE_FCN = CN()
    # Registered decode head that SEHead wraps (composition by registry name, as PointRend does).
    cfg.MODEL.SE_FCN.BASE_HEAD = "FCNHead"
    # Channel reduction of the squeeze-and-excitation gate (Hu et al., 2018).
    cfg.MODEL.SE_FCN.REDUCTION = 4
    # Label smoothing of LabelSmoothingCrossEntropyLoss (0 = plain cross-entropy).
    cfg.MODEL.SE_FCN.LABEL_SMOOTHING = 0.1
