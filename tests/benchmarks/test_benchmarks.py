"""segcls.benchmarks: the one entry point (and tools/benchmark.py), the shared measurement helpers,
and the benchmarks' subprocess measurements."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from segcls import benchmarks
from segcls.benchmarks import measure
from helpers import REPO

ROOT = REPO


def test_interleave_alternates_and_marks_warmup():
    rounds = list(measure.interleave(["a", "b"], repeats=3, warmup=1))
    assert rounds == [(0, ["a", "b"], False), (1, ["b", "a"], True), (2, ["a", "b"], True), (3, ["b", "a"], True)]
    assert [order for _, order, _ in measure.interleave("ab", 2, alternate=False)] == [["a", "b"], ["a", "b"]]


def test_interleaved_keeps_the_measured_rounds():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    samples = measure.interleaved(runs, repeats=2, warmup=1, measure=lambda fn: (fn(), len(calls))[1])
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [4, 5], "b": [3, 6]}


def test_timed_and_peak_memory():
    assert measure.timed(lambda: None) >= 0
    meter = measure.PeakMemory()
    seconds, peak = meter.measure(lambda: None)
    assert seconds >= 0 and (peak is None) == (not meter.enabled)


def test_every_benchmark_is_a_module_with_main():
    for name in benchmarks.BENCHMARKS:
        module = importlib.import_module(f"segcls.benchmarks.{name}")
        assert callable(module.main), name


def test_entry_point_lists_and_rejects(capsys):
    assert benchmarks.main([]) is None
    listing = capsys.readouterr().out
    assert all(name in listing for name in benchmarks.BENCHMARKS)
    with pytest.raises(SystemExit, match="unknown benchmark 'nope'"):
        benchmarks.main(["nope"])
    with pytest.raises(SystemExit):
        benchmarks.main(["cac", "--help"])
    assert "python -m segcls.benchmarks cac" in capsys.readouterr().out


def test_tools_wrapper_lists_the_benchmarks():
    """tools/benchmark.py (what `make benchmark` runs) is the package's entry point; `python -m
    segcls.benchmarks` is exercised by the CAA worker below."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in benchmarks.BENCHMARKS), out


def test_caa_worker_runs_in_a_subprocess():
    """heads' CAA section measures each variant through `python -m segcls.benchmarks heads --caa-worker`."""
    args = ["-m", "segcls.benchmarks", "heads", "--caa-worker", "collapsed", "forward"]
    args += ["--caa-shape", "1", "8", "4", "4", "--device", "cpu", "--repeats", "1", "--warmup", "0"]
    out = measure.run_python(args, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["time_s"] > 0 and "peak_MiB" in result


def test_fcn_peak_memory_subprocess():
    from segcls.benchmarks import fcn

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs")
    assert fcn.peak_memory("torchvision", False, 1, 32) > 0


def test_speed_benchmark_quick_runs_every_section():
    """`speed --quick`: every section at tiny sizes; the evaluator section checks identical metrics."""
    from segcls.benchmarks import speed

    results = speed.main(["--quick", "--archs", "fcn"])
    assert "bf16 support" in results["bf16"]
    assert set(results["models"]) == {"fcn forward", "fcn forward+backward"}
    assert all(row["segcls_fast_s"] > 0 and row["torchvision_s"] > 0 for row in results["models"].values())
    assert results["eval"]["identical_metrics"] is True and results["eval"]["speedup"] > 0
    assert results["slide"]["max_abs_diff_batched"] < 1e-4
    assert results["demo"]["fast_it_per_s"] > 0
