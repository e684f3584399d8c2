"""SemSegPredictor predicts exactly what evaluation predicts (same resize, same inference mode)."""
import numpy as np
import pytest
import torch
from detectron2.evaluation import DatasetEvaluator
from PIL import Image

from segcls.engine import SemSegPredictor, Trainer
from helpers import save_random_model, tiny_config

MODES = {
    "whole+test-resize": ["INPUT.TEST_RESIZE", "True", "INPUT.BASE_SIZE", "[48, 24]"],
    "slide": ["TEST.MODE", "slide", "TEST.CROP_SIZE", "[24, 24]", "TEST.STRIDE", "[16, 16]"],
    "tta": ["TEST.AUG.ENABLED", "True", "TEST.AUG.SCALES", "[0.75, 1.0]"],
}


class _Record(DatasetEvaluator):
    def reset(self):
        self.outputs = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            self.outputs[inp["file_name"]] = out["sem_seg"]

    def evaluate(self):
        return {}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_predictions_equal_the_evaluators(tmp_path, tiny_dataset, mode):
    cfg = tiny_config(tmp_path, test=[tiny_dataset], opts=MODES[mode])
    predictor = SemSegPredictor(cfg, weights=save_random_model(cfg, tmp_path))
    recorder = _Record()
    Trainer.test(cfg, predictor.model, evaluators=[recorder])
    assert len(recorder.outputs) == 4
    for file_name, expected in recorder.outputs.items():
        got = predictor(file_name)
        assert got.shape == expected.shape == (3, 32, 40)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        # an in-memory BGR array (a video frame) gives the same prediction
        bgr = np.asarray(Image.open(file_name).convert("RGB"))[..., ::-1]
        torch.testing.assert_close(predictor(bgr, image_format="BGR"), expected, rtol=0, atol=0)
    assert predictor.outputs_probabilities == (mode == "tta")
    probs = predictor.probabilities(got)
    torch.testing.assert_close(probs.sum(0), torch.ones(32, 40))


def test_bad_inputs_are_clear_errors(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path, test=[tiny_dataset])
    with pytest.raises(FileNotFoundError, match="missing.pth.*MODEL.WEIGHTS"):
        SemSegPredictor(cfg, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="no weights given"):
        SemSegPredictor(cfg)
    predictor = SemSegPredictor(cfg, weights=save_random_model(cfg, tmp_path))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match="cannot read image .*bad.jpg"):
        predictor(str(bad))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor(np.zeros((8, 8), dtype=np.uint8))
