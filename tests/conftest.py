"""Shared fixtures. Real-data tests read $AEVB_DATA_DIR (../shared/data in CI), else skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One intra-op thread: the tests' models are small, so OpenMP synchronisation costs more than it
# gives, and on a shared, loaded machine spinning threads slow tiny ops by 10-20x.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of real datasets (mnist/, binarized_mnist/, frey/), or skip the test."""
    d = os.environ.get("AEVB_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("set AEVB_DATA_DIR to the shared data folder (../shared/data) to run this test")
    return Path(d)
