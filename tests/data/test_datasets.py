"""
Datasets, preparation scripts and the mapper, on tiny fixtures written in each dataset's exact
on-disk layout (see datasets/README.md).
"""
import glob
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import scipy.io
import torch
from cityscapesscripts.helpers.labels import id2label
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from PIL import Image

from segcls.config import add_segcls_config
from segcls.data.dataset_mapper import (
    ImageReadError,
    LabelError,
    SemSegDatasetMapper,
    photometric_distortion,
    random_crop_box,
    read_label,
    rescale_size,
)
from segcls.data.datasets import DatasetNotFoundError, get_datasets_root, register_all
from segcls.data.datasets.ade20k import convert_ade20k_label
from segcls.data.datasets.cityscapes import CITYSCAPES_CLASSES, cityscapes_train_ids
from segcls.data.datasets.coco_stuff import (
    COCO_STUFF_CLASSES,
    COCO_STUFF_IDS,
    convert_coco_stuff_10k_label,
    convert_coco_stuff_164k_label,
)
from segcls.data.datasets.pascal_context import (
    PASCAL_CONTEXT_59_CLASSES,
    PASCAL_CONTEXT_59_DETAIL_IDS,
    convert_pascal_context_59_label,
)
from segcls.data.datasets.prepare import PreparationError, label_writer
from segcls.utils.io import atomic_write
from helpers import REPO, load_script

H, W = 24, 32


