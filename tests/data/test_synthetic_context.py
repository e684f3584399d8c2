import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from segcls.data.datasets import synthetic_context as sc

SMALL = {"num_train": 8, "num_val": 4, "num_val_rare": 4, "image_size": 64}
FOLDERS = list(sc.SYNTHETIC_CONTEXT_SPLITS.values())
K = len(sc.SYNTHETIC_CONTEXT_CLASSES)
SKY = sc.SYNTHETIC_CONTEXT_CLASSES.index("sky") + 1
GROUNDS = {sc.SYNTHETIC_CONTEXT_CLASSES.index(g) + 1 for g in sc.GROUND_CLASSES}
OBJECTS = {sc.SYNTHETIC_CONTEXT_CLASSES.index(c) + 1: c for c in sc.OBJECT_CLASSES}


def files_of(root):
    """{relative path: bytes} of every file under root/synthetic_context."""
    base = os.path.join(root, sc.SYNTHETIC_CONTEXT_DIRNAME)
    out = {}
    for dirpath, _, names in os.walk(base):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, base)] = f.read()
    return out


def raw_labels(root, folder):
    d = os.path.join(root, sc.SYNTHETIC_CONTEXT_DIRNAME, "annotations", folder)
    return [np.asarray(Image.open(os.path.join(d, n))) for n in sorted(os.listdir(d))]


def preferred_fraction(labels):
    """Over (image, object class present) pairs: fraction whose image ground is the class's preferred one."""
    pairs = on_preferred = 0
    for label in labels:
        grounds = GROUNDS & set(np.unique(label).tolist())
        assert len(grounds) == 1, "every image has exactly one ground class"
        ground = sc.SYNTHETIC_CONTEXT_CLASSES[grounds.pop() - 1]
        for value in set(np.unique(label).tolist()) & set(OBJECTS):
            pairs += 1
            on_preferred += sc.PREFERRED_GROUND[OBJECTS[value]] == ground
    assert pairs > 0
    return on_preferred / pairs


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("small"))
    info = sc.generate_synthetic_context(root, **SMALL)
    return root, info


def test_layout_and_label_ranges(small):
    root, info = small
    base = os.path.join(root, sc.SYNTHETIC_CONTEXT_DIRNAME)
    assert info == json.load(open(os.path.join(base, "generator.json")))
    assert not os.path.exists(os.path.join(base, "generator.partial.json"))
    unlabeled = 0
    for folder, n in zip(FOLDERS, (8, 4, 4)):
        names = [f"{i:05d}" for i in range(n)]
        assert sorted(os.listdir(os.path.join(base, "images", folder))) == [s + ".jpg" for s in names]
        for name in names:
            with Image.open(os.path.join(base, "images", folder, name + ".jpg")) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
            with Image.open(os.path.join(base, "annotations", folder, name + ".png")) as im:
                assert im.mode == "L"
                raw = np.asarray(im)
            with Image.open(os.path.join(base, "annotations_detectron2", folder, name + ".png")) as im:
                converted = np.asarray(im)
            assert raw.shape == converted.shape == (64, 64)
            assert raw.max() <= K
            assert set(np.unique(converted).tolist()) <= set(range(K)) | {255}
            np.testing.assert_array_equal(converted == 255, raw == 0)
            np.testing.assert_array_equal(converted[raw > 0], raw[raw > 0] - 1)
            unlabeled += (raw == 0).sum()
            # a thin band: present, but a small part of the image
            assert (raw == 0).mean() < 0.1
    assert unlabeled > 0


