"""Binarized MNIST of Larochelle & Murray (2011): one fixed 0/1 draw, 50 000 / 10 000 / 10 000.

The "static" benchmark of the likelihood literature. Read from ``.amat`` text files in
``<data dir>/binarized_mnist/``, gzip-compressed (as in ../shared/data) or not (as the Toronto
mirror serves them); both forms are checked against the sha256 of the uncompressed text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Dataset
from .download import (
    RemoteFile,
    check_digest,
    data_root,
    fetch_missing,
    local_copy,
    mirrors,
    verify_enabled,
)
from .readers import read_amat

FOLDER = "binarized_mnist"
MIRRORS = ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",)
SPLITS = ("train", "valid", "test")

# The mirror serves uncompressed .amat text: ``sha256`` and ``content_sha256`` are both the digest
# of that text, computed here from the decompressed ../shared/data copies (whose gzip md5s are
# listed in that folder's README).
FILES: dict[str, tuple[RemoteFile, int]] = {
    "train": (
        RemoteFile(
            "binarized_mnist_train.amat",
            "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
            78_400_000,
            "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        ),
        50_000,
    ),
    "valid": (
        RemoteFile(
            "binarized_mnist_valid.amat",
            "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
            15_680_000,
            "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        ),
        10_000,
    ),
    "test": (
        RemoteFile(
            "binarized_mnist_test.amat",
            "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
            15_680_000,
            "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
        ),
        10_000,
    ),
}
"""Published gzip md5s (../shared/data/README.md): train 15c017f6..., valid 02ac79a0..., test
d07bd5de...; sha256 of our .gz copies: train c4689229..., valid bef93322..., test 7bd1fe92...."""


def _read(folder: Path, split: str, verify: bool) -> np.ndarray | None:
    rf, n_expected = FILES[split]
    path = local_copy(folder, rf)
    if path is None:
        return None
    values, sha = read_amat(path, 784)
    if verify:
        check_digest(path, sha, rf)
        if len(values) != n_expected:  # unreachable when the digest matched
            raise DataError(f"{path}: {len(values)} rows, expected {n_expected}")
    return values.astype(np.float32)


def load_binarized_mnist(
    data_dir: str | Path | None = None,
    *,
    splits: Sequence[str] | None = None,
    verify: bool | None = None,
    progress: bool = True,
    **_: object,
) -> Dataset:
    """Binarized MNIST from ``<data dir>/binarized_mnist``: train, test and the "valid" split.

    Files of needed ``splits`` (default all three) are downloaded if missing; with ``splits``
    given, only those are read. The data are already 0/1, so every ``--binarize`` mode leaves
    them unchanged.
    """
    folder = data_root(data_dir) / FOLDER
    verify = verify_enabled(verify)
    need = set(splits) if splits is not None else set(SPLITS)
    unknown = need - set(SPLITS)
    if unknown:
        raise DataError(
            f"binarized-mnist has no split {sorted(unknown)[0]!r}; it has {list(SPLITS)}"
        )
    absent = [FILES[s][0] for s in SPLITS if s in need and local_copy(folder, FILES[s][0]) is None]
    fetch_missing(folder, absent, "binarized-mnist", mirrors("binarized-mnist", MIRRORS), progress)
    # with ``splits`` given only those are read
    arrays = {s: _read(folder, s, verify) if s in need else None for s in SPLITS}
    missing = {
        s: (
            f"binarized-mnist: {folder / FILES[s][0].name} (or .gz) is missing, so there is no "
            f"{s} split; download {MIRRORS[0]}{FILES[s][0].name} into {folder}"
            if local_copy(folder, FILES[s][0]) is None
            else f"binarized-mnist: the {s} split was not loaded (splits={sorted(need)})"
        )
        for s, x in arrays.items()
        if x is None
    }
    if len(missing) == len(SPLITS):
        raise DataError(missing["train"])
    train = arrays["train"]
    return Dataset(
        name="binarized-mnist",
        train=train if train is not None else np.zeros((0, 784), np.float32),
        test=arrays["test"],
        image_shape=(28, 28),
        default_likelihood="bernoulli",
        default_hidden=500,
        description=(
            "binarized MNIST (Larochelle & Murray 2011), fixed 0/1 draw; "
            + " / ".join(f"{len(x)} {s}" for s, x in arrays.items() if x is not None)
        ),
        extra_splits={"valid": arrays["valid"]} if arrays["valid"] is not None else {},
        missing=missing,
    )
