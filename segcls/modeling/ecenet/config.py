"""ECENet's configuration keys, ``MODEL.ECENET.*`` (called from ``segcls.config.add_segcls_config``).

Defaults are the authors' released head (``shared/specs/ecenet_released.md``, a port of their
code, which produced the paper's numbers). Every point where it differs from the paper-literal
reading segcls first implemented is a switch below, whose other value is that reading
(``configs/ade20k/ecenet_swin_b_paper_literal.yaml`` sets them all; :data:`PAPER_LITERAL` lists them).
"""
from detectron2.config import CfgNode as CN

# The switches back to the paper-literal reading (the ECENet of segcls before the released head
# became the default): config key -> value.
PAPER_LITERAL = {
    "MODEL.ECENET.FR.SE_RATIO": 4,
    "MODEL.ECENET.FR.SE_GATE": "sigmoid",
    "MODEL.ECENET.FR.SE_BIAS": True,
    "MODEL.ECENET.FR.CHEAP_RELU": True,
    "MODEL.ECENET.FR.OUT_NORM": "BN",
    "MODEL.ECENET.FR.DIVERSE_FIRST": False,
    "MODEL.ECENET.UNIFY_BIAS": True,
    "MODEL.ECENET.ECE.LEVELS": "all",
    "MODEL.ECENET.ECE.MASK_GROUPS": 1,
    "MODEL.ECENET.ECE.MASK_BIAS": True,
    "MODEL.ECENET.NUM_HEADS": 8,
    "MODEL.ECENET.ATTENTION.QUERY": "linear",
    "MODEL.ECENET.ATTENTION.KV": "separate",
    "MODEL.ECENET.ATTENTION.SOFTMAX": "standard",
    "MODEL.ECENET.UPDATER_TAIL": False,
    "MODEL.ECENET.CLASS_HEAD": "no_object",
    "MODEL.ECENET.UPSAMPLE": "single",
    "MODEL.ECENET.UPSAMPLE_SCALES": "stride",
    "MODEL.ECENET.FUSION": "conv1x1",
    "MODEL.ECENET.LOSS.CLASS_WEIGHT": 1.0,
    "MODEL.ECENET.LOSS.MASK_LOSS": "focal",
    "MODEL.ECENET.LOSS.MASK_WEIGHT": 20.0,
    "MODEL.ECENET.LOSS.DICE_WEIGHT": 1.0,
    "MODEL.ECENET.LOSS.MASK_SUM": "all",
    "MODEL.ECENET.LOSS.DEEP_SUPERVISION": True,
}


def paper_literal_opts() -> list:
    """:data:`PAPER_LITERAL` as a ``cfg.merge_from_list`` list of strings."""
    return [str(v) for kv in PAPER_LITERAL.items() for v in kv]


