"""tools/run_seeds.py aggregates per-seed results (runs that already have metrics are reused)."""
import importlib.util
import json
import os

import pytest
from helpers import REPO

spec = importlib.util.spec_from_file_location("run_seeds", os.path.join(REPO, "tools", "run_seeds.py"))
run_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_seeds)


def test_summary_of_existing_runs(tmp_path):
    for seed, miou in [(0, 50.0), (1, 54.0), (2, 52.0)]:
        out = tmp_path / "cfg" / f"seed{seed}" / "eval"
        out.mkdir(parents=True)
        metrics = {"ds": {"sem_seg": {"mIoU": miou, "mACC": 2 * miou, "pACC": 90.0}}}
        (out / "results.json").write_text(json.dumps(metrics))
    run_seeds.main(["cfg.yaml", "--seeds", "0", "1", "2", "--output", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())["results"]["cfg"]["ds"]
    assert summary["mIoU"]["mean"] == pytest.approx(52.0)
    assert summary["mIoU"]["std"] == pytest.approx(2.0)
    assert (summary["mIoU"]["min"], summary["mIoU"]["max"]) == (50.0, 54.0)
    assert summary["mACC"]["mean"] == pytest.approx(104.0) and summary["pACC"]["std"] == 0.0
