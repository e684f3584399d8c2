"""
segcls's configuration: one ``add_segcls_config(cfg)`` that adds every segcls key, with its
default and meaning, to a detectron2 ``CfgNode``. Keys detectron2 already defines keep their
detectron2 meaning; their segcls defaults are set here and documented.

Method-specific keys (CAR, CAC, ...) live next to the method, in a ``add_<method>_config(cfg)``
of its module; the head nodes are declared by ``segcls.modeling.heads.config.add_head_config``
from every head's own declaration (in the head's file). All are called from here, so the whole
tree is always known to the config parser (an unknown key in a yaml or on the command line is an
error naming the key). ``segcls.engine.load_config`` also rejects keys that nothing reads (see
``segcls.modeling.heads.config.validate_head_config``).
"""
import torch
from detectron2.config import CfgNode as CN

from .modeling.backbone.timm_backbone import add_timm_backbone_config
from .modeling.classifiers.context_aware import add_cac_config
from .modeling.csfrn.config import add_csfrn_config
from .modeling.ecenet.config import add_ecenet_config
from .modeling.heads.config import add_head_config  # importing segcls.modeling.heads registers the heads' keys
from .modeling.losses.config import add_pixel_loss_config
from .modeling.precision import add_fast_path_config
from .modeling.regularizers.car import add_car_config

_MODULE_CONFIGS = (
    add_head_config,
    add_pixel_loss_config,
    add_timm_backbone_config,
    add_ecenet_config,
    add_cac_config,
    add_car_config,
    add_csfrn_config,
    add_fast_path_config,
)


