"""The dataset object every loader returns, binarization, and validation against a likelihood."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

BINARIZE_MODES = ("grey", "dynamic", "static", "none")
"""How [0, 1] data meets a Bernoulli likelihood:

- ``grey``: intensities used as Bernoulli targets (the convention of the paper's era);
- ``dynamic``: a fresh Bernoulli draw of every training image each epoch (the modern benchmark);
- ``static``: one fixed Bernoulli draw from a seed, used for every epoch;
- ``none``: no binarization; the data must already be 0/1.
Evaluation of a dynamically binarized model uses one fixed draw per split so numbers are repeatable.
"""


@dataclass
class Dataset:
    """Train and test arrays of shape (N, D) in float32, with what is known about them."""

    name: str
    train: np.ndarray
    test: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = None
    """(H, W) of grey images, (H, W, 3) of colour ones (rows are flattened channel-last)."""
    default_likelihood: str = "bernoulli"
    default_hidden: int = 500
    description: str = ""
    extra_splits: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    """Splits whose files are absent, each with the one-line message saying how to get them."""
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    """Class labels per split where the dataset has them (not used for training)."""
    label_names: list[str] | None = None
    """The class of each label code, where codes stand for names (an image folder's subfolders)."""
    column_names: list[str] | None = None
    """Names of the columns (a CSV header, or the 0-based indices selected) of tabular data."""
    fingerprint: dict = field(default_factory=dict)
    """Shape, dtype and SHA-256 of each split as loaded (:func:`aevb.data.memory.fingerprint`),
    recorded by a run so that --resume and evaluate can tell whether they got the same data."""

    @property
    def x_dim(self) -> int:
        return int(self.train.shape[1])

    def split(self, name: str) -> np.ndarray:
        """The named split ("train", "test", or a loader-specific one such as "valid")."""
        if name in self.missing:
            raise DataError(self.missing[name])
        if name == "train":
            return self.train
        if name == "test":
            if self.test is None:
                raise DataError(f"dataset {self.name!r} has no test split")
            return self.test
        if name in self.extra_splits:
            return self.extra_splits[name]
        known = ["train"] + (["test"] if self.test is not None else []) + sorted(self.extra_splits)
        raise DataError(f"dataset {self.name!r} has no split {name!r}; it has {known}")


def check_finite(x: np.ndarray, source: str) -> None:
    """Reject NaN or infinite values, naming the first offending row and column."""
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"{source}: row {r}, column {c} is {x[r, c]}; remove or impute non-finite values"
        )


def check_support(x: np.ndarray, likelihood: str, binarize: str, source: str) -> None:
    """Check that data lies in the likelihood's support (after the chosen binarization).

    Memory-mapped rows (:class:`~aevb.data.mapped.MappedRows`) are checked a chunk at a time.
    """
    if hasattr(x, "chunks"):
        for c in x.chunks():
            check_support(c, likelihood, binarize, source)
        return
    check_finite(x, source)
    lo, hi = float(x.min()), float(x.max())
    if likelihood == "bernoulli":
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{source}: values span [{lo:g}, {hi:g}] but a Bernoulli likelihood needs [0, 1]; "
                "rescale the data (for example divide by 255), or use --standardize for "
                "real-valued columns"
            )
        if binarize == "none" and not np.isin(x, (0.0, 1.0)).all():
            v = x[(x != 0.0) & (x != 1.0)][0]
            raise DataError(
                f"{source}: value {v:g} is not binary and --binarize none was given; "
                "use --binarize grey, dynamic or static"
            )
    elif likelihood == "gaussian" and (lo < 0.0 or hi > 1.0):
        raise DataError(
            f"{source}: values span [{lo:g}, {hi:g}] but the Gaussian decoder's mean is "
            "sigmoid-constrained to (0, 1); rescale the data to [0, 1], or use --standardize "
            "(real-valued columns, --likelihood gaussian-linear)"
        )
    if binarize not in BINARIZE_MODES:
        raise DataError(f"unknown binarization {binarize!r}; choose one of {list(BINARIZE_MODES)}")


def binarize_tensor(x: Tensor, mode: str, seed: int) -> Tensor:
    """One binarization of x: identity for grey/none, a Bernoulli draw from ``seed`` otherwise."""
    if mode in ("grey", "none"):
        return x
    g = torch.Generator(device=x.device).manual_seed(int(seed))
    return torch.bernoulli(x, generator=g)