def test_deterministic(small, tmp_path):
    root, _ = small
    sc.generate_synthetic_context(tmp_path / "same", **SMALL)
    sc.generate_synthetic_context(tmp_path / "other", seed=1, **SMALL)
    reference = files_of(root)
    assert files_of(tmp_path / "same") == reference
    other = files_of(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert all(other[k] != reference[k] for k in reference if k.endswith(".jpg"))


def test_all_classes_reachable(tmp_path):
    sc.generate_synthetic_context(tmp_path, num_train=40, num_val=10, num_val_rare=10, image_size=48)
    seen = set()
    for folder in FOLDERS:
        for label in raw_labels(tmp_path, folder):
            seen |= set(np.unique(label).tolist())
    assert K >= 8
    assert seen == set(range(K + 1))  # 0 (unlabeled) and every class


@pytest.mark.parametrize("bias", [1.0, 0.9, 0.0])
def test_context_statistics(tmp_path, bias):
    info = sc.generate_synthetic_context(
        tmp_path, num_train=60, num_val=4, num_val_rare=30, image_size=48, context_bias=bias
    )
    train = preferred_fraction(raw_labels(tmp_path, "training"))
    rare = preferred_fraction(raw_labels(tmp_path, "validation_rare"))
    if bias == 1.0:
        assert train == 1.0
    elif bias == 0.0:
        assert train == 0.0
    else:
        assert 0.75 <= train < 1.0
    assert rare == 0.0
    stats = info["stats"]
    recorded = stats["train"]["objects_on_preferred_ground"] / stats["train"]["objects"]
    assert recorded == pytest.approx(bias, abs=0.1)
    assert stats["val_rare"]["objects_on_preferred_ground"] == 0
    # val_rare objects stand on the preferred ground of another member of their group
    for cls, grounds in stats["val_rare"]["object_ground_counts"].items():
        group = next(g for g in sc.OBJECT_GROUPS.values() if cls in g)
        allowed = {sc.PREFERRED_GROUND[c] for c in group if c != cls}
        assert all(n == 0 for g, n in grounds.items() if g not in allowed)


def test_second_call_is_a_noop(small, monkeypatch):
    root, info = small
    before = {
        os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns for d, _, ns in os.walk(root) for n in ns
    }

    def fail(*args):
        raise AssertionError("rendered an image although the dataset is complete")

    monkeypatch.setattr(sc, "_render_scene", fail)
    calls = []
    assert sc.generate_synthetic_context(root, progress=lambda *a: calls.append(a), **SMALL) == info
    assert calls == []
    after = {
        os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns for d, _, ns in os.walk(root) for n in ns
    }
    assert after == before


def test_different_params_raise(small):
    root, _ = small
    base = os.path.join(root, sc.SYNTHETIC_CONTEXT_DIRNAME)
    before = files_of(root)
    with pytest.raises(sc.SyntheticContextExistsError) as e:
        sc.generate_synthetic_context(root, **{**SMALL, "num_val": 5, "context_bias": 0.5})
    message = str(e.value)
    assert base in message and "num_val" in message and "context_bias" in message
    assert "seed" not in message and "num_train" not in message
    assert files_of(root) == before


def test_interrupted_run_resumes(small, tmp_path, monkeypatch):
    reference = files_of(small[0])

    def interrupt(done, total):
        if done == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sc.generate_synthetic_context(tmp_path, progress=interrupt, **SMALL)
    base = tmp_path / sc.SYNTHETIC_CONTEXT_DIRNAME
    assert not (base / "generator.json").exists()
    assert (base / "generator.partial.json").exists()
    # another configuration must not be mixed into the interrupted one
    with pytest.raises(sc.SyntheticContextExistsError, match="image_size"):
        sc.generate_synthetic_context(tmp_path, **{**SMALL, "image_size": 32})
    os.remove(base / "images" / "training" / "00003.jpg")

    rendered = []
    render = sc._render_scene
    monkeypatch.setattr(sc, "_render_scene", lambda *a: rendered.append(a) or render(*a))
    sc.generate_synthetic_context(tmp_path, **SMALL)
    # the 10 images written before the interruption are kept, except the one removed
    assert len(rendered) == sum(SMALL[k] for k in ("num_train", "num_val", "num_val_rare")) - 10 + 1
    assert files_of(tmp_path) == reference


def test_invalid_params(tmp_path):
    for bad in ({"context_bias": 1.5}, {"num_val_rare": 0}, {"image_size": 16}, {"seed": -1}):
        with pytest.raises(ValueError):
            sc.generate_synthetic_context(tmp_path, **{**SMALL, **bad})
    assert not os.path.exists(tmp_path / sc.SYNTHETIC_CONTEXT_DIRNAME)


def test_registration(small):
    root, _ = small
    sc.register_synthetic_context(root)
    for split, n in (("train", 8), ("val", 4), ("val_rare", 4)):
        name = f"synthetic_context_{split}"
        records = DatasetCatalog.get(name)
        assert len(records) == n
        for r in records:
            assert os.path.isfile(r["file_name"]) and os.path.isfile(r["sem_seg_file_name"])
            assert os.sep + "annotations_detectron2" + os.sep in r["sem_seg_file_name"]
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == sc.SYNTHETIC_CONTEXT_CLASSES
        assert len(meta.stuff_colors) == len(meta.stuff_classes) == K
        assert len({tuple(c) for c in meta.stuff_colors}) == K
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    with pytest.raises(FileNotFoundError):  # registering is lazy; a missing tree fails when used
        sc.register_synthetic_context(os.path.join(root, "missing"))
        DatasetCatalog.get("synthetic_context_val")
    sc.register_synthetic_context(root)
