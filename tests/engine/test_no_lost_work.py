"""No lost work and no silently wrong weights (issue 17): refusing a used OUTPUT_DIR, checkpoints
of the last completed iteration on SIGINT and exceptions, atomic checkpoint writes with a
verified resume, strict MODEL.WEIGHTS, the seed saved with the run, CLI guidance."""
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from detectron2.engine import HookBase

from segcls.data.datasets import DatasetNotFoundError
from segcls.engine import Trainer
from segcls.engine.checkpoint import NotACheckpointError, SegclsCheckpointer, WeightsMismatchError
from segcls.engine.defaults import default_argument_parser, load_config, train_net_main
from helpers import REPO, custom_dataset_entry, tiny_config, tiny_opts, write_tiny_dataset

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_driver.py")
NAME = "segcls_test_custom_safety"


class _Crash(HookBase):
    """Raises an OSError before iteration ``iteration`` (0-based), as a failing disk or loader would."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            raise OSError("injected I/O error")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(opts registering the tiny dataset through DATASETS.CUSTOM, the straight 6-iteration run's weights)."""
    root = tmp_path_factory.mktemp("safety")
    image_dir, label_dir = write_tiny_dataset(str(root / "tiny"))
    custom = ["DATASETS.CUSTOM", custom_dataset_entry(NAME, image_dir, label_dir)]
    trainer = Trainer(tiny_config(root / "straight", train=[NAME], opts=custom))
    trainer.train()
    return custom, _weights(trainer)


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _cfg(out, custom, opts=()):
    return tiny_config(out, train=[NAME], opts=list(custom) + list(opts))


def _resume(out, custom):
    trainer = Trainer(_cfg(out, custom))
    trainer.resume_or_load(resume=True)
    trainer.train()
    return trainer


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def _files(folder):
    return {p: (folder / p).read_bytes() for p in sorted(os.listdir(folder)) if (folder / p).is_file()}


def _args(argv):
    return default_argument_parser().parse_args(argv)


