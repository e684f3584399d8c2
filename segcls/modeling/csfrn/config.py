"""``MODEL.CSFRN.*``: the keys of CSFRN (paper 003; spelled apart from the context-aware
classifier's ``MODEL.CAC``)."""
from detectron2.config import CfgNode as CN


def add_csfrn_config(cfg):
    """
    Keys of :class:`segcls.modeling.csfrn.CSFRNHead`. Enable CSFRN with
    ``MODEL.DECODE_HEAD.NAME: "CSFRNHead"`` and name the wrapped head in ``MODEL.CSFRN.BASE_HEAD``
    (it is built from the same ``MODEL.DECODE_HEAD`` node, unchanged).
    """
    cfg.MODEL.CSFRN = CN()
    # The wrapped per-pixel decode head (DECODE_HEAD_REGISTRY name): FCNHead, PSPHead,
    # NonLocalHead, DeepLabV3PlusHead, ...
    cfg.MODEL.CSFRN.BASE_HEAD = "FCNHead"
    # The CSFLM input A: a backbone feature ("res5" = the last stage, C5, as in Fig. 1) or "head"
    # = the base head's pixel feature (the ablation text's "after PPM / Non-local / ASPP").
    cfg.MODEL.CSFRN.IN_FEATURE = "res5"
    # A' = 3x3 conv (MID_CHANNELS) + NORM + ReLU; B = 1x1 conv to EMBED_DIM (C', Table 3: 8/16/32/64;
    # default 32) channels, no activation; Cmap = 1x1 conv to 1 channel (the margins, training only).
    cfg.MODEL.CSFRN.MID_CHANNELS = 128
    cfg.MODEL.CSFRN.EMBED_DIM = 32
    cfg.MODEL.CSFRN.NORM = "BN"
    # Initialisation of B and Cmap (not given in the paper; segcls.modeling.csfrn.head.CSFLM):
    # "small" = B's conv N(0, 0.01^2), Cmap's weight and bias 0 (margins start at 0); "msra" = He
    # init on both (segcls before this key: the margins start saturated and the consistency loss
    # does not train).
    cfg.MODEL.CSFRN.INIT = "small"
    # Binary loss of the Class-Aware Consistency loss (Eq. 4): "lovasz" (the Lovasz hinge, default)
    # or "bce" (Table 4's CAC(BCE); phi clamped to [BCE_EPS, 1 - BCE_EPS]).
    cfg.MODEL.CSFRN.LOSS_TYPE = "lovasz"
    cfg.MODEL.CSFRN.BCE_EPS = 1e-6
    # Class-aware margins (Table 5): False replaces exp(DELTA * m_k) by 1 (no margin branch, no smooth loss).
    cfg.MODEL.CSFRN.USE_MARGINS = True
    cfg.MODEL.CSFRN.DELTA = 10.0
    # Overflow guard: DELTA * m_k is clamped at MARGIN_CLAMP (exp overflows float32 for m > 8.87 at
    # delta 10) when the loss runs under autocast (AMP), or always with MARGIN_CLAMP_ALWAYS. 0 = never.
    cfg.MODEL.CSFRN.MARGIN_CLAMP = 50.0
    cfg.MODEL.CSFRN.MARGIN_CLAMP_ALWAYS = False
    # Eq. 7: L = L_seg + CONSISTENCY_WEIGHT * L_cac + SMOOTH_WEIGHT * L_smooth (0.2 and 0.2).
    cfg.MODEL.CSFRN.CONSISTENCY_WEIGHT = 0.2
    cfg.MODEL.CSFRN.SMOOTH_WEIGHT = 0.2
    # Adaptive feature Aggregation Module (Eq. 6, Fig. 2). False = the CSFLM ablations (Tables 1-5):
    # the C-S feature X is concatenated to the head feature Y before the classifier.
    cfg.MODEL.CSFRN.AAM = CN()
    cfg.MODEL.CSFRN.AAM.ENABLED = True
    # Norm (+ ReLU) after each deformable conv and after the 1x1 fusion ("" = none, conv with bias).
    cfg.MODEL.CSFRN.AAM.NORM = "BN"
    return cfg
