"""``--precision bf16``: trains on a CUDA GPU, and is one clear error on the CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import error_lines

from aevb import runs
from aevb.cli import main


def test_bf16_on_cpu_is_a_clear_error(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "b"), "--precision", "bf16", "--device", "cpu"]
    assert main([*argv, "--quiet"]) == 2
    (line,) = error_lines(capsys)
    assert "bf16" in line and "cuda" in line.lower()
    assert not (tmp_path / "b" / runs.CONFIG).exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_trains_on_cuda(small_run):
    run = small_run(budget=5000, precision="bf16", device="cuda")
    assert run.metrics[-1]["test_bound"] > run.metrics[0]["test_bound"] + 3
    assert isinstance(run.metrics[-1]["test_bound"], float)