def _run_driver(kill_at_save, out, custom):
    """tools/train_net.py, SIGKILLed in the middle of its ``kill_at_save``-th checkpoint save."""
    cmd = [sys.executable, DRIVER, str(kill_at_save), *tiny_opts(out, train=[NAME], opts=custom)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


class _SendSigint(HookBase):
    """Delivers a real SIGINT to this process (as Ctrl-C does) once ``iteration`` iterations have run."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGINT)


def test_sigint_saves_the_last_completed_iteration_and_resume_is_exact(tmp_path, data, caplog):
    custom, straight = data
    trainer = Trainer(_cfg(tmp_path, custom))
    trainer.register_hooks([_SendSigint(iteration=4)])
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="SIGINT received"):
        trainer.train()
    assert "SIGINT received: stopping after iteration 4" in caplog.text
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003_interrupted.pth"
    saved = torch.load(tmp_path / "model_0000003_interrupted.pth", weights_only=False)
    assert saved["iteration"] == saved["trainer"]["iteration"] == 3 and "SIGINT" in saved["interrupted"]
    assert not (tmp_path / "model_final.pth").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back
    resumed = _resume(tmp_path, custom)
    assert resumed.start_iter == 4
    _assert_identical(straight, _weights(resumed))


def test_exception_saves_the_last_completed_iteration_and_resume_is_exact(tmp_path, data):
    custom, straight = data
    trainer = Trainer(_cfg(tmp_path, custom))
    trainer.register_hooks([_Crash(iteration=4)])
    with pytest.raises(OSError, match="injected"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003_interrupted.pth"
    assert "OSError: injected I/O error" in torch.load(tmp_path / "model_0000003_interrupted.pth", weights_only=False)["interrupted"]
    _assert_identical(straight, _weights(_resume(tmp_path, custom)))


def test_sigkill_during_a_save_leaves_no_truncated_checkpoint(tmp_path, data):
    custom, straight = data
    out = tmp_path / "out"
    proc = _run_driver(2, out, custom)  # the 2nd save is model_0000005.pth
    assert proc.returncode == -9, proc.stderr[-3000:]
    pth = sorted(p for p in os.listdir(out) if p.endswith(".pth"))
    assert pth == ["model_0000002.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"
    assert [p for p in os.listdir(out) if p.startswith(".model_0000005.pth.")]  # what the kill left
    resumed = _resume(out, custom)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # removed on resume
    assert resumed.start_iter == 3
    _assert_identical(straight, _weights(resumed))


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, data, caplog):
    custom, straight = data
    trainer = Trainer(_cfg(tmp_path, custom))
    trainer.register_hooks([_Crash(iteration=4)])
    with pytest.raises(OSError):
        trainer.train()
    interrupted = tmp_path / "model_0000003_interrupted.pth"
    interrupted.write_bytes(interrupted.read_bytes()[:1000])  # as a non-atomic writer killed mid-save leaves it
    resumed = _resume(tmp_path, custom)
    assert resumed.start_iter == 3  # model_0000002.pth
    assert f"not a checkpoint: {interrupted}" in caplog.text and "model_0000002.pth' instead" in caplog.text
    _assert_identical(straight, _weights(resumed))


def test_rerun_into_a_used_output_dir_is_refused(tmp_path, data):
    custom, _ = data
    argv = ["--config-file", "", *tiny_opts(tmp_path, train=[NAME], opts=custom + ["SOLVER.MAX_ITER", "2"])]
    train_net_main(_args(argv))
    before = _files(tmp_path)
    assert "model_final.pth" in before and "config.yaml" in before
    with pytest.raises(FileExistsError, match="--resume .* new OUTPUT_DIR"):
        train_net_main(_args(argv))
    assert _files(tmp_path) == before  # nothing overwritten, not even config.yaml
    train_net_main(_args(["--overwrite"] + argv))
    assert (tmp_path / "model_final.pth").exists() and not (tmp_path / "model_0000002.pth").exists()


def test_negative_seed_is_saved_and_reused_on_resume(tmp_path, data):
    custom, _ = data
    opts = ["SEED", "-1", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"]
    argv = ["--config-file", "", *tiny_opts(tmp_path, train=[NAME], opts=custom + opts)]
    train_net_main(_args(argv))
    seed = yaml.safe_load((tmp_path / "config.yaml").read_text())["SEED"]
    assert seed >= 0
    (tmp_path / "model_final.pth").unlink()  # as if stopped after iteration 2
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    train_net_main(_args(["--resume"] + argv))
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["SEED"] == seed
    assert "using the seed of the resumed run" in (tmp_path / "log.txt").read_text()


def _tiny_model(depth=18):
    return Trainer.build_model(load_config("", tiny_opts("", opts=["MODEL.RESNETS.DEPTH", str(depth)])))


def test_unconverted_or_other_depth_weights_are_errors(tmp_path):
    model = _tiny_model()
    torchvision_like = tmp_path / "resnet18.pth"  # unconverted: torchvision names
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, torchvision_like)
    with pytest.raises(WeightsMismatchError, match=r"resnet18.pth': 0 of the model's \d+ tensors .*tools/convert_pretrained.py"):
        SegclsCheckpointer(model).load(str(torchvision_like))
    SegclsCheckpointer(model, allow_partial=True).load(str(torchvision_like))  # explicitly asked for

    other_depth = tmp_path / "r18_backbone.pth"
    torch.save({"model": {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}}, other_depth)
    SegclsCheckpointer(_tiny_model()).load(str(other_depth))  # a backbone-only file initialises a backbone
    with pytest.raises(WeightsMismatchError, match="model tensors not in the file .*backbone.res"):
        SegclsCheckpointer(_tiny_model(depth=34)).load(str(other_depth))
    with pytest.raises(WeightsMismatchError, match="decode_head"):  # evaluation needs every tensor
        SegclsCheckpointer(_tiny_model(), complete=True).load(str(other_depth))


def test_garbage_weights_and_eval_only_without_weights(tmp_path, data):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(NotACheckpointError, match=f"not a checkpoint: {garbage}"):
        SegclsCheckpointer(_tiny_model()).load(str(garbage))
    custom, _ = data
    argv = ["--config-file", "", "--eval-only", *tiny_opts(tmp_path, test=[NAME], opts=custom)]
    with pytest.raises(ValueError, match="--eval-only needs trained weights"):
        train_net_main(_args(argv))


def test_flags_after_overrides_and_missing_base_are_explained(tmp_path):
    with pytest.raises(ValueError, match="--eval-only comes after the config overrides.*put flags"):
        load_config("", ["SOLVER.MAX_ITER", "2", "--eval-only"])
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: missing/Base.yaml\n")
    with pytest.raises(FileNotFoundError, match=f"Base.yaml' \\(the _BASE_ of '{child}'\\) does not exist"):
        load_config(str(child))


def test_dataset_mistakes_fail_at_start_up(tmp_path, data):
    custom, _ = data
    with pytest.raises(ValueError, match=f"dataset '{NAME}' has 3 classes .* MODEL.SEM_SEG_HEAD.NUM_CLASSES is 4"):
        Trainer(_cfg(tmp_path, custom, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"]))
    image_dir, label_dir = write_tiny_dataset(str(tmp_path / "val"), num_images=2)
    os.remove(os.path.join(label_dir, "001.png"))
    entries = eval(custom[1]) + eval(custom_dataset_entry("segcls_test_val_safety", image_dir, label_dir))
    cfg = tiny_config(tmp_path, train=[NAME], test=["segcls_test_val_safety"], opts=["DATASETS.CUSTOM", str(entries)])
    with pytest.raises(DatasetNotFoundError, match="001.jpg' has no label file"):
        Trainer(cfg)  # not at the first evaluation after the whole schedule
