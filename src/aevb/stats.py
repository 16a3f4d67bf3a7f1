"""Small statistics shared by training, evaluation and the marginal-likelihood estimators."""

from __future__ import annotations

import math

from torch import Tensor


def standard_error(values: Tensor) -> float:
    """Standard error of the mean of per-datapoint ``values`` (1-D): std / sqrt(n).

    The sample standard deviation (Bessel-corrected, torch's default); 0.0 for fewer than two
    values, where it is undefined.
    """
    n = values.numel()
    return float(values.std() / math.sqrt(n)) if n > 1 else 0.0
