"""aevb.stats: the standard error of a mean over datapoints."""

from __future__ import annotations

import math

import numpy as np
import torch

from aevb.stats import standard_error


def test_standard_error_is_the_sample_std_over_root_n():
    v = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    want = float(np.std(v.numpy(), ddof=1)) / math.sqrt(4)
    assert math.isclose(standard_error(v), want, rel_tol=1e-15)
    assert isinstance(standard_error(v), float)


def test_standard_error_of_fewer_than_two_values_is_zero():
    assert standard_error(torch.tensor([3.0])) == 0.0
    assert standard_error(torch.tensor([])) == 0.0