def add_ecenet_config(cfg):
    """Add ``MODEL.ECENET`` (ECENet, "Boosting Semantic Segmentation from the Perspective of Explicit
    Class Embeddings", Sec. 3) to ``cfg`` in place. Select the model with
    ``MODEL.META_ARCHITECTURE: ECENet``; classes: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``. Each
    released/paper-literal switch names both values (released first, the default)."""
    cfg.MODEL.ECENET = CN()
    e = cfg.MODEL.ECENET
    # Backbone features F1..F4, finest first (strides 4, 8, 16, 32 with MODEL.RESNETS.OUTPUT_STRIDE
    # 32). The last one gives the first masks (Eq. 4); Semantics Attention & Updater runs on the
    # others from coarse to fine. Pixel-shuffle factors are stride_i / stride_1.
    e.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # C, the unified channel count of X1..X4, class embeddings and attention (256 in the paper).
    e.EMBED_DIM = 256
    # Norm of the FR, GhostModule and fusion convs ("BN", "SyncBN", "GN", ...).
    e.NORM = "BN"
    # Bias of the 1x1 convs F_i -> X_i (C_i -> C): released False, paper-literal True.
    e.UNIFY_BIAS = False

    # Feature Reconstruction (Sec. 3.2, Eqs. 1-2) on every stage. ENABLED False = the "no FR" row of
    # Table 4 (then LOSS.DIV_WEIGHT must be 0). Released / paper-literal:
    # - CHEAP_RELU: cheap op DW3x3 + bias + BN, no ReLU (False) / GhostNet's DW3x3 + BN + ReLU (True);
    # - SE block of the diverse branch: reduction SE_RATIO 2 / 4, SE_BIAS False / True,
    #   gate SE_GATE "none" (the MLP output multiplies unbounded) / "sigmoid" (or "hard_sigmoid");
    # - OUT_NORM: output 1x1 conv then a LayerNorm over channels "LN" / 1x1 conv + NORM "BN";
    # - DIVERSE_FIRST: the output conv sees concat(Y'', Y') (True) / concat(Y', Y'') (False).
    e.FR = CN()
    e.FR.ENABLED = True
    e.FR.CHEAP_RELU = False
    e.FR.SE_RATIO = 2
    e.FR.SE_BIAS = False
    e.FR.SE_GATE = "none"
    e.FR.OUT_NORM = "LN"
    e.FR.DIVERSE_FIRST = True

    # Explicit Class Extraction (Sec. 3.3, Eq. 5). LEVELS: released "psp_odd", pooling sizes
    # (1, 2, 3, 6, L) with L = floor(ALPHA * sqrt(N)) made odd (ADE20K 13: 219 bins per class) /
    # paper-literal "all", 1..S with S = floor(ALPHA * sqrt(N)) (ADE20K 12: 650 bins).
    # ALPHA = 1 (ADE20K), sqrt(2) (Pascal Context), 3 (Cityscapes). POOL_SIZE > 0 sets L (S)
    # directly. SHARED True: one ECE (one Linear D -> C) for the initial masks and every SAU stage
    # instead of a separate one per use (both readings: separate).
    # First mask head (Eq. 4) phi_2(phi_1(X4)): phi_1's groups MASK_GROUPS (released 4 = the
    # released number of heads, paper-literal 1) and the convs' biases MASK_BIAS (False / True).
    e.ECE = CN()
    e.ECE.LEVELS = "psp_odd"
    e.ECE.ALPHA = 1.0
    e.ECE.POOL_SIZE = 0
    e.ECE.SHARED = False
    e.ECE.MASK_GROUPS = 4
    e.ECE.MASK_BIAS = False

    # Semantics Attention (Sec. 3.4, Eqs. 6-7): heads (released 4, paper-literal 8), and Mix-FFN
    # hidden size = MLP_RATIO * C.
    e.NUM_HEADS = 4
    e.MLP_RATIO = 4
    # Released / paper-literal:
    # - QUERY: depthwise 3x3 + pointwise conv "dwconv" / Linear "linear"; QUERY_ACT after each of
    #   the two query convs: "none" (the authors' mmcv code, default) or "relu" (the MindSpore port);
    # - KV: one bias-free Linear C -> 2C for keys and values "shared" / two Linears with bias "separate";
    # - SOFTMAX: softmax(-S) ("negated", the code's softmax(max S - S)) / softmax(S) ("standard").
    e.ATTENTION = CN()
    e.ATTENTION.QUERY = "dwconv"
    e.ATTENTION.QUERY_ACT = "none"
    e.ATTENTION.KV = "shared"
    e.ATTENTION.SOFTMAX = "negated"
    # Class updater (Eqs. 9-10): "gated" or "plus" (G + G_hat, Table 6). UPDATER_TAIL: K-Net's
    # FC -> LN -> ReLU after the update (released True, paper-literal False).
    e.UPDATER = "gated"
    e.UPDATER_TAIL = True
    # Class head on the embeddings and how it gates the summed masks T: released "diagonal",
    # Linear(C -> N), softmax, P[k, k] * sigmoid(T_k) / paper-literal "no_object",
    # Linear(C -> N + 1) with no-object, einsum over every embedding.
    e.CLASS_HEAD = "diagonal"
    # Aggregation (Sec. 3.5): UPSAMPLE released "cascade" of x2 steps Ghost(C -> 4C) +
    # PixelShuffle(2), stride-4 level untouched / paper-literal "single" Ghost(C -> C r^2) +
    # PixelShuffle(r). FUSION of the concatenated 4C channels: released "conv3x3",
    # 3x3 conv (4C -> C) + NORM + ReLU, Dropout2d(FUSION_DROPOUT), 1x1 (C -> N) / paper-literal
    # "conv1x1", one 1x1 (4C -> N). UPSAMPLE_SCALES, the factor r of level l (1-based): released
    # "level", the code's fixed 2^(l - 1) (2, 4, 8), then every map bilinearly resized to level 1's
    # size / paper-literal "stride", stride_l / stride_1. They differ only with a dilated backbone
    # (R101-D8, strides 4, 8, 8, 8: "level" upsamples levels 3, 4 to strides 2, 1 and resizes back).
    e.UPSAMPLE = "cascade"
    e.UPSAMPLE_SCALES = "level"
    e.FUSION = "conv3x3"
    e.FUSION_DROPOUT = 0.1

    # Loss (Eqs. 11-12), class embedding n <-> ground-truth mask of class n (no matching).
    # Released (its loss code is not public; the config gives the terms and weights): pixel
    # cross-entropy x1 on the prediction (PIXEL_LOSSES), mask x5 and dice x2 on M4 + S3 + S2
    # (MASK_SUM "without_finest": S1 excluded), no class-embedding CE (CLASS_WEIGHT 0), L_div x0.2,
    # no deep supervision. Paper-literal (SegViT-style): class CE x1 over N + 1 classes
    # (needs CLASS_HEAD "no_object"), focal x20 and dice x1 on the summed masks ("all") and, with
    # DEEP_SUPERVISION, on every cumulative sum, plus the same pixel CE and L_div.
    e.LOSS = CN()
    e.LOSS.CLASS_WEIGHT = 0.0  # cross-entropy over N + 1 classes (0: not computed)
    e.LOSS.NO_OBJECT_WEIGHT = 0.1  # class weight of "no object" (classes absent from the image)
    # Per-pixel mask loss on the summed mask logits: "bce" (sigmoid binary cross-entropy, the
    # default: 5 is Mask2Former's BCE weight; a focal loss at 5 would be a quarter of SegViT's 20)
    # or "focal" (DETR's sigmoid focal loss with FOCAL_ALPHA, FOCAL_GAMMA); weight MASK_WEIGHT.
    e.LOSS.MASK_LOSS = "bce"
    e.LOSS.MASK_WEIGHT = 5.0
    e.LOSS.FOCAL_ALPHA = 0.25
    e.LOSS.FOCAL_GAMMA = 2.0
    e.LOSS.DICE_WEIGHT = 2.0  # lambda_dice
    e.LOSS.MASK_SUM = "without_finest"
    # lambda_div (0.2, Table 5) on the diversity loss (Eq. 3) summed over the FR stages; 0 = the
    # "FR without L_div" row of Table 4.
    e.LOSS.DIV_WEIGHT = 0.2
    # Class and mask losses also on every earlier class embedding / cumulative mask sum.
    e.LOSS.DEEP_SUPERVISION = False
    # Pixel losses (PIXEL_LOSS_REGISTRY; default cross-entropy, weight 1, ignore label honoured)
    # on the fused prediction: the released head's first loss, and the only one that reaches the
    # aggregation's final 1x1 conv.
    e.LOSS.PIXEL_LOSSES = ["CrossEntropyLoss"]
    e.LOSS.PIXEL_LOSS_WEIGHTS = [1.0]
    return cfg
