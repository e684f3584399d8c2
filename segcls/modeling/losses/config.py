"""Config keys of the pixel losses (``MODEL.LOSS.*``) besides ``CLASS_WEIGHTS``."""


def add_pixel_loss_config(cfg):
    """
    Hyper-parameters of the losses in :mod:`segcls.modeling.losses`, selected by class name in
    ``MODEL.DECODE_HEAD.LOSSES`` / ``MODEL.AUX_HEAD.LOSSES``. ``MODEL.LOSS.CLASS_WEIGHTS`` (defined
    with the config's core keys) weights CrossEntropyLoss, both OHEM losses and FocalLoss.
    """
    loss = cfg.MODEL.LOSS
    # Normalisation of CrossEntropyLoss and the losses built on it (both OHEM losses, FocalLoss):
    # "valid" = sum over the valid pixels / their (class-weighted) number (PyTorch's mean);
    # "all" = sum / the number of all label pixels, ignored ones included (mmsegmentation's
    # CrossEntropyLoss with avg_non_ignore=False, its default): configs that follow an
    # mmsegmentation recipe set "all".
    loss.CE_NORMALIZATION = "valid"
    # OhemTopKCrossEntropyLoss (detectron2 DeepLab project's DeepLabCE): fraction of the valid
    # pixels, those with the largest cross-entropy, that the loss averages (1.0 = plain CE; 0.2
    # in detectron2's Panoptic-DeepLab configs).
    loss.TOP_K_PERCENT = 0.2
    # OhemCrossEntropyLoss (OCNet/OCR, CSFRN Table 6): keep pixels whose ground-truth-class
    # probability is below OHEM_THRESH, at least OHEM_MIN_KEPT per image (0.7 and 100000 as in
    # HRNet-OCR and mmsegmentation).
    loss.OHEM_THRESH = 0.7
    loss.OHEM_MIN_KEPT = 100000
    # Which pixels OhemCrossEntropyLoss keeps: "count" (those below OHEM_THRESH, or the
    # min(OHEM_MIN_KEPT * N, n_valid) hardest) or "threshold" (the released HRNet-OCR / mmseg
    # 1.2.2 rule p < max(thresh, p_sorted[min(OHEM_MIN_KEPT * N, n_valid - 1)])).
    loss.OHEM_SELECTION = "count"
    # What the kept pixels' loss sum is divided by: "kept" (their number, HRNet-OCR's released
    # code), "valid" (the non-ignored pixels: mmseg's OHEMPixelSampler with avg_non_ignore=True)
    # or "all" (every label pixel: mmseg's default avg_non_ignore=False).
    loss.OHEM_NORMALIZATION = "kept"
    # FocalLoss: focusing parameter gamma of FL = -(1 - p_t)^gamma log p_t (2 in the focal-loss paper).
    loss.FOCAL_GAMMA = 2.0
    # FocalLoss form: "softmax" (p_t = softmax probability of the true class; = kornia) or
    # "sigmoid" (one-vs-all per class, mmsegmentation's FocalLoss(use_sigmoid=True), with
    # alpha_t = FOCAL_ALPHA for the true class and 1 - FOCAL_ALPHA for the others; mmseg: 0.5).
    loss.FOCAL_VARIANT = "softmax"
    loss.FOCAL_ALPHA = 0.5
    # DiceLoss, DICE_VARIANT "per_class": 1 - (2 sum p g + SMOOTH) / (sum p^EXPONENT + sum g^EXPONENT
    # + SMOOTH) per image and class over the valid pixels (mmsegmentation 0.x's formula and
    # defaults); "mmseg": mmsegmentation 1.2.2's DiceLoss, classes pooled per image,
    # 1 - 2 sum p g / (sum p^2 + DICE_EPS + sum g^2 + DICE_EPS). DICE_ACTIVATION: "softmax" or
    # "sigmoid" (mmseg 1.2.2's default).
    loss.DICE_SMOOTH = 1.0
    loss.DICE_EXPONENT = 2.0
    loss.DICE_VARIANT = "per_class"
    loss.DICE_ACTIVATION = "softmax"
    loss.DICE_EPS = 1e-3
    # LovaszSoftmaxLoss: average over the classes "present" in the labels or over "all" classes;
    # PER_IMAGE computes it per image and averages (False pools the batch, the reference default).
    loss.LOVASZ_CLASSES = "present"
    loss.LOVASZ_PER_IMAGE = False
    return cfg
