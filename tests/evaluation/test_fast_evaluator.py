"""
FastSemSegEvaluator: the same metrics (keys, order, numbers) as detectron2's SemSegEvaluator on the
same predictions, the confusion outputs (matrix, PNG, most confused pairs) and the opt-in JSON.
"""
import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import SemSegEvaluator
from helpers import register_dirs, write_tiny_dataset
from PIL import Image

from segcls.evaluation import FastSemSegEvaluator, confused_pairs, predicted_labels, write_confusion_outputs

K = 5


@pytest.fixture
def dataset(tmp_path):
    # class 4 never appears in the labels: its metrics are NaN in both evaluators
    image_dir, label_dir = write_tiny_dataset(str(tmp_path / "data"), num_images=5, num_classes=K - 1)
    return register_dirs("fast_eval_tiny", image_dir, label_dir, K)


def predictions(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs, outputs = [], []
    for record in DatasetCatalog.get(name):
        h, w = np.asarray(Image.open(record["sem_seg_file_name"])).shape
        inputs.append({"file_name": record["file_name"]})
        outputs.append({"sem_seg": torch.randn(K, h, w, generator=g)})
    return inputs, outputs


def run(evaluator, inputs, outputs):
    evaluator.reset()
    for i in range(0, len(inputs), 2):
        evaluator.process(inputs[i : i + 2], outputs[i : i + 2])
    return evaluator.evaluate()


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_metrics_identical_to_detectron2(dataset, tmp_path):
    inputs, outputs = predictions(dataset)
    ref = run(SemSegEvaluator(dataset, distributed=False), inputs, outputs)["sem_seg"]
    out = run(FastSemSegEvaluator(dataset, distributed=False, output_dir=str(tmp_path / "eval")), inputs, outputs)["sem_seg"]
    assert list(out) == list(ref)
    assert all(same(out[k], ref[k]) for k in ref), {k: (out[k], ref[k]) for k in ref if not same(out[k], ref[k])}
    assert math.isnan(out["IoU-c4"]) and not math.isnan(out["mIoU"])

    # confusion_matrix.npy: rows ground truth, columns prediction, ignore excluded (slow reference)
    expected = np.zeros((K, K), dtype=np.int64)
    for inp, o in zip(inputs, outputs):
        record = next(r for r in DatasetCatalog.get(dataset) if r["file_name"] == inp["file_name"])
        gt = np.asarray(Image.open(record["sem_seg_file_name"]))
        pred = o["sem_seg"].argmax(0).numpy()
        for y in range(gt.shape[0]):
            for x in range(gt.shape[1]):
                if gt[y, x] != 255:
                    expected[gt[y, x], pred[y, x]] += 1
    saved = np.load(tmp_path / "eval" / "confusion_matrix.npy")
    assert saved.dtype == np.int64 and np.array_equal(saved, expected)
    pairs = json.loads((tmp_path / "eval" / "confused_pairs.json").read_text())
    assert len(pairs) == 10 and pairs[0]["fraction"] >= pairs[-1]["fraction"] > 0
    assert Image.open(tmp_path / "eval" / "confusion_matrix.png").size[0] >= 400
    assert not (tmp_path / "eval" / "sem_seg_predictions.json").exists()  # opt-in only


def test_predictions_json_is_opt_in_and_matches_detectron2(dataset, tmp_path):
    inputs, outputs = predictions(dataset, seed=1)
    ref = SemSegEvaluator(dataset, distributed=False)
    run(ref, inputs, outputs)
    run(FastSemSegEvaluator(dataset, distributed=False, output_dir=str(tmp_path), predictions_json=True, top_pairs=0), inputs, outputs)
    assert json.loads((tmp_path / "sem_seg_predictions.json").read_text()) == ref._predictions
    assert not (tmp_path / "confusion_matrix.npy").exists()  # top_pairs=0: no confusion outputs


def test_confused_pairs_by_hand():
    names = ["a", "b", "c"]
    by_gt = np.array([[8, 2, 0], [5, 5, 0], [0, 1, 9]])  # rows ground truth
    matrix = np.zeros((4, 4), dtype=np.int64)
    matrix[:3, :3] = by_gt.T  # detectron2 layout: rows prediction
    matrix[0, 3] = 100  # predictions on ignore pixels do not count
    pairs = confused_pairs(matrix, names, top=5)
    assert [(p["gt"], p["pred"], p["pixels"]) for p in pairs] == [("b", "a", 5), ("a", "b", 2), ("c", "b", 1)]
    assert pairs[0]["fraction"] == 0.5 and pairs[1]["fraction"] == 0.2


def test_confusion_png_is_readable_for_150_classes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"class_{k}" for k in range(150)]
    write_confusion_outputs(rng.integers(0, 100, (151, 151)), names, str(tmp_path), top=3)
    width, height = Image.open(tmp_path / "confusion_matrix.png").size
    assert width >= 150 * 12 and height >= 150 * 12  # >= 12 pixels per class row/column


def test_bad_ground_truth_value_names_the_file(dataset):
    inputs, outputs = predictions(dataset)
    evaluator = FastSemSegEvaluator(dataset, distributed=False)
    evaluator._num_classes = 2  # labels 2 and 3 are then out of range
    evaluator.reset()
    with pytest.raises(ValueError, match=r"\.png: label values \[2, 3\] are neither classes in \[0, 2\)"):
        evaluator.process(inputs[:1], [{"sem_seg": outputs[0]["sem_seg"][:2]}])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_predicted_labels_equal_argmax_with_ties_and_nan(dtype):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (40, 24, 31), generator=g).to(dtype)  # many tied maxima
    scores[5, :4, :4] = float("nan")
    scores[9, 2:8, 2:8] = float("nan")  # two NaNs in some pixels: the first one wins
    scores[:, 10, :] = 1.0  # a whole row tied across every class
    labels = predicted_labels(scores)
    assert labels.dtype == torch.int64 and labels.shape == (24, 31)
    assert torch.equal(labels, scores.argmax(dim=0))
    assert labels[0, 0] == 5 and labels[3, 3] == 5 and labels[6, 6] == 9 and (labels[10] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_confusion_counts_on_cuda_equal_cpu():
    from segcls.evaluation.sem_seg import confusion_counts

    g = torch.Generator().manual_seed(0)
    pred, gt = torch.randint(0, 6, (30, 40), generator=g), torch.randint(0, 7, (30, 40), generator=g).numpy()
    assert torch.equal(confusion_counts(pred.cuda(), gt, 7).cpu(), confusion_counts(pred, gt, 7))
