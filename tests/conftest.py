"""Shared fixtures; the helpers themselves live in tests/helpers.py (importable as `helpers`)."""
import pytest
import torch

import segcls  # noqa: F401  (registers everything)
from helpers import register_tiny_dataset

# One intra-op thread: the tiny models gain nothing from more, and CI machines have 2 cores.
torch.set_num_threads(1)


@pytest.fixture
def tiny_dataset(tmp_path):
    """Name of a registered 4-image, 3-class dataset in tmp_path."""
    return register_tiny_dataset("segcls_test_tiny", str(tmp_path / "tiny"))
