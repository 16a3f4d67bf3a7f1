"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits (no download)."""

from __future__ import annotations

import numpy as np

from .base import Dataset

N_TRAIN = 1500
"""Fixed held-out split: the first 1 500 of the 1 797 images train, the last 297 test.

The bundled file is ordered roughly by writer, so the test digits come from writers not seen in
training (a stricter split than a random one).
"""


def load_digits() -> Dataset:
    """1 797 images of 8x8 pixels, intensities 0..16 scaled to [0, 1], with their digits 0-9 as
    labels."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(
        name="digits",
        train=x[:N_TRAIN],
        test=x[N_TRAIN:],
        image_shape=(8, 8),
        default_likelihood="bernoulli",
        default_hidden=200,
        description="scikit-learn digits, 8x8, scaled to [0, 1]; 1500 train / 297 test",
        labels={"train": y[:N_TRAIN], "test": y[N_TRAIN:]},
    )