# ----------------------------------------------------------------------------- fixture helpers
def write_image(path, h=H, w=W, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_label(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def raw_label(values, h=H, w=W, seed=0):
    """(h, w) uint8 label holding each of ``values`` (in vertical bands), shuffled by ``seed``."""
    bands = np.array_split(np.arange(w), len(values))
    label = np.zeros((h, w), np.uint8)
    for band, value in zip(bands, np.random.default_rng(seed).permutation(values)):
        label[:, band] = value
    return label


def run_script(name, root, *args):
    """Run datasets/<name>.py's main() in-process."""
    return load_script(f"datasets/{name}.py").main(["--root", str(root), *args])


def read_png(path):
    return np.asarray(Image.open(path))


@pytest.fixture
def registered(tmp_path):
    """Register every dataset under tmp_path; restore the default registrations afterwards."""
    register_all(str(tmp_path))
    yield tmp_path
    register_all(get_datasets_root())


def check_metadata(name, classes, evaluator_type="sem_seg"):
    meta = MetadataCatalog.get(name)
    assert list(meta.stuff_classes) == list(classes)
    assert len(meta.stuff_colors) == len(classes)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in meta.stuff_colors)
    assert meta.ignore_label == 255
    assert meta.evaluator_type == evaluator_type


# ----------------------------------------------------------------------------- ADE20K
def make_ade20k(root, n=2):
    base = os.path.join(root, "ADEChallengeData2016")
    for folder in ("training", "validation"):
        for i in range(n):
            write_image(os.path.join(base, "images", folder, f"ADE_{folder}_{i:08d}.jpg"), seed=i)
            write_label(os.path.join(base, "annotations", folder, f"ADE_{folder}_{i:08d}.png"), raw_label([0, 1, 150], seed=i))
    return base


def test_ade20k_label_conversion():
    assert convert_ade20k_label(np.array([[0, 1, 2, 150]], np.uint8)).tolist() == [[255, 0, 1, 149]]


def test_ade20k_prepare_registration_and_metadata(registered):
    base = make_ade20k(registered)
    written = run_script("prepare_ade20k_sem_seg", registered, "--allow-size-mismatch")
    assert written == {"training": 2, "validation": 2}
    out = read_png(os.path.join(base, "annotations_detectron2", "training", "ADE_training_00000000.png"))
    raw = read_png(os.path.join(base, "annotations", "training", "ADE_training_00000000.png"))
    np.testing.assert_array_equal(out, convert_ade20k_label(raw))
    # Idempotent: nothing rewritten on a second run.
    assert run_script("prepare_ade20k_sem_seg", registered, "--allow-size-mismatch") == {"training": 0, "validation": 0}
    records = DatasetCatalog.get("ade20k_sem_seg_val")
    assert [os.path.basename(r["sem_seg_file_name"]) for r in records] == [
        "ADE_validation_00000000.png",
        "ADE_validation_00000001.png",
    ]
    assert all(os.path.isfile(r["file_name"]) and "annotations_detectron2" in r["sem_seg_file_name"] for r in records)
    check_metadata("ade20k_sem_seg_train", ADE20K_SEM_SEG_CATEGORIES)
    assert len(ADE20K_SEM_SEG_CATEGORIES) == 150


def test_prepare_checks_split_sizes_before_writing(tmp_path):
    base = make_ade20k(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_script("prepare_ade20k_sem_seg", tmp_path)
    message = str(e.value)
    assert "split 'training' has 2 files" in message and "20210" in message
    assert "split 'validation' has 2 files" in message and "2000" in message
    assert not os.path.exists(os.path.join(base, "annotations_detectron2"))


def test_prepare_missing_source_folder_is_named(tmp_path):
    with pytest.raises(SystemExit, match="ADEChallengeData2016/annotations/training' does not exist"):
        run_script("prepare_ade20k_sem_seg", tmp_path)


def test_prepare_interrupted_run_leaves_no_partial_file_and_resumes(tmp_path):
    base = make_ade20k(tmp_path, n=3)
    bad = os.path.join(base, "annotations", "training", "ADE_training_00000001.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(PreparationError, match="ADE_training_00000001.png"):
        run_script("prepare_ade20k_sem_seg", tmp_path, "--allow-size-mismatch")
    out_dir = os.path.join(base, "annotations_detectron2", "training")
    assert sorted(os.listdir(out_dir)) == ["ADE_training_00000000.png"]  # no temp or partial file
    write_label(bad, raw_label([0, 3]))
    assert run_script("prepare_ade20k_sem_seg", tmp_path, "--allow-size-mismatch") == {"training": 2, "validation": 3}


def test_preparation_rejects_colour_label(tmp_path):
    base = make_ade20k(tmp_path, n=1)
    rgb = os.path.join(base, "annotations", "training", "ADE_training_00000000.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(rgb)
    with pytest.raises(PreparationError, match="colour image"):
        run_script("prepare_ade20k_sem_seg", tmp_path, "--allow-size-mismatch")


# ----------------------------------------------------------------------------- Cityscapes
CITY_STEMS = {"train": ["aachen_000000_000019", "bochum_000000_000313"], "val": ["frankfurt_000000_000294"]}


def make_cityscapes(root):
    """leftImg8bit + gtFine labelIds/instanceIds (road 7, car 26 with instances, unlabeled 0)."""
    base = os.path.join(root, "cityscapes")
    for split, stems in CITY_STEMS.items():
        for i, stem in enumerate(stems):
            city = stem.split("_")[0]
            write_image(os.path.join(base, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"), seed=i)
            ids = raw_label([0, 7, 26, 8], seed=i)
            write_label(os.path.join(base, "gtFine", split, city, f"{stem}_gtFine_labelIds.png"), ids)
            instances = np.where(ids == 26, 26000 + i, ids).astype(np.uint16)
            Image.fromarray(instances).save(os.path.join(base, "gtFine", split, city, f"{stem}_gtFine_instanceIds.png"))
    return base


def test_cityscapes_train_ids_follow_cityscapesscripts():
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    expected = np.vectorize(lambda i: id2label[i].trainId if 0 <= id2label[i].trainId < 255 else 255)(ids)
    np.testing.assert_array_equal(cityscapes_train_ids(ids), expected)
    assert cityscapes_train_ids(np.array([[7, 26, 33, 0]], np.uint8)).tolist() == [[0, 13, 18, 255]]
    with pytest.raises(ValueError, match=r"unexpected label values \[40\]"):
        cityscapes_train_ids(np.array([[7, 40]], np.uint8))


def test_cityscapes_prepare_registration_and_metadata(registered):
    base = make_cityscapes(registered)
    assert run_script("prepare_cityscapes_sem_seg", registered, "--allow-size-mismatch") == {"train": 2, "val": 1}
    records = DatasetCatalog.get("cityscapes_fine_sem_seg_train")
    assert len(records) == 2
    for r in records:
        assert r["file_name"].endswith("_leftImg8bit.png") and r["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
        raw = read_png(r["sem_seg_file_name"].replace("labelTrainIds", "labelIds"))
        np.testing.assert_array_equal(read_png(r["sem_seg_file_name"]), cityscapes_train_ids(raw))
    check_metadata("cityscapes_fine_sem_seg_val", CITYSCAPES_CLASSES, "cityscapes_sem_seg")
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car"
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").gt_dir == os.path.join(base, "gtFine", "val")


def test_cityscapes_evaluators_agree(registered):
    """SemSegEvaluator and the official cityscapesscripts evaluation, through EVALUATOR_REGISTRY."""
    from detectron2.config import get_cfg

    from segcls.evaluation import build_evaluator

    make_cityscapes(registered)
    run_script("prepare_cityscapes_sem_seg", registered, "--allow-size-mismatch")
    cfg = add_segcls_config(get_cfg())
    evaluator = build_evaluator(cfg, "cityscapes_fine_sem_seg_val", str(registered / "eval"))
    evaluator.reset()
    for record in DatasetCatalog.get("cityscapes_fine_sem_seg_val"):
        gt = read_png(record["sem_seg_file_name"]).astype(np.int64)
        pred = np.where(gt == 13, 0, gt)  # every car pixel predicted as road
        scores = torch.nn.functional.one_hot(torch.from_numpy(np.where(gt == 255, 0, pred)), 19).permute(2, 0, 1)
        evaluator.process([record], [{"sem_seg": scores.float()}])
    results = evaluator.evaluate()
    ours, official = results["sem_seg"], results["cityscapes_sem_seg"]
    assert ours["IoU-car"] == 0.0 and 0 < ours["IoU-road"] < 100 and ours["IoU-sidewalk"] == 100.0
    assert official["IoU"] == pytest.approx(ours["mIoU"])


# ----------------------------------------------------------------------------- Pascal Context 59
# mmsegmentation's PascalContextDataset59.CLASSES, written down independently of the package.
MMSEG_PASCAL_CONTEXT_59 = (
    "aeroplane bag bed bedclothes bench bicycle bird boat book bottle building bus cabinet car cat ceiling chair "
    "cloth computer cow cup curtain dog door fence floor flower food grass ground horse keyboard light motorbike "
    "mountain mouse person plate platform pottedplant road rock sheep shelves sidewalk sign sky snow sofa table "
    "track train tree truck tvmonitor wall water window wood"
).split()


def test_pascal_context_class_order_is_mmsegmentation():
    assert PASCAL_CONTEXT_59_CLASSES == MMSEG_PASCAL_CONTEXT_59
    assert len(PASCAL_CONTEXT_59_CLASSES) == 59
    # The order is that of the Detail API category IDs (what mmsegmentation's converter sorts by).
    assert PASCAL_CONTEXT_59_DETAIL_IDS == sorted(set(PASCAL_CONTEXT_59_DETAIL_IDS))
    pairs = dict(zip(PASCAL_CONTEXT_59_CLASSES, PASCAL_CONTEXT_59_DETAIL_IDS))
    assert (pairs["aeroplane"], pairs["person"], pairs["table"], pairs["wood"]) == (2, 284, 397, 458)


def test_pascal_context_label_conversion():
    label = np.array([[0, 1, 2, 59]], np.uint8)
    assert convert_pascal_context_59_label(label).tolist() == [[255, 0, 1, 58]]
    with pytest.raises(ValueError, match=r"unexpected label values \[60\]"):
        convert_pascal_context_59_label(np.array([[1, 60]], np.uint8))


def make_pascal_context_mmseg(root):
    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    splits = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    for split, stems in splits.items():
        os.makedirs(os.path.join(voc, "ImageSets", "SegmentationContext"), exist_ok=True)
        with open(os.path.join(voc, "ImageSets", "SegmentationContext", f"{split}.txt"), "w") as f:
            f.write("\n".join(stems) + "\n")
        for i, stem in enumerate(stems):
            write_image(os.path.join(voc, "JPEGImages", f"{stem}.jpg"), seed=i)
            write_label(os.path.join(voc, "SegmentationClassContext", f"{stem}.png"), raw_label([0, 1, 59], seed=i))
    write_image(os.path.join(voc, "JPEGImages", "2008_000099.jpg"))  # in no split list: not registered
    return voc


def test_pascal_context_mmseg_layout(registered):
    voc = make_pascal_context_mmseg(registered)
    register_all(str(registered))  # the layout is chosen at registration: re-register now that it exists
    assert run_script("prepare_pascal_context_59_sem_seg", registered, "--allow-size-mismatch") == {"train": 2, "val": 1}
    records = DatasetCatalog.get("pascal_context_59_sem_seg_train")
    assert [r["image_id"] for r in records] == ["2008_000002", "2008_000003"]
    for r in records:
        assert r["file_name"] == os.path.join(voc, "JPEGImages", r["image_id"] + ".jpg")
        raw = read_png(os.path.join(voc, "SegmentationClassContext", r["image_id"] + ".png"))
        np.testing.assert_array_equal(read_png(r["sem_seg_file_name"]), convert_pascal_context_59_label(raw))
    check_metadata("pascal_context_59_sem_seg_val", MMSEG_PASCAL_CONTEXT_59)


def test_pascal_context_d2_layout(registered):
    d2 = os.path.join(registered, "pascal_ctx_d2")
    for folder in ("training", "validation"):
        write_image(os.path.join(d2, "images", folder, "2008_000002.jpg"))
        write_label(os.path.join(d2, "annotations_ctx59", folder, "2008_000002.png"), raw_label([0, 58, 255]))
    register_all(str(registered))
    records = DatasetCatalog.get("pascal_context_59_sem_seg_val")
    assert records == [
        {
            "file_name": os.path.join(d2, "images", "validation", "2008_000002.jpg"),
            "sem_seg_file_name": os.path.join(d2, "annotations_ctx59", "validation", "2008_000002.png"),
            "image_id": "2008_000002",
        }
    ]
    check_metadata("pascal_context_59_sem_seg_train", MMSEG_PASCAL_CONTEXT_59)


def test_pascal_context_missing_split_file_is_named(registered):
    voc = make_pascal_context_mmseg(registered)
    register_all(str(registered))
    run_script("prepare_pascal_context_59_sem_seg", registered, "--allow-size-mismatch")
    os.remove(os.path.join(voc, "ImageSets", "SegmentationContext", "val.txt"))
    with pytest.raises(DatasetNotFoundError, match="split file '.*SegmentationContext/val.txt' does not exist"):
        DatasetCatalog.get("pascal_context_59_sem_seg_val")


# ----------------------------------------------------------------------------- COCO-Stuff
def test_coco_stuff_classes_and_label_conversions():
    assert len(COCO_STUFF_CLASSES) == len(set(COCO_STUFF_CLASSES)) == 171
    assert COCO_STUFF_IDS == sorted(COCO_STUFF_IDS) and COCO_STUFF_IDS[0] == 1 and COCO_STUFF_IDS[-1] == 182
    assert (COCO_STUFF_CLASSES[0], COCO_STUFF_CLASSES[79], COCO_STUFF_CLASSES[80], COCO_STUFF_CLASSES[170]) == (
        "person", "toothbrush", "banner", "wood",
    )  # fmt: skip
    # 164k stuffthingmaps: COCO id - 1 (0 = person; 11 = unused "street sign" id 12), 255 unlabeled.
    assert convert_coco_stuff_164k_label(np.array([[0, 12, 91, 181, 255]], np.uint8)).tolist() == [[0, 11, 80, 170, 255]]
    with pytest.raises(ValueError, match=r"unexpected label values \[11\]"):
        convert_coco_stuff_164k_label(np.array([[0, 11]], np.uint8))
    # 10k .mat: COCO id, 0 unlabeled.
    assert convert_coco_stuff_10k_label(np.array([[0, 1, 13, 92, 182]], np.uint8)).tolist() == [[255, 0, 11, 80, 170]]


def test_coco_stuff_164k_prepare_and_registration(registered):
    coco = os.path.join(registered, "coco")
    for folder in ("train2017", "val2017"):
        write_image(os.path.join(coco, folder, "000000000139.jpg"))
        write_label(os.path.join(coco, "stuffthingmaps", folder, "000000000139.png"), raw_label([0, 91, 181, 255]))
    assert run_script("prepare_coco_stuff_164k_sem_seg", registered, "--allow-size-mismatch") == {
        "train2017": 1,
        "val2017": 1,
    }
    (record,) = DatasetCatalog.get("coco_stuff_164k_sem_seg_val")
    assert record["sem_seg_file_name"] == os.path.join(coco, "stuffthingmaps_detectron2", "val2017", "000000000139.png")
    assert set(np.unique(read_png(record["sem_seg_file_name"]))) == {0, 80, 170, 255}
    check_metadata("coco_stuff_164k_sem_seg_train", COCO_STUFF_CLASSES)


def test_coco_stuff_10k_prepare_and_registration(registered):
    base = os.path.join(registered, "coco", "coco_stuff_10k")
    os.makedirs(os.path.join(base, "imageLists"))
    os.makedirs(os.path.join(base, "annotations"))
    for split, stem in (("train", "COCO_train2014_000000000077"), ("test", "COCO_train2014_000000000078")):
        with open(os.path.join(base, "imageLists", f"{split}.txt"), "w") as f:
            f.write(stem + "\n")
        write_image(os.path.join(base, "images", f"{stem}.jpg"))
        scipy.io.savemat(os.path.join(base, "annotations", f"{stem}.mat"), {"S": raw_label([0, 1, 182]).astype(np.uint16)})
    assert run_script("prepare_coco_stuff_10k_sem_seg", registered, "--allow-size-mismatch") == {"train": 2, "test": 2}
    (record,) = DatasetCatalog.get("coco_stuff_10k_sem_seg_test")
    assert record["file_name"] == os.path.join(base, "images_detectron2", "test", "COCO_train2014_000000000078.jpg")
    with open(record["file_name"], "rb") as a, open(os.path.join(base, "images", "COCO_train2014_000000000078.jpg"), "rb") as b:
        assert a.read() == b.read()  # images are copied byte for byte
    assert set(np.unique(read_png(record["sem_seg_file_name"]))) == {0, 170, 255}
    check_metadata("coco_stuff_10k_sem_seg_train", COCO_STUFF_CLASSES)


# ----------------------------------------------------------------------------- loader errors
def test_missing_split_directory_is_named(registered):
    with pytest.raises(DatasetNotFoundError, match=r"directory '.*cityscapes/leftImg8bit/val' does not exist"):
        DatasetCatalog.get("cityscapes_fine_sem_seg_val")


def test_image_without_label_is_named(registered):
    base = make_ade20k(registered)
    run_script("prepare_ade20k_sem_seg", registered, "--allow-size-mismatch")
    os.remove(os.path.join(base, "annotations_detectron2", "validation", "ADE_validation_00000001.png"))
    with pytest.raises(DatasetNotFoundError, match=r"ADE_validation_00000001.jpg' has no label file: expected '.*annotations_detectron2/validation/ADE_validation_00000001.png'"):  # noqa: E501
        DatasetCatalog.get("ade20k_sem_seg_val")


# ----------------------------------------------------------------------------- mapper
def mapper(is_train=True, **overrides):
    kwargs = dict(num_classes=4, base_size=[], ratio_range=(1.0, 1.0), crop_size=[16, 16], cat_max_ratio=0.75)
    kwargs.update(overrides)
    return SemSegDatasetMapper(is_train, **kwargs)


@pytest.fixture
def sample(tmp_path):
    image, label = str(tmp_path / "a.jpg"), str(tmp_path / "a.png")
    write_image(image)
    lab = raw_label([0, 1, 2, 3])
    lab[:4] = 255
    write_label(label, lab)
    return {"file_name": image, "sem_seg_file_name": label}


def test_mapper_from_config_reads_paper_recipe_keys():
    from detectron2.config import get_cfg

    cfg = add_segcls_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "cityscapes", "Base-Cityscapes.yaml"))
    m = SemSegDatasetMapper(cfg, is_train=True)
    assert (m.base_size, m.ratio_range, m.crop_size, m.cat_max_ratio, m.flip, m.color_aug, m.num_classes) == (
        [2048, 1024], (0.5, 2.0), [769, 769], 0.75, True, True, 19,
    )  # fmt: skip


def test_mapper_output_shapes_and_ignore_padding(sample):
    out = mapper(crop_size=[40, 48])(sample, rng=np.random.default_rng(0))  # crop larger than the 24x32 image
    assert out["image"].shape == (3, 40, 48) and out["image"].dtype == torch.uint8
    assert out["sem_seg"].shape == (40, 48) and out["sem_seg"].dtype == torch.long
    assert (out["sem_seg"][H:] == 255).all() and (out["sem_seg"][:, W:] == 255).all()
    assert out["valid_size"] == (H, W) and (out["height"], out["width"]) == (H, W)
    out = mapper()(sample, rng=np.random.default_rng(0))
    assert out["image"].shape == (3, 16, 16) and out["sem_seg"].shape == (16, 16) and "valid_size" not in out


def test_padding_is_zero_after_normalisation_as_mmseg(sample):
    """mmseg's SegDataPreProcessor normalises, then pads images with 0 and labels with 255: a
    padded pixel is 0 in the normalised image (not (0 - mean) / std)."""
    from segcls.modeling.meta_arch.preprocess import SemSegPreprocessor

    out = mapper(crop_size=[40, 48], flip=False)(sample, rng=np.random.default_rng(0))
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    pre = SemSegPreprocessor(pixel_mean=mean, pixel_std=std, ignore_value=255, size_divisibility=32)
    images, labels = pre([out])
    assert images.tensor.shape == (1, 3, 64, 64) and labels.shape == (1, 64, 64)
    expected = torch.zeros(3, 64, 64, dtype=torch.float64)  # direct: normalise the content, pad 0
    content = out["image"][:, :H, :W].double()
    expected[:, :H, :W] = (content - torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(3, 1, 1)  # fmt: skip
    torch.testing.assert_close(images.tensor[0].double(), expected, rtol=0, atol=1e-5)
    assert (labels[0, H:] == 255).all() and (labels[0, :, W:] == 255).all() and (labels[0, :H, :W] != 255).any()


def test_mapper_rescale_follows_base_size(sample):
    out = mapper(base_size=[128, 48], ratio_range=(0.5, 0.5), crop_size=None, flip=False)(sample, rng=np.random.default_rng(0))
    assert out["image"].shape[1:] == out["sem_seg"].shape == (24, 32)  # int(128*.5)=64, int(48*.5)=24 -> x1.0
    out = mapper(base_size=[128, 48], ratio_range=(1.0, 1.0), crop_size=None, flip=False)(sample, rng=np.random.default_rng(0))
    assert out["sem_seg"].shape == (48, 64)


def test_rescale_size_matches_mmsegmentation():
    assert rescale_size(512, 683, [2048, 512], 1.0) == (512, 683)
    assert rescale_size(512, 683, [2048, 512], 0.5) == (256, 342)
    assert rescale_size(1024, 2048, [2048, 1024], 0.75) == (768, 1536)
    assert rescale_size(375, 500, [520, 520], 1.0) == (390, 520)


def test_mapper_is_deterministic_under_a_seed(sample):
    m = mapper(color_aug=True)
    a, b = m(sample, rng=np.random.default_rng([7, 3])), m(sample, rng=np.random.default_rng([7, 3]))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
    outputs = [m(sample, rng=np.random.default_rng([7, p]))["image"] for p in range(4)]
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_mapper_test_mode_keeps_label_at_original_size(sample):
    out = mapper(is_train=False, base_size=[64, 48], test_resize=True)(sample)
    assert out["image"].shape == (3, 48, 64) and out["sem_seg"].shape == (H, W) and (out["height"], out["width"]) == (H, W)


class ScriptedRng:
    """Stands in for numpy's Generator in random_crop_box: returns the scripted (y0, x0) pairs."""

    def __init__(self, positions):
        self.values = [v for pos in positions for v in pos]

    def integers(self, low, high):
        return self.values.pop(0)


def test_crop_category_ratio_rule():
    label = np.zeros((8, 32), np.uint8)  # columns 0..19 class 0, 20..23 ignored, 24..31 class 1
    label[:, 20:24] = 255
    label[:, 24:] = 1
    only_class_0, class_0_and_ignore, balanced = (0, 0), (0, 16), (0, 18)  # 8x8 crops at these (y0, x0)
    # Single-category crops are rejected, ignored pixels not counting as a category; 2 columns of
    # class 0, 4 ignored and 2 of class 1 are accepted.
    rng = ScriptedRng([only_class_0, class_0_and_ignore, balanced])
    assert random_crop_box(label, (8, 8), 0.75, 255, rng) == (0, 18, 8, 8)
    # No acceptable crop in 10 checked tries: an 11th draw is kept unchecked (mmsegmentation's
    # RandomCrop; before issue 14 segcls kept the 10th).
    rng = ScriptedRng([only_class_0] * 10 + [class_0_and_ignore])
    assert random_crop_box(label, (8, 8), 0.75, 255, rng) == (0, 16, 8, 8)
    assert not rng.values
    # cat_max_ratio 1.0: no constraint, the first try is kept.
    assert random_crop_box(label, (8, 8), 1.0, 255, ScriptedRng([only_class_0])) == (0, 0, 8, 8)
    # A crop with only ignored pixels is rejected too.
    label = np.full((8, 32), 255, np.uint8)
    label[:, :4], label[:, 4:8] = 0, 1
    assert random_crop_box(label, (8, 8), 0.75, 255, ScriptedRng([(0, 24), (0, 0)])) == (0, 0, 8, 8)


def test_crop_ends_on_an_acceptable_crop_with_mmsegs_probability():
    # 1x2 crops of [0 0 0 0 0 1]: of the 5 positions only x0=4 has two categories, p = 1/5. mmseg
    # checks 10 draws and keeps an 11th: P(acceptable) = 1 - 0.8 ** 11 = 0.914 (10 draws: 0.893).
    label = np.array([[0, 0, 0, 0, 0, 1]], np.uint8)
    rng = np.random.default_rng(0)
    n = 20000
    hits = sum(random_crop_box(label, (1, 2), 0.75, 255, rng)[1] == 4 for _ in range(n))
    sigma = (0.914 * 0.086 / n) ** 0.5
    assert abs(hits / n - (1 - 0.8**11)) < 4 * sigma < abs((1 - 0.8**10) - (1 - 0.8**11))


def test_crop_accepts_when_largest_category_below_ratio():
    label = np.zeros((8, 16), np.uint8)
    label[:, 8:] = 1
    label[:, 10:] = 2
    # x0=4 -> columns 4..11: 4 class 0, 2 class 1, 2 class 2 -> max share 0.5 < 0.75: accepted at once.
    assert random_crop_box(label, (8, 8), 0.75, 255, ScriptedRng([(0, 4)])) == (0, 4, 8, 8)
    # x0=0 -> 8 class 0 of 8: share 1.0, rejected; x0=2 -> 6 of 8 = 0.75, not < 0.75, rejected.
    assert random_crop_box(label, (8, 8), 0.75, 255, ScriptedRng([(0, 0), (0, 2), (0, 4)])) == (0, 4, 8, 8)


def test_photometric_distortion_respects_image_format():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for seed in range(6):
        a = photometric_distortion(rgb, np.random.default_rng(seed))
        b = photometric_distortion(np.ascontiguousarray(rgb[..., ::-1]), np.random.default_rng(seed), bgr=True)
        np.testing.assert_array_equal(a, b[..., ::-1])


@pytest.mark.parametrize(
    "label, message",
    [
        (np.full((H, W), 7, np.uint8), r"contains values \[7\]: expected class indices 0..3 or the ignore value 255"),
        (np.zeros((H + 1, W), np.uint8), r"is 32x25 \(WxH\) but its image is 32x24"),
        (np.zeros((H, W, 3), np.uint8), r"is a colour image \(mode RGB"),
    ],
    ids=["out-of-range", "size-mismatch", "rgb"],
)
def test_mapper_rejects_bad_labels_naming_the_file(sample, label, message):
    Image.fromarray(label).save(sample["sem_seg_file_name"])
    with pytest.raises(LabelError, match=message) as e:
        mapper()(sample, rng=np.random.default_rng(0))
    assert sample["sem_seg_file_name"] in str(e.value)


def test_palette_label_is_read_as_indices(tmp_path):
    path = str(tmp_path / "p.png")
    im = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="P")
    im.putpalette([200, 200, 200] * 256)  # every index drawn light grey: convert("L") would give 200s
    im.save(path)
    assert read_label(path, 3, 255).tolist() == [[0, 1], [2, 255]]


def test_unreadable_image_is_named(sample):
    with open(sample["file_name"], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 corrupt jpeg")
    with pytest.raises(ImageReadError, match=f"cannot read image '{sample['file_name']}'"):
        mapper()(sample, rng=np.random.default_rng(0))


def test_unreadable_label_is_named(sample):
    with open(sample["sem_seg_file_name"], "wb") as f:
        f.write(b"garbage")
    with pytest.raises(LabelError, match=f"cannot read label '{sample['sem_seg_file_name']}'"):
        mapper()(sample, rng=np.random.default_rng(0))


# ----------------------------------------------------------------------------- safety (issue 17)
def test_prepared_files_get_the_umask_mode_and_stale_temp_files_are_removed(tmp_path):
    """A lab shares one prepared copy: files must be readable by the group/others the umask allows
    (mkstemp's private 0o600 was kept before), and an interrupted run's temporary files go away."""
    base = make_ade20k(tmp_path, n=1)
    out_dir = os.path.join(base, "annotations_detectron2", "training")
    os.makedirs(out_dir)
    stale = os.path.join(out_dir, ".ADE_training_00000000.png.k3j_x9q2.tmp")  # what a killed run leaves
    open(stale, "wb").close()
    old = os.umask(0o022)
    try:
        run_script("prepare_ade20k_sem_seg", tmp_path, "--allow-size-mismatch")
        os.umask(0o027)
        with atomic_write(str(tmp_path / "metrics.json"), "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert os.listdir(out_dir) == ["ADE_training_00000000.png"]
    assert os.stat(os.path.join(out_dir, "ADE_training_00000000.png")).st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "metrics.json").st_mode & 0o777 == 0o640


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another user")
def test_prepared_copy_is_readable_by_another_user():
    shared = tempfile.mkdtemp(prefix="segcls_shared_")
    try:
        os.chmod(shared, 0o755)
        label = os.path.join(shared, "label.png")
        old = os.umask(0o022)
        try:
            label_writer(lambda label: label)(write_and_return(os.path.join(shared, "raw.png")), label)
        finally:
            os.umask(old)
        proc = subprocess.run(["cat", label], user=65534, capture_output=True)  # as "nobody"
        assert proc.returncode == 0, proc.stderr
    finally:
        shutil.rmtree(shared)


def write_and_return(path):
    write_label(path, raw_label([0, 1]))
    return path


def test_ade20k_preparation_range_checks_raw_values(tmp_path):
    with pytest.raises(ValueError, match=r"unexpected label values \[151, 200\]"):
        convert_ade20k_label(np.array([[0, 151, 200, 150]], np.uint8))
    base = make_ade20k(tmp_path, n=1)
    write_label(os.path.join(base, "annotations", "validation", "ADE_validation_00000000.png"), raw_label([0, 151]))
    with pytest.raises(PreparationError, match=r"ADE_validation_00000000.png.*unexpected label values \[151\]"):
        run_script("prepare_ade20k_sem_seg", tmp_path, "--allow-size-mismatch")


def _evaluate_cityscapes(root):
    from detectron2.config import get_cfg

    from segcls.evaluation import build_evaluator

    evaluator = build_evaluator(add_segcls_config(get_cfg()), "cityscapes_fine_sem_seg_val", str(root / "eval"))
    evaluator.reset()
    for record in DatasetCatalog.get("cityscapes_fine_sem_seg_val"):
        gt = torch.from_numpy(read_png(record["sem_seg_file_name"]).astype(np.int64))
        evaluator.process([record], [{"sem_seg": torch.nn.functional.one_hot(gt.clamp(max=18), 19).permute(2, 0, 1).float()}])
    return evaluator.evaluate()


def test_cityscapes_official_evaluation_never_exits_and_keeps_results(registered):
    base = make_cityscapes(registered)
    run_script("prepare_cityscapes_sem_seg", registered, "--allow-size-mismatch")
    for path in glob.glob(os.path.join(base, "gtFine", "val", "*", "*_instanceIds.png")):
        os.remove(path)
    results = _evaluate_cityscapes(registered)  # the official script used to sys.exit here
    assert results["cityscapes_sem_seg"]["IoU"] == pytest.approx(results["sem_seg"]["mIoU"])
    assert np.isnan(results["cityscapes_sem_seg"]["iIoU"])
    label_ids = glob.glob(os.path.join(base, "gtFine", "val", "*", "*_labelIds.png"))[0]
    with open(label_ids, "wb") as f:  # unreadable for the official script only (it reads labelIds)
        f.write(b"garbage")
    results = _evaluate_cityscapes(registered)
    assert "cityscapes_sem_seg" not in results and results["sem_seg"]["mIoU"] == 100.0


def test_exif_rotated_image_with_unrotated_label_is_explained(tmp_path):
    image, label = str(tmp_path / "a.jpg"), str(tmp_path / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed (and read by detectron2) rotated to portrait
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image, exif=exif)
    write_label(label, raw_label([0, 1]))  # drawn on the stored (unrotated) pixels
    with pytest.raises(LabelError, match=f"is {W}x{H} \\(WxH\\) but its image is {H}x{W} after applying its EXIF orientation 6"):
        mapper(is_train=False)({"file_name": image, "sem_seg_file_name": label})
