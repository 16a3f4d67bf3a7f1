"""Deterministic seeds for a run's random streams, from (seed, part, ...) alone."""

from __future__ import annotations

import numpy as np


def split_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed for the stream (seed, part...): epochs, evaluations, chains, ...

    Streams: 0 initialisation, 1 training noise, 2 dynamic binarization, 3 static binarization,
    4 minibatch order, 5 evaluation binarization, 6 evaluation noise, 7 tools' binarization,
    8 MCEM chains (and, from the seed of `aevb evaluate`, its log p(x) estimators), 9 the IWAE
    bound of `aevb evaluate`, 10 the gradient draws of `aevb gradients` (from its own seed).
    """
    ss = np.random.SeedSequence([seed, *parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)
