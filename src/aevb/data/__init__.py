"""Data layer: named datasets, user array files, binarization and validation.

``load_dataset(spec)`` is the single entry point: ``spec`` is a registered name (``digits``,
``mnist``, ``binarized-mnist``, ``frey``) or a path to a user file. Named real datasets live in a
data directory (see :mod:`aevb.data.download`); each loader takes ``data_dir`` and keywords.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError, DataError
from .arrays import USER_SUFFIXES, load_array_file
from .base import BINARIZE_MODES, Dataset, binarize_tensor, check_finite, check_support
from .binarized_mnist import load_binarized_mnist
from .digits import load_digits
from .download import data_root
from .frey import load_frey
from .mnist import load_mnist

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": lambda **_: load_digits(),
    "mnist": load_mnist,
    "binarized-mnist": load_binarized_mnist,
    "frey": load_frey,
}
VALIDATION_DATASETS = ("mnist", "binarized-mnist")
"""Datasets with a validation split: MNIST's last 10 000 training images on request
(``validation=True``); binarized MNIST's own valid split always."""


def load_dataset(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    image_shape: tuple[int, int] | None = None,
    splits: Sequence[str] | None = None,
    validation: bool = False,
    progress: bool = True,
    columns: list[str | int] | None = None,
) -> Dataset:
    """Load a registered dataset by name, or a user .npy/.npz/.csv file by path.

    ``splits`` names the splits the caller needs (default: all); a named dataset downloads the
    files of those splits if missing and uses its other splits only if present. ``validation``
    holds out MNIST's last 10 000 training images as the split "valid" (10 % of the training rows
    of a user file). ``columns`` selects columns of a user file (CSV header names or indices).
    """
    if spec in DATASETS and columns:
        raise ConfigError(f"--columns selects columns of a user file, not of {spec!r}")
    if validation and spec in DATASETS and spec not in VALIDATION_DATASETS:
        raise ConfigError(
            f"--validation is defined for {list(VALIDATION_DATASETS)} and user files, not "
            f"{spec!r}; hold out data yourself with an .npz of train, valid and test arrays"
        )
    if spec in DATASETS:
        ds = DATASETS[spec](
            data_dir=data_dir, splits=splits, validation=validation, progress=progress
        )
        if image_shape is not None:
            ds.image_shape = tuple(image_shape)  # type: ignore[assignment]
        return ds
    p = Path(spec)
    if p.suffix.lower() in USER_SUFFIXES or p.exists():
        return load_array_file(p, image_shape, columns=columns, validation=validation)
    raise DataError(
        f"unknown dataset {spec!r}; use one of {sorted(DATASETS)} or a path to a "
        f"{'/'.join(USER_SUFFIXES)} file"
    )


__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "Dataset",
    "binarize_tensor",
    "check_finite",
    "check_support",
    "data_root",
    "load_dataset",
]
