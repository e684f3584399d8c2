"""ECENet's configuration keys, ``MODEL.ECENET.*`` (called from ``segcls.config.add_segcls_config``)."""
from detectron2.config import CfgNode as CN


def add_ecenet_config(cfg):
    """Add ``MODEL.ECENET`` (ECENet, "Boosting Semantic Segmentation from the Perspective of Explicit
    Class Embeddings", Sec. 3) to ``cfg`` in place. Select the model with
    ``MODEL.META_ARCHITECTURE: ECENet``; classes: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``."""
    cfg.MODEL.ECENET = CN()
    e = cfg.MODEL.ECENET
    # Backbone features F1..F4, finest first (strides 4, 8, 16, 32 with MODEL.RESNETS.OUTPUT_STRIDE
    # 32). The last one gives the first masks (Eq. 4); Semantics Attention & Updater runs on the
    # others from coarse to fine. Pixel-shuffle factors are stride_i / stride_1.
    e.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # C, the unified channel count of X1..X4, class embeddings and attention (256 in the paper).
    e.EMBED_DIM = 256
    # Norm of the FR and GhostModule convs ("BN", "SyncBN", "GN", ...).
    e.NORM = "BN"

    # Feature Reconstruction (Sec. 3.2, Eqs. 1-2) on every stage. ENABLED False = the "no FR" row of
    # Table 4 (then LOSS.DIV_WEIGHT must be 0). SE block of the diverse branch: reduction
    # SE_RATIO (4) and gate SE_GATE ("sigmoid" or GhostNet's "hard_sigmoid").
    e.FR = CN()
    e.FR.ENABLED = True
    e.FR.SE_RATIO = 4
    e.FR.SE_GATE = "sigmoid"

    # Explicit Class Extraction (Sec. 3.3, Eq. 5): pyramid pooling levels 1..S with
    # S = floor(ALPHA * sqrt(N)); ALPHA = 1 (ADE20K), sqrt(2) (Pascal Context), 3 (Cityscapes).
    # POOL_SIZE > 0 sets S directly. SHARED True: one ECE (one Linear D -> C) for the initial masks
    # and every SAU stage instead of a separate one per use.
    e.ECE = CN()
    e.ECE.ALPHA = 1.0
    e.ECE.POOL_SIZE = 0
    e.ECE.SHARED = False

    # Semantics Attention (Sec. 3.4, Eqs. 6-7): heads, and Mix-FFN hidden size = MLP_RATIO * C.
    e.NUM_HEADS = 8
    e.MLP_RATIO = 4
    # Class updater (Eqs. 9-10): "gated" or "plus" (G + G_hat, Table 6).
    e.UPDATER = "gated"

    # Loss (Eqs. 11-12), SegViT-style: class embedding n <-> ground-truth mask of class n.
    e.LOSS = CN()
    e.LOSS.CLASS_WEIGHT = 1.0  # cross-entropy over N + 1 classes
    e.LOSS.NO_OBJECT_WEIGHT = 0.1  # class weight of "no object" (classes absent from the image)
    e.LOSS.FOCAL_WEIGHT = 20.0  # lambda_focal, sigmoid focal loss on the summed masks
    e.LOSS.FOCAL_ALPHA = 0.25
    e.LOSS.FOCAL_GAMMA = 2.0
    e.LOSS.DICE_WEIGHT = 1.0  # lambda_dice
    # lambda_div (0.2, Table 5) on the diversity loss (Eq. 3) summed over the FR stages; 0 = the
    # "FR without L_div" row of Table 4.
    e.LOSS.DIV_WEIGHT = 0.2
    # Class and mask losses also on every intermediate class embedding / cumulative mask sum.
    e.LOSS.DEEP_SUPERVISION = True
    # Not in the paper: its loss gives the aggregation's final 1x1 conv no gradient, so pixel
    # losses (PIXEL_LOSS_REGISTRY; default cross-entropy, weight 1, ignore label honoured) are
    # applied to the fused prediction.
    e.LOSS.PIXEL_LOSSES = ["CrossEntropyLoss"]
    e.LOSS.PIXEL_LOSS_WEIGHTS = [1.0]
    return cfg
