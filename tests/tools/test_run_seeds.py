"""tools/run_seeds.py aggregates per-seed results (finished runs are reused), keyed by the whole
config path and options."""
import json
import os

import pytest
from helpers import load_script

run_seeds = load_script("tools/run_seeds.py")


def _write_run(folder, miou, finished=True):
    (folder / "eval").mkdir(parents=True)
    metrics = {"ds": {"sem_seg": {"mIoU": miou, "mACC": 2 * miou, "pACC": 90.0}}}
    (folder / run_seeds.METRICS_FILE).write_text(json.dumps(metrics))
    if finished:
        (folder / "model_final.pth").write_bytes(b"")


@pytest.fixture
def fake_train(monkeypatch):
    """Replaces the train_net.py subprocess: records the command, writes a finished run whose
    mIoU is 10 * (number of runs so far)."""
    commands = []

    def fake_run(cmd, check):
        commands.append(cmd)
        out = cmd[cmd.index("OUTPUT_DIR") + 1]
        os.makedirs(os.path.join(out, "eval"), exist_ok=True)
        metrics = {"ds": {"sem_seg": {"mIoU": 10.0 * len(commands), "mACC": 0.0, "pACC": 0.0}}}
        with open(os.path.join(out, run_seeds.METRICS_FILE), "w") as f:
            json.dump(metrics, f)
        open(os.path.join(out, "model_final.pth"), "wb").close()

    monkeypatch.setattr(run_seeds.subprocess, "run", fake_run)
    return commands


def test_summary_of_existing_runs(tmp_path):
    # Runs live under <config stem>-<hash of path and options> since issue 17 (was <config stem>).
    key = run_seeds.run_key("cfg.yaml", [])
    for seed, miou in [(0, 50.0), (1, 54.0), (2, 52.0)]:
        _write_run(tmp_path / key / f"seed{seed}", miou)
    run_seeds.main(["cfg.yaml", "--seeds", "0", "1", "2", "--output", str(tmp_path)])
    written = json.loads((tmp_path / "summary.json").read_text())
    summary = written["results"][key]["ds"]
    assert written["configs"] == {key: "cfg.yaml"}
    assert summary["mIoU"]["mean"] == pytest.approx(52.0)
    assert summary["mIoU"]["std"] == pytest.approx(2.0)
    assert (summary["mIoU"]["min"], summary["mIoU"]["max"]) == (50.0, 54.0)
    assert summary["mACC"]["mean"] == pytest.approx(104.0) and summary["pACC"]["std"] == 0.0


def test_same_file_name_and_other_options_do_not_share_results(tmp_path, fake_train):
    configs = ["a/cfg.yaml", "b/cfg.yaml"]
    run_seeds.main([*configs, "--seeds", "0", "--output", str(tmp_path)])
    assert len(fake_train) == 2  # the second cfg.yaml is trained too
    results = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert sorted(r["ds"]["mIoU"]["mean"] for r in results.values()) == [10.0, 20.0]
    run_seeds.main([configs[0], "--seeds", "0", "--output", str(tmp_path), "--opts", "SOLVER.MAX_ITER", "5"])
    assert len(fake_train) == 3 and fake_train[-1][-2:] == ["SOLVER.MAX_ITER", "5"]
    run_seeds.main([*configs, "--seeds", "0", "--output", str(tmp_path)])
    assert len(fake_train) == 3  # finished runs are reused


def test_crashed_run_is_resumed_and_seed_in_opts_is_refused(tmp_path, fake_train):
    _write_run(tmp_path / run_seeds.run_key("cfg.yaml", []) / "seed0", 99.0, finished=False)
    run_seeds.main(["cfg.yaml", "--seeds", "0", "--output", str(tmp_path)])
    assert len(fake_train) == 1 and "--resume" in fake_train[0]
    result = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert next(iter(result.values()))["ds"]["mIoU"]["mean"] == 10.0
    with pytest.raises(SystemExit):
        run_seeds.main(["cfg.yaml", "--output", str(tmp_path), "--opts", "SEED", "3"])
