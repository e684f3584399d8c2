"""segcls.benchmarks.cac: the two variants share their weights, and the peak-memory meter measures."""
import torch

from segcls.benchmarks.cac import build_pair, model_opts
from segcls.benchmarks.measure import PeakMemory


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
