"""EMA of the weights (MODEL.EMA): equal to a direct float64 computation, checkpointed, resumed
bit-exactly, evaluated alongside the raw weights."""
import json

import pytest
import torch
from detectron2.engine import HookBase

from segcls.engine import ModelEMA, SemSegPredictor, Trainer
from helpers import tiny_config

EMA_OPTS = ["MODEL.EMA.ENABLED", "True", "MODEL.EMA.DECAY", "0.8", "MODEL.EMA.WARMUP", "True"]


class _RecordWeights(HookBase):
    """The model's state (float64 copies) before training and after every step."""

    def before_train(self):
        self.states = [self._state()]

    def after_step(self):
        self.states.append(self._state())

    def _state(self):
        return {k: v.double() if v.is_floating_point() else v.clone() for k, v in self.trainer.model.state_dict().items()}


class _StopAfter(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter + 1 == self.iteration:
            raise KeyboardInterrupt


def _ema_hook(trainer):
    return next(h for h in trainer._hooks if type(h).__name__ == "EMAHook")


def test_decay_schedule():
    ema = ModelEMA(torch.nn.Linear(2, 2), decay=0.99, warmup=True)
    assert [ema.decay_at(t) for t in (0, 1, 10)] == [pytest.approx(1 / 10), pytest.approx(2 / 11), pytest.approx(11 / 20)]
    assert ema.decay_at(10**6) == 0.99
    assert ModelEMA(torch.nn.Linear(2, 2), decay=0.99).decay_at(0) == 0.99
    with pytest.raises(ValueError, match="MODEL.EMA.DECAY"):
        ModelEMA(torch.nn.Linear(2, 2), decay=1.0)


def test_ema_equals_direct_computation_and_is_evaluated(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path, train=[tiny_dataset], test=[tiny_dataset], opts=EMA_OPTS)
    trainer = Trainer(cfg)
    recorder = _RecordWeights()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    trainer.train()
    ema = _ema_hook(trainer).ema
    assert ema.num_updates == cfg.SOLVER.MAX_ITER
    expected = recorder.states[0]
    for t, state in enumerate(recorder.states[1:]):
        d = min(0.8, (1 + t) / (10 + t))
        # float entries averaged; integer ones (BN's num_batches_tracked) copied
        expected = {k: d * expected[k] + (1 - d) * v if v.is_floating_point() else v for k, v in state.items()}
    got = ema.module.state_dict()
    assert got.keys() == expected.keys()
    for k, v in got.items():
        torch.testing.assert_close(v.double() if v.is_floating_point() else v, expected[k], rtol=1e-5, atol=1e-6,
                                   msg=k)
    # the EMA differs from the raw weights, is saved in the final checkpoint and evaluated to eval_ema/
    raw = trainer.model.state_dict()
    assert any(not torch.equal(raw[k], got[k]) for k in got if got[k].is_floating_point())
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert all(torch.equal(checkpoint["model_ema"]["model"][k], v) for k, v in got.items())
    for eval_dir in ("eval", "eval_ema"):
        results = json.loads((tmp_path / eval_dir / "results.json").read_text())
        assert 0 <= results[tiny_dataset]["sem_seg"]["mIoU"] <= 100
    ema_results = json.loads((tmp_path / "eval_ema" / "results.json").read_text())
    assert trainer.storage.latest()[f"ema/{tiny_dataset}/sem_seg/mIoU"][0] == ema_results[tiny_dataset]["sem_seg"]["mIoU"]
    # the predictor loads the EMA weights on request
    predictor = SemSegPredictor(cfg, weights=str(tmp_path / "model_final.pth"), ema=True)
    assert all(torch.equal(predictor.model.state_dict()[k], v) for k, v in got.items())


def test_resume_with_ema_is_bit_exact(tmp_path, tiny_dataset):
    straight = Trainer(tiny_config(tmp_path / "straight", train=[tiny_dataset], opts=EMA_OPTS))
    straight.resume_or_load(resume=False)
    straight.train()

    out = tmp_path / "interrupted"
    interrupted = Trainer(tiny_config(out, train=[tiny_dataset], opts=EMA_OPTS))
    # stopped before iteration 4: the interrupted-run checkpoint holds iterations 0-3 and their EMA
    interrupted.register_hooks([_StopAfter(iteration=4)])
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    resumed = Trainer(tiny_config(out, train=[tiny_dataset], opts=EMA_OPTS))
    resumed.resume_or_load(resume=True)
    assert resumed.checkpointer.get_checkpoint_file().endswith("model_0000003_interrupted.pth")
    assert resumed.start_iter == 4 and _ema_hook(resumed).ema.num_updates == 4
    resumed.train()
    a, b = _ema_hook(straight).ema.module.state_dict(), _ema_hook(resumed).ema.module.state_dict()
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_missing_ema_weights_is_a_clear_error(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path, train=[tiny_dataset], opts=["SOLVER.MAX_ITER", "1"])
    trainer = Trainer(cfg)
    trainer.train()
    with pytest.raises(KeyError, match="holds no EMA weights.*MODEL.EMA.ENABLED"):
        SemSegPredictor(cfg, weights=str(tmp_path / "model_final.pth"), ema=True)


def test_eval_only_evaluates_raw_and_ema_weights(tmp_path, tiny_dataset):
    from segcls.engine import default_argument_parser, train_net_main

    cfg = tiny_config(tmp_path / "train", train=[tiny_dataset], test=[tiny_dataset], opts=EMA_OPTS + ["SOLVER.MAX_ITER", "2"])
    Trainer(cfg).train()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(cfg.dump())
    args = default_argument_parser().parse_args([
        "--config-file", str(config_file), "--eval-only",
        "MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval_only"),
    ])
    results = train_net_main(args)
    ema_results = json.loads((tmp_path / "eval_only" / "eval_ema" / "results.json").read_text())
    assert results["ema"][tiny_dataset]["sem_seg"]["mIoU"] == ema_results[tiny_dataset]["sem_seg"]["mIoU"]
    assert (tmp_path / "eval_only" / "eval" / "results.json").is_file()
