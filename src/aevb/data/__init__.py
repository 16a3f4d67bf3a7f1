"""Data layer: named datasets, user array files, binarization and validation.

``load_dataset(spec)`` is the single entry point: ``spec`` is a registered name (``digits``) or a
path to a user file. Loaders for more named datasets register themselves in ``DATASETS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from .arrays import USER_SUFFIXES, load_array_file
from .base import BINARIZE_MODES, Dataset, binarize_tensor, check_finite, check_support
from .digits import load_digits

DATASETS: dict[str, Callable[..., Dataset]] = {"digits": lambda **_: load_digits()}


def load_dataset(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    image_shape: tuple[int, int] | None = None,
) -> Dataset:
    """Load a registered dataset by name, or a user .npy/.npz/.csv file by path."""
    if spec in DATASETS:
        ds = DATASETS[spec](data_dir=data_dir)
        if image_shape is not None:
            ds.image_shape = tuple(image_shape)
        return ds
    p = Path(spec)
    if p.suffix.lower() in USER_SUFFIXES or p.exists():
        return load_array_file(p, image_shape)
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
    "load_dataset",
]
