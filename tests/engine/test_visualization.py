"""TensorBoard panels (VIS_PERIOD, at each evaluation) and the Weights & Biases writer (fake run)."""
import glob

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from segcls.engine import Trainer
from segcls.engine.wandb_writer import WandbWriter
from segcls.utils.visualization import colorize_labels, segmentation_panel
from helpers import tiny_config


class FakeRun:
    """Records what a wandb run is given."""

    def __init__(self):
        self.logged, self.finished = [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def test_segmentation_panel_and_legend():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gt = np.full((20, 30), 1)
    gt[:5] = 255
    pred = np.full((20, 30), 3)
    colors = [[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]]
    panel = segmentation_panel(image, [gt, pred], ["a", "b", "c", "d"], colors)
    assert panel.shape == (20 + 2 * 16, 90, 3)  # classes 1 and 3 present, one 120-px entry per 90-px row
    np.testing.assert_array_equal(panel[:20, :30], image)
    np.testing.assert_array_equal(panel[:20, 30:60], colorize_labels(gt, 4, colors))
    np.testing.assert_array_equal(panel[:5, 30:60], 0)  # ignored pixels black
    legend = panel[20:]
    swatches = {tuple(c) for c in legend.reshape(-1, 3)} & {tuple(c) for c in colors}
    assert swatches == {(40, 50, 60), (100, 110, 120)}
    many = segmentation_panel(image, [np.arange(600).reshape(20, 30) % 8], [str(k) for k in range(8)])
    assert many.shape[0] == 20 + 16 * 8  # 90 px wide: one entry per legend row


def test_panels_and_wandb_during_training(tmp_path, tiny_dataset, monkeypatch):
    run = FakeRun()
    monkeypatch.setattr(WandbWriter, "from_config", classmethod(lambda cls, cfg: cls(run, lambda image: image.shape)))
    base = ["TEST.EVAL_PERIOD", "2", "SOLVER.MAX_ITER", "4", "MODEL.CLASSIFIER.DROPOUT", "0.5"]
    opts = base + ["VIS_PERIOD", "2", "SEGCLS.VIS_IMAGES", "2", "WANDB.ENABLED", "True"]
    cfg = tiny_config(tmp_path / "vis", train=[tiny_dataset], test=[tiny_dataset], opts=opts)
    trainer = Trainer(cfg)
    trainer.train()
    # TensorBoard: training panels every 2 iterations, evaluation panels at each evaluation
    events = EventAccumulator(glob.glob(str(tmp_path / "vis" / "events.out.tfevents.*"))[0], size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    assert tags == {"train/0", "train/1", f"eval/{tiny_dataset}/0", f"eval/{tiny_dataset}/1"}
    assert [e.step for e in events.Images("train/0")] == [1, 3]
    # detectron2 runs the last evaluation in after_train, where the storage's iteration is MAX_ITER
    assert [e.step for e in events.Images(f"eval/{tiny_dataset}/0")] == [1, 4]
    first = events.Images("train/0")[0]
    assert first.width == 3 * 40 and first.height > 32  # image | gt | prediction (32x40 each) over the legend
    # W&B: the same scalars and images, steps increasing, run finished
    steps = [step for step, _ in run.logged]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    logged = {k: v for _, data in run.logged for k, v in data.items()}
    assert logged["train/0"][0] == 3 and logged["train/0"][2] == 3 * 40
    assert f"eval/{tiny_dataset}/1" in logged and "total_loss" in logged and "lr" in logged
    assert f"{tiny_dataset}/sem_seg/mIoU" in logged
    assert run.finished
    # the panels change nothing in the run: same weights as without them
    plain = Trainer(tiny_config(tmp_path / "plain", train=[tiny_dataset], test=[tiny_dataset], opts=base))
    plain.train()
    a, b = trainer.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ImportError, match="WANDB.ENABLED True needs the 'wandb' package"):
        WandbWriter.from_config(tiny_config(tmp_path))
