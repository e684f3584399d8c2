"""tools/predict.py end to end: label PNGs (palette, class indices), overlays, panels, probabilities,
a video, unreadable files skipped, inputs never overwritten, bad inputs as clear errors."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segcls.engine import SemSegPredictor
from helpers import load_script, save_random_model, tiny_config

predict = load_script("tools/predict.py")


@pytest.fixture
def setup(tmp_path, tiny_dataset):
    """(config file, weights, predictor, image folder with a sub-folder and an unreadable file)."""
    cfg = tiny_config(tmp_path / "train", test=[tiny_dataset], opts=["TEST.MODE", "slide", "TEST.CROP_SIZE", "[24, 24]",
                                                                     "TEST.STRIDE", "[16, 16]"])
    config_file = tmp_path / "config.yaml"
    config_file.write_text(cfg.dump())
    weights = save_random_model(cfg, tmp_path)
    images = tmp_path / "inputs"
    (images / "sub").mkdir(parents=True)
    source = tmp_path / "tiny" / "images"
    shutil.copy(source / "000.jpg", images / "a.jpg")
    shutil.copy(source / "001.jpg", images / "sub" / "b.jpg")
    Image.open(source / "002.jpg").resize((24, 20)).save(images / "c.png")  # another size
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return str(config_file), weights, SemSegPredictor(cfg, weights=weights), images


def _run(config_file, weights, inputs, output, *extra):
    return predict.main(["--config-file", config_file, "--weights", weights, "--input", *map(str, inputs),
                         "--output", str(output), "--batch-size", "2", *extra])


def test_folder_gives_labels_overlays_and_probs(setup, tmp_path, capsys):
    config_file, weights, predictor, images = setup
    out = tmp_path / "out"
    written, skipped = _run(config_file, weights, [images], out, "--probs")
    assert (written, skipped) == (3, 1)
    err = capsys.readouterr().err
    assert "skipping" in err and "broken.jpg" in err
    for name in ("a", "sub/b", "c"):
        source = next(p for p in images.rglob("*") if p.is_file() and str(p.relative_to(images)).startswith(name + "."))
        scores = predictor(str(source))
        label = Image.open(out / f"{name}.png")
        assert label.mode == "P"
        np.testing.assert_array_equal(np.asarray(label), scores.argmax(0).numpy())
        assert np.asarray(Image.open(out / f"{name}_overlay.png")).shape == (*scores.shape[1:], 3)
        probs = np.load(out / f"{name}_probs.npy")
        assert probs.dtype == np.float16 and probs.shape == scores.shape
        np.testing.assert_allclose(probs, scores.softmax(0).numpy(), atol=1e-3)
    assert not (out / "broken.png").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_side_by_side_and_video(setup, tmp_path):
    config_file, weights, predictor, images = setup
    video = tmp_path / "clip.mp4"
    frames = [np.asarray(Image.open(images / "a.jpg"))[..., ::-1]] * 3
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (40, 32))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    out = tmp_path / "out"
    written, skipped = _run(config_file, weights, [images / "a.jpg", video], out, "--overlay", "side-by-side")
    assert (written, skipped) == (2, 0)
    panel = np.asarray(Image.open(out / "a_panel.png"))
    assert panel.shape[1] == 80 and panel.shape[0] > 32  # image | prediction over the legend
    capture = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    ok, frame = capture.read()
    assert ok and frame.shape[1] == 80
    capture.release()


def test_bad_inputs(setup, tmp_path):
    config_file, weights, _, images = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="input folder .*empty.* holds no images"):
        _run(config_file, weights, [empty], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="input .*nothing.jpg.* does not exist"):
        _run(config_file, weights, [tmp_path / "nothing.jpg"], tmp_path / "out")
    with pytest.raises(ValueError, match="inside the input folder"):
        _run(config_file, weights, [images], images / "predictions")
    with pytest.raises(ValueError, match="would overwrite an input"):
        _run(config_file, weights, [images / "c.png"], images, "--overlay", "none")
    assert os.path.getsize(images / "c.png") > 0 and Image.open(images / "c.png").mode == "RGB"
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        _run(config_file, str(tmp_path / "missing.pth"), [images], tmp_path / "out")
    with pytest.raises(ValueError, match="would both be written as 'a'"):
        _run(config_file, weights, [images / "a.jpg", images / "a.jpg"], tmp_path / "out")
