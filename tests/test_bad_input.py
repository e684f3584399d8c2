"""Bad input fails early with a message naming the file or key and what was expected, and leaves
nothing half-written."""
import os

import numpy as np
import pytest
from PIL import Image

from segcls.data import LabelError, SemSegDatasetMapper
from segcls.data.datasets import DatasetNotFoundError, load_sem_seg
from segcls.data.datasets.ade20k import register_ade20k
from detectron2.data import DatasetCatalog
from segcls.engine import Trainer
from helpers import register_tiny_dataset, tiny_config


def _mapper(is_train=False, num_classes=3):
    return SemSegDatasetMapper(is_train=is_train, num_classes=num_classes, crop_size=[16, 16])


def _record(tmp_path, label_array, image_size=None):
    h, w = image_size or label_array.shape[:2]
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "img.jpg")
    Image.fromarray(label_array).save(tmp_path / "lbl.png")
    return {"file_name": str(tmp_path / "img.jpg"), "sem_seg_file_name": str(tmp_path / "lbl.png")}


def test_missing_dataset_root_names_env_var_and_layout(tmp_path, monkeypatch):
    register_ade20k(str(tmp_path / "nowhere"))
    try:
        with pytest.raises(DatasetNotFoundError) as e:
            DatasetCatalog.get("ade20k_sem_seg_train")
        msg = str(e.value)
        assert "ADEChallengeData2016/images/training" in msg and "DETECTRON2_DATASETS" in msg
        assert "annotations_detectron2" in msg and "prepare_ade20k_sem_seg.py" in msg
    finally:
        from segcls.data.datasets import get_datasets_root

        register_ade20k(get_datasets_root())


def test_image_without_label_is_named(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "im" / "a.jpg")
    with pytest.raises(DatasetNotFoundError, match=r"a\.jpg.*expected.*lb/a\.png"):
        load_sem_seg(str(tmp_path / "im"), str(tmp_path / "lb"))


def test_label_value_out_of_range_is_named(tmp_path):
    label = np.zeros((8, 8), np.uint8)
    label[0, 0] = 7
    label[1, 1] = 255  # ignore is fine
    with pytest.raises(LabelError, match=r"lbl\.png.*\[7\].*0\.\.2.*255"):
        _mapper()(_record(tmp_path, label))


def test_palette_label_is_read_as_indices(tmp_path):
    label = np.array([[0, 1], [2, 255]], np.uint8)
    im = Image.fromarray(label, mode="P")
    im.putpalette([255, 255, 255, 10, 200, 30, 90, 90, 250] + [0] * (256 * 3 - 9))
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "img.jpg")
    im.save(tmp_path / "lbl.png")
    out = _mapper()({"file_name": str(tmp_path / "img.jpg"), "sem_seg_file_name": str(tmp_path / "lbl.png")})
    assert out["sem_seg"].tolist() == [[0, 1], [2, 255]]


def test_colour_label_is_rejected(tmp_path):
    with pytest.raises(LabelError, match=r"lbl\.png.*single-channel.*RGB"):
        _mapper()(_record(tmp_path, np.zeros((8, 8, 3), np.uint8)))


def test_image_label_size_mismatch_is_named(tmp_path):
    with pytest.raises(LabelError, match=r"lbl\.png.*8x6.*10x6"):
        _mapper()(_record(tmp_path, np.zeros((6, 8), np.uint8), image_size=(6, 10)))


def test_training_on_bad_labels_fails_before_writing_checkpoints(tmp_path):
    name = register_tiny_dataset("segcls_test_bad", str(tmp_path / "data"), num_classes=3)
    label_path = DatasetCatalog.get(name)[0]["sem_seg_file_name"]
    arr = np.array(Image.open(label_path))
    arr[0, 0] = 9
    Image.fromarray(arr).save(label_path)
    cfg = tiny_config(tmp_path / "out", train=[name], opts=["SOLVER.IMS_PER_BATCH", "4"])
    with pytest.raises(LabelError, match=os.path.basename(label_path)):
        trainer = Trainer(cfg)
        trainer.train()
    assert not any(f.endswith(".pth") for f in os.listdir(tmp_path / "out"))
