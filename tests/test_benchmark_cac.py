"""tools/benchmark_cac.py: the two variants share their weights, and the peak-memory meter measures."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from benchmark_cac import PeakMemory, build_pair, model_opts  # noqa: E402


def test_variants_differ_only_by_the_projectors():
    _, opts = model_opts(depth=18)
    base, cac = build_pair(opts + ["MODEL.DECODE_HEAD.CHANNELS", "64"])
    cac_state = cac.state_dict()
    assert all(torch.equal(v, cac_state[k]) for k, v in base.state_dict().items())
    extra = set(cac_state) - set(base.state_dict())
    assert extra and all(k.startswith("classifier.theta_") for k in extra)


def test_peak_memory_meter():
    meter = PeakMemory()
    if not meter.enabled:  # not Linux/glibc: the script reports memory as unavailable
        assert meter.measure(lambda: None)[1] is None
        return
    _, peak = meter.measure(lambda: torch.ones(64 * 2**20 // 4).sum())
    assert 60 * 2**20 < peak < 72 * 2**20, peak
