"""End-to-end training + evaluation, bitwise determinism and exact resumption on CPU."""
import json
import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.events import EventStorage

from segcls.engine import Trainer
from helpers import tiny_config


class _Interrupted(Exception):
    pass


class _StopAfter(HookBase):
    """Simulates a killed job: raises once ``iteration`` iterations have run (after checkpointing)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter + 1 == self.iteration:
            raise _Interrupted()


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _train(cfg, resume=False):
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    diffs = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diffs, f"weights differ in {diffs[:5]}"


def test_train_then_evaluate_writes_metrics_and_overlays(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path / "out", train=[tiny_dataset], test=[tiny_dataset], opts=["TEST.NUM_OVERLAYS", "2"])
    trainer = _train(cfg)
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
    results = Trainer.test(cfg, trainer.model)
    metrics = results[tiny_dataset]["sem_seg"]
    for key in ("mIoU", "pACC", "mACC", "IoU-c0", "IoU-c2"):
        assert 0.0 <= metrics[key] <= 100.0, key
    written = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())
    assert written[tiny_dataset]["sem_seg"]["mIoU"] == metrics["mIoU"]
    overlays = sorted(os.listdir(tmp_path / "out" / "eval" / tiny_dataset / "overlays"))
    assert len(overlays) == 2 and all(f.endswith(".png") for f in overlays)


def test_training_reduces_loss(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path, train=[tiny_dataset], opts=["INPUT.RANDOM_FLIP", "none", "INPUT.RATIO_RANGE", "[1.0, 1.0]"])
    trainer = Trainer(cfg)
    model, data = trainer.model, next(iter(trainer.train_loader))
    with EventStorage():
        first = sum(model(data).values()).item()
        for _ in range(30):
            trainer.optimizer.zero_grad()
            sum(model(data).values()).backward()
            trainer.optimizer.step()
        last = sum(model(data).values()).item()
    assert last < 0.8 * first, (first, last)


def test_same_seed_gives_bitwise_identical_weights(tmp_path, tiny_dataset):
    runs = [_weights(_train(tiny_config(tmp_path / f"run{i}", train=[tiny_dataset]))) for i in range(2)]
    _assert_identical(*runs)


def test_different_seed_gives_different_weights(tmp_path, tiny_dataset):
    a = _weights(_train(tiny_config(tmp_path / "a", train=[tiny_dataset], opts=["SEED", "1"])))
    b = _weights(_train(tiny_config(tmp_path / "b", train=[tiny_dataset], opts=["SEED", "2"])))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_matches_uninterrupted_run(tmp_path, tiny_dataset):
    """6 iterations straight == 3 iterations, stop, --resume, 3 more (bitwise, CPU), with a worker
    process and dropout so that both the data stream and the RNG must continue correctly."""
    opts = ["DATALOADER.NUM_WORKERS", "1", "MODEL.CLASSIFIER.DROPOUT", "0.5", "MODEL.AUX_HEAD.ENABLED", "True"]
    straight = _weights(_train(tiny_config(tmp_path / "straight", train=[tiny_dataset], opts=opts)))

    out = tmp_path / "interrupted"
    interrupted = Trainer(tiny_config(out, train=[tiny_dataset], opts=opts))
    interrupted.register_hooks([_StopAfter(iteration=3)])
    with pytest.raises(_Interrupted):
        interrupted.train()
    # Since issue 17 the stopped run saves its last completed iteration (it was the periodic
    # model_0000002.pth here, which holds the same iteration).
    assert (out / "last_checkpoint").read_text().strip() == "model_0000002_interrupted.pth"
    assert not (out / "model_final.pth").exists()
    resumed = _train(tiny_config(out, train=[tiny_dataset], opts=opts), resume=True)
    assert resumed.start_iter == 3
    _assert_identical(straight, _weights(resumed))
