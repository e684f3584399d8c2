"""segcls.benchmarks.training_cost (shared by the car and csfrn benchmarks) and its FLOP handles."""
import pytest
import torch

from segcls.benchmarks import csfrn
from segcls.benchmarks.measure import count_flops
from segcls.benchmarks.training_cost import make_batch, training_gflops


class MatMul(torch.nn.Module):
    def forward(self, a, b):
        return a @ b


@pytest.mark.parametrize(
    "a, b, expected",
    [((3, 4), (4, 5), 3 * 4 * 5), ((2, 3, 4), (4, 5), 2 * 3 * 4 * 5), ((7,), (7,), 7), ((7,), (7, 2), 14), ((3, 7), (7,), 21)],
)
def test_matmul_flops_for_every_operand_rank(a, b, expected):
    assert count_flops(MatMul(), (torch.rand(a), torch.rand(b))).total() == expected


def test_training_gflops_is_per_image():
    model = torch.nn.Conv2d(3, 5, 1)

    class Seg(torch.nn.Module):  # the list[dict] training interface: {"loss": ...}
        def __init__(self):
            super().__init__()
            self.conv = model

        def forward(self, items):
            return {"loss": sum(self.conv(x["image"].float()[None]).mean() for x in items)}

    one, two = make_batch(4, 1, 3), make_batch(4, 2, 3)
    assert training_gflops(Seg(), one) == training_gflops(Seg(), two) == 4 * 4 * 3 * 5 / 1e9


def test_csfrn_benchmark_compares_the_two_shipped_models():
    result = csfrn.main(["--quick", "--size", "32", "--repeats", "1", "--warmup", "0"])
    assert result["head"] == "CSFRNHead"
    assert result["params_m"]["csfrn"] > result["params_m"]["baseline"]
    assert result["flops_ratio"] > 1
    assert result["time_ratio"] > 0 and len(result["seconds_per_iter"]["csfrn"]) == 1
