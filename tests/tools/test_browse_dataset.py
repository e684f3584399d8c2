"""tools/browse_dataset.py: raw and mapped samples drawn as image | overlay over a legend."""
import numpy as np
import pytest
from PIL import Image

from helpers import load_script, tiny_config

browse = load_script("tools/browse_dataset.py")


def _config_file(tmp_path, tiny_dataset):
    path = tmp_path / "config.yaml"
    path.write_text(tiny_config(tmp_path / "out", train=[tiny_dataset], opts=["INPUT.CROP.SIZE", "[24, 24]"]).dump())
    return str(path)


def test_raw_and_mapped_samples(tmp_path, tiny_dataset):
    config = _config_file(tmp_path, tiny_dataset)
    raw = browse.main(["--config-file", config, "--source", "raw", "--num", "2", "--output", str(tmp_path / "raw")])
    assert [p.rsplit("/", 1)[1] for p in raw] == ["00000_000.png", "00001_001.png"]
    panel = np.asarray(Image.open(raw[0]))
    assert panel.shape[1] == 2 * 40 and panel.shape[0] > 32  # image | overlay (32x40 each) over the legend
    source = np.asarray(Image.open(tmp_path / "tiny" / "images" / "000.jpg"))
    np.testing.assert_array_equal(panel[:32, :40], source)  # the left half is the image as stored
    mapped = browse.main(["--config-file", config, "--num", "3", "--shuffle", "--output", str(tmp_path / "mapped")])
    assert len(mapped) == 3
    assert all(np.asarray(Image.open(p)).shape[1] == 2 * 24 for p in mapped)  # after the 24x24 crop
    again = browse.main(["--config-file", config, "--num", "3", "--shuffle", "--output", str(tmp_path / "again")])
    for a, b in zip(mapped, again):  # the same seed draws the same samples and augmentations
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_unknown_dataset_is_a_clear_error(tmp_path, tiny_dataset):
    config = _config_file(tmp_path, tiny_dataset)
    with pytest.raises(KeyError, match="'nonexistent' is not registered"):
        browse.main(["--config-file", config, "--dataset", "nonexistent", "--output", str(tmp_path / "x")])
