"""
Prediction on images outside a dataset, exactly as evaluation predicts: the test mapper's resize
(``INPUT.TEST_RESIZE``/``BASE_SIZE``, :meth:`SemSegDatasetMapper.test_input`) and the model's
own normalisation and inference mode (``TEST.MODE`` whole / slide, ``TEST.AUG`` TTA; the
meta-architecture's ``preprocessor``/``inferencer``). detectron2's ``DefaultPredictor`` instead
resizes with ``ResizeShortestEdge(800, 1333)``, which these models were not trained for.
"""
import os

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..data import build_mapper
from .ema import load_ema_weights


def load_weights(model, path, ema=False):
    """Load ``path`` (``MODEL.WEIGHTS``) into ``model``: the raw weights, or with ``ema`` the EMA
    weights stored alongside them (:mod:`segcls.engine.ema`). A missing path is an error naming it."""
    if not path:
        raise ValueError("no weights given: set MODEL.WEIGHTS (or --weights) to a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file '{path}' (MODEL.WEIGHTS) does not exist")
    if ema:
        return load_ema_weights(model, path)
    DetectionCheckpointer(model).load(path)
    return model


class SemSegPredictor:
    """
    ``predictor(image)`` -> (K, H, W) float scores at the image's original size: logits, or the
    averaged softmax probabilities with test-time augmentation (:attr:`outputs_probabilities`).

    ``image``: a file path (read with EXIF orientation, as the mapper reads it) or a (H, W, 3)
    uint8 array in ``image_format`` (``"RGB"`` or ``"BGR"``, e.g. an OpenCV video frame).
    :meth:`inputs` and :meth:`predict` split the work for batching (a DataLoader maps, the
    model predicts a batch at once).
    """

    def __init__(self, cfg, weights=None, ema=False):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        load_weights(self.model, weights if weights is not None else cfg.MODEL.WEIGHTS, ema=ema)
        self.mapper = build_mapper(self.cfg, is_train=False)
        self.input_format = cfg.INPUT.FORMAT

    @property
    def outputs_probabilities(self) -> bool:
        """True when the scores are softmax probabilities (TTA), False for logits."""
        return bool(self.model.inferencer.options.tta_scales)

    def inputs(self, image, image_format="RGB") -> dict:
        """The model input of one image (path or array), as the test mapper builds it."""
        if isinstance(image, (str, os.PathLike)):
            return self.mapper({"file_name": os.fspath(image)})
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format != self.input_format:
            image = image[..., ::-1]
        return self.mapper.test_input(np.ascontiguousarray(image))

    @torch.no_grad()
    def predict(self, batched_inputs):
        """Model inputs (:meth:`inputs`) -> ``[{"sem_seg": (K, H, W)}]`` at the original sizes."""
        return self.model(batched_inputs)

    def __call__(self, image, image_format="RGB") -> torch.Tensor:
        return self.predict([self.inputs(image, image_format)])[0]["sem_seg"]

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """(K, H, W) scores -> per-class probabilities (softmax of logits; TTA outputs already are)."""
        return scores if self.outputs_probabilities else scores.softmax(dim=0)

