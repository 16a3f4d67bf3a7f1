"""Data layer: named datasets, user array files, binarization and validation.

``load_dataset(spec)`` is the single entry point: ``spec`` is a registered name (``digits``,
``mnist``, ``binarized-mnist``, ``frey``), a path to a user file or a folder of images. Named real
datasets live in a data directory (see :mod:`aevb.data.download`); each loader takes ``data_dir``
and keywords.
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
from .images import load_image_folder
from .mapped import MappedRows, first_rows, load_mapped
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
    image_shape: tuple[int, ...] | None = None,
    splits: Sequence[str] | None = None,
    validation: bool = False,
    progress: bool = True,
    columns: list[str | int] | None = None,
    image_size: tuple[int, int] | None = None,
    memory_map: bool = False,
) -> Dataset:
    """Load a registered dataset by name, a user .npy/.npz/.csv file or a folder of images.

    A folder (DIR/*.png, or DIR/<class>/*.png with labels) is read by
    :func:`aevb.data.images.load_image_folder`; ``image_size`` (H, W) resizes its images.

    ``splits`` names the splits the caller needs (default: all); a named dataset downloads the
    files of those splits if missing and uses its other splits only if present. ``validation``
    holds out MNIST's last 10 000 training images as the split "valid" (10 % of the training rows
    of a user file). ``memory_map`` reads an .npy file's rows from disk as they are needed
    (:mod:`aevb.data.mapped`: data larger than memory). ``columns`` selects columns of a user
    file (CSV header names or indices).
    """
    if spec in DATASETS and columns:
        raise ConfigError(f"--columns selects columns of a user file, not of {spec!r}")
    folder = spec not in DATASETS and Path(spec).is_dir()
    if image_size is not None and not folder:
        raise ConfigError(f"--image-size resizes the images of a folder, not {spec!r}")
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
            ds.image_shape = tuple(image_shape)
        return ds
    p = Path(spec)
    if memory_map:
        if columns:
            raise ConfigError("--columns and --memory-map: select the columns when saving the .npy")
        return load_mapped(p, image_shape, validation=validation)
    if folder:
        if columns:
            raise ConfigError(f"--columns selects columns of a file, not of the images in {p}")
        return load_image_folder(
            p, image_size, image_shape, validation=validation, progress=progress
        )
    if p.suffix.lower() in USER_SUFFIXES or p.exists():
        return load_array_file(p, image_shape, columns=columns, validation=validation)
    raise DataError(
        f"unknown dataset {spec!r}; use one of {sorted(DATASETS)}, a path to a "
        f"{'/'.join(USER_SUFFIXES)} file or a folder of images"
    )


__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "Dataset",
    "MappedRows",
    "first_rows",
    "binarize_tensor",
    "check_finite",
    "check_support",
    "data_root",
    "load_dataset",
]