def add_segcls_config(cfg):
    """Add segcls's keys to ``cfg`` (a detectron2 ``CfgNode``, e.g. from ``get_cfg()``) in place."""
    # ---------------------------------------------------------------------------------------------
    # Model: backbone -> decode head -> pixel feature -> classifier -> logits (PerPixelSegmentor)
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.META_ARCHITECTURE = "PerPixelSegmentor"
    # "cuda" when a GPU is visible, else "cpu" (detectron2's default is always "cuda").
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    # Images are normalised inside the model: (image - PIXEL_MEAN) / PIXEL_STD, in INPUT.FORMAT order.
    # Default: ImageNet RGB statistics, as torchvision/timm/mmsegmentation backbones expect.
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    # MODEL.SEM_SEG_HEAD.NUM_CLASSES: number of classes K. IGNORE_VALUE: label value that takes no
    # part in losses or metrics (255 for every dataset segcls registers).
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 150
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255

    # Backbone. "build_resnet_dilated_backbone": detectron2's ResNet (depth 18/34 basic blocks,
    # 50/101/152 bottlenecks) with dilation so that res4/res5 keep MODEL.RESNETS.OUTPUT_STRIDE.
    cfg.MODEL.BACKBONE.NAME = "build_resnet_dilated_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.NORM = "BN"  # "BN", "SyncBN", "FrozenBN", "GN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision/pytorch-style bottleneck (stride in 3x3)
    # Output stride of the deepest feature: 8 (res4 dilation 2, res5 dilation 4), 16 (res5
    # dilation 2) or 32 (no dilation). DeepLab, PSPNet and the CAR/CAC papers use 8.
    cfg.MODEL.RESNETS.OUTPUT_STRIDE = 8
    # True: the first block of a dilated stage uses half its dilation (res4 1-2-2..., res5 2-4-4),
    # as torchvision's replace_stride_with_dilation and mmsegmentation's contract_dilation=True,
    # whose checkpoints then compute the same features. False: every block of the stage uses its
    # dilation (segcls's behaviour before this key). Not applied to a res5 with RES5_MULTI_GRID.
    cfg.MODEL.RESNETS.CONTRACT_DILATION = True
    # "basic": one 7x7 conv (torchvision/detectron2). "deeplab": three 3x3 convs of
    # STEM_OUT_CHANNELS/2, /2 and STEM_OUT_CHANNELS channels, the "ResNetV1c" stem of DeepLab,
    # PSPNet and mmsegmentation (mmseg's stem_channels=64, i.e. 32-32-64: STEM_OUT_CHANNELS 64).
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"
    # Dilation multipliers of the res5 blocks, one per block (DeepLabV3's "multi-grid", e.g.
    # [1, 2, 4] at output stride 8 = dilations 4, 8, 16); [] = off. Relative to the stage's
    # dilation; mmsegmentation's multi_grid is absolute: its g is g / rate here (its (1, 2, 4) at
    # dilation 4 is [0.25, 0.5, 1]; products must be integers).
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = []
    # True: ResNet-D's downsampling shortcut, average pool (kernel = stride) before a stride-1 1x1
    # conv (mmsegmentation's avg_down; with STEM_TYPE "deeplab" and STEM_OUT_CHANNELS 64 this is
    # open-mmlab's ResNetV1d). False: the 1x1 conv strides (ResNetV1c, torchvision, detectron2).
    cfg.MODEL.RESNETS.AVG_DOWN = False

    # Decode head and auxiliary head (MODEL.DECODE_HEAD, MODEL.AUX_HEAD; DECODE_HEAD_REGISTRY):
    # one schema for both nodes, segcls.modeling.heads.config (common keys, auxiliary defaults),
    # each head's own keys in the head's own file; added below with the module keys.

    # Classifier (CLASSIFIER_REGISTRY): "LinearClassifier" = dropout + 1x1 conv with bias.
    cfg.MODEL.CLASSIFIER = CN()
    cfg.MODEL.CLASSIFIER.NAME = "LinearClassifier"
    # Dropout on the pixel feature right before the classifier (0.1 in torchvision's and
    # mmsegmentation's heads). It belongs to the classifier so that a plug-in classifier (CAC)
    # decides where it applies.
    cfg.MODEL.CLASSIFIER.DROPOUT = 0.1

    # Pixel losses (PIXEL_LOSS_REGISTRY). CrossEntropyLoss: mean over non-ignored pixels,
    # optional per-class weights (empty = unweighted; else K values).
    cfg.MODEL.LOSS = CN()
    cfg.MODEL.LOSS.CLASS_WEIGHTS = []

    # Training-only feature regularizers (REGULARIZER_REGISTRY), e.g. CAR. Empty = none.
    cfg.MODEL.REGULARIZERS = CN()
    cfg.MODEL.REGULARIZERS.NAMES = []

    # MODEL.WEIGHTS (detectron2's key: a checkpoint to initialise from) is loaded strictly
    # (segcls.engine.checkpoint): a file that matches no tensor, holds tensors the model lacks or
    # of another shape, or leaves part of a module it provides (e.g. the backbone) unset is an
    # error naming the file, and evaluation needs every tensor. True = load what matches
    # (detectron2's behaviour: mismatches only logged).
    cfg.MODEL.WEIGHTS_ALLOW_PARTIAL = False

    # Logits -> label-size resizing for losses and image-size resizing at inference.
    cfg.MODEL.ALIGN_CORNERS = False

    # ---------------------------------------------------------------------------------------------
    # Data
    # ---------------------------------------------------------------------------------------------
    # Mapper (MAPPER_REGISTRY), used for training and testing.
    cfg.INPUT.DATASET_MAPPER_NAME = "SemSegDatasetMapper"
    # Training rescale, mmsegmentation-style: the image is resized, keeping its aspect ratio, to fit
    # BASE_SIZE (long side, short side) scaled by a ratio drawn uniformly from RATIO_RANGE.
    # BASE_SIZE = [] keeps the image size (ratio applied to the original size).
    cfg.INPUT.BASE_SIZE = []
    cfg.INPUT.RATIO_RANGE = [0.5, 2.0]
    # Test-time resize to BASE_SIZE (keep ratio, ratio 1). False = evaluate at the original size.
    cfg.INPUT.TEST_RESIZE = False
    # Random crop (absolute pixels, [height, width]) with DeepLab's category-area constraint, as
    # mmsegmentation's RandomCrop: up to 10 checked draws for a crop whose most frequent category
    # covers less than SINGLE_CATEGORY_MAX_AREA of its labelled pixels, then an 11th unchecked
    # one (1.0 = unconstrained).
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [512, 512]
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75
    # Horizontal flip with probability 0.5 ("horizontal") or none ("none").
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    # Photometric distortion (brightness, contrast, saturation, hue) as in mmsegmentation/SSD.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Images and labels are padded (normalised images with 0, labels with IGNORE_VALUE, as
    # mmsegmentation) to a multiple of this inside the model (a true divisor of the batch's size);
    # during training they are also padded to the crop size. -1 = use the backbone's size_divisibility.
    cfg.INPUT.SIZE_DIVISIBILITY = -1

    # Datasets declared in the config, registered in every process (segcls.data.datasets.custom):
    # a list of {NAME, IMAGE_DIR, LABEL_DIR, CLASSES[, IGNORE_LABEL=255, IMAGE_EXT=".jpg",
    # LABEL_EXT=".png", EVALUATOR_TYPE="sem_seg"]}. [] = none.
    cfg.DATASETS.CUSTOM = []

    # Resumable, reproducible training sampler (see segcls.data.build.ResumableTrainingSampler).
    cfg.DATALOADER.SAMPLER_TRAIN = "ResumableTrainingSampler"
    cfg.DATALOADER.NUM_WORKERS = 2
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False

    # ---------------------------------------------------------------------------------------------
    # Solver
    # ---------------------------------------------------------------------------------------------
    cfg.SOLVER.OPTIMIZER = "SGD"  # "SGD" or "ADAMW"
    cfg.SOLVER.BETAS = [0.9, 0.999]  # AdamW only
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    cfg.SOLVER.WARMUP_ITERS = 0
    # Learning rate multiplier of the backbone's parameters (e.g. 0.1 for a pretrained backbone).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # No weight decay on normalisation layers (WEIGHT_DECAY_NORM) and biases (WEIGHT_DECAY_BIAS).
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    # Weight decay of position tables (parameters named *pos_embed*, *relative_position_bias_table*,
    # *cls_token*), as the Swin/ViT recipes.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Layer-wise LR decay of the backbone: a parameter of stage s (0 = stem, 1..S = res2..res5,
    # see segcls.modeling.backbone.utils) gets lr * LAYER_DECAY ** (S + 1 - s); heads keep lr.
    # 1.0 = off (ConvNeXt's UperNet recipe uses 0.9).
    cfg.SOLVER.LAYER_DECAY = 1.0
    cfg.SOLVER.CHECKPOINT_PERIOD = 5000

    # ---------------------------------------------------------------------------------------------
    # Evaluation, reproducibility
    # ---------------------------------------------------------------------------------------------
    # Number of "image | ground truth | prediction" PNGs written per test set (0 = none).
    cfg.TEST.NUM_OVERLAYS = 0
    # detectron2's per-prediction JSON (sem_seg_predictions.json: every prediction's per-class RLE,
    # gathered to the main process): slow and memory-hungry, so off by default.
    cfg.TEST.PREDICTIONS_JSON = False
    # Confusion outputs of every sem_seg evaluation (OUTPUT_DIR/eval/<dataset>/): confusion_matrix.npy
    # (rows ground truth, columns prediction), confusion_matrix.png (rows normalised, class names),
    # confused_pairs.json and the log: the CONFUSED_PAIRS most confused (ground truth, prediction)
    # pairs. 0 = none of these outputs.
    cfg.TEST.CONFUSED_PAIRS = 10
    # Inference mode of every meta-architecture (segcls.modeling.meta_arch.inference.InferenceOptions):
    # "whole" (the whole image at once, batched) or "slide"
    # (mmsegmentation's mode='slide': windows of CROP_SIZE [height, width] every STRIDE [height,
    # width] pixels, the last window of each row/column flush with the border; the logits of
    # overlapping windows are summed and divided by the per-pixel window count). An image smaller
    # than CROP_SIZE is one window. STRIDE must not exceed CROP_SIZE.
    cfg.TEST.MODE = "whole"
    cfg.TEST.CROP_SIZE = [512, 512]
    cfg.TEST.STRIDE = [341, 341]
    # Sliding windows predicted together in one batch (1 = one at a time, the least memory).
    # The result does not depend on it (up to floating-point summation order).
    cfg.TEST.SLIDE_BATCH = 1
    # Multi-scale + flip test-time augmentation (mmsegmentation's aug_test): the test image (as
    # the mapper gives it, i.e. after INPUT.TEST_RESIZE) is resized by each factor of SCALES and,
    # if FLIP, also flipped; each is predicted with TEST.MODE and the softmax probabilities,
    # resized back, are averaged (the output is then probabilities, not logits). detectron2's
    # TEST.AUG.MIN_SIZES / MAX_SIZE (detection TTA) are not used by segcls.
    cfg.TEST.AUG.ENABLED = False
    cfg.TEST.AUG.SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    cfg.TEST.AUG.FLIP = True
    # Datasets with evaluator_type "cityscapes_sem_seg": also run the official cityscapesscripts
    # evaluation (IoU, iIoU, category scores; results under "cityscapes_sem_seg").
    cfg.TEST.CITYSCAPES_OFFICIAL_EVAL = True
    cfg.SEGCLS = CN()
    # GPU: use PyTorch's deterministic algorithms (torch.use_deterministic_algorithms(True,
    # warn_only=True), cudnn.deterministic) for run-to-run identical results at some speed cost.
    # CPU training with a fixed SEED is bitwise repeatable without it.
    cfg.SEGCLS.DETERMINISTIC = False
    # ---------------------------------------------------------------------------------------------
    # EMA of the weights, pictures, Weights & Biases (segcls.engine.ema / .visualization / .wandb_writer)
    # ---------------------------------------------------------------------------------------------
    # Exponential moving average of the weights, updated after every step: ema = d * ema + (1 - d) * w
    # for every floating-point parameter and buffer (d2go's MODEL_EMA, timm's ModelEmaV2); it is
    # evaluated after the raw weights at every evaluation (OUTPUT_DIR/eval_ema/, scalars "ema/..."),
    # saved in every checkpoint under "model_ema" and restored by --resume.
    cfg.MODEL.EMA = CN()
    cfg.MODEL.EMA.ENABLED = False
    cfg.MODEL.EMA.DECAY = 0.999  # d2go's default; 0.9998-0.9999 (timm) for runs of 100k+ iterations
    # True: decay_t = min(DECAY, (1 + t) / (10 + t)) after t updates (TensorFlow's
    # ExponentialMovingAverage num_updates), so short runs are not dominated by the initial weights.
    cfg.MODEL.EMA.WARMUP = False
    # detectron2's VIS_PERIOD (default 0 = off): every VIS_PERIOD iterations, and at each evaluation,
    # "image | ground truth | prediction" panels with a legend of the classes present go to
    # TensorBoard (and W&B), for the first VIS_IMAGES images of DATASETS.TRAIN[0] / of each test set.
    cfg.SEGCLS.VIS_IMAGES = 3
    # Weights & Biases event writer (needs `pip install wandb`; not a dependency of segcls).
    # NAME "" = W&B's generated run name; MODE "" = wandb's default (or $WANDB_MODE), else
    # "online", "offline" or "disabled".
    cfg.WANDB = CN()
    cfg.WANDB.ENABLED = False
    cfg.WANDB.PROJECT = "segcls"
    cfg.WANDB.NAME = ""
    cfg.WANDB.MODE = ""
    # Keys of the modules and methods, defined next to their code.
    for add_module_config in _MODULE_CONFIGS:
        add_module_config(cfg)
    return cfg

