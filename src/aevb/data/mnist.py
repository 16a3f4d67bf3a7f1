"""MNIST (LeCun, Cortes & Burges): 60 000 training and 10 000 test digits of 28x28 grey levels.

Read from the four original IDX files in ``<data dir>/mnist/`` (gzip-compressed as published, or
decompressed). The loader uses whatever splits are present: the test split alone serves
``aevb evaluate --data mnist --split test``; training needs ``train-images-idx3-ubyte.gz``.
Intensities are scaled to [0, 1]; how they meet the Bernoulli likelihood is ``--binarize``
(grey, dynamic or static; see :mod:`aevb.data.base`).
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
from .readers import read_idx

FOLDER = "mnist"
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
N_VALID = 10_000
"""``validation=True`` holds out the last 10 000 training images as the split "valid"."""

# sha256 of the published .gz files and of their decompressed content. Three files were hashed
# here from ../shared/data (their md5s match the official ones); for train-images, which is not in
# that folder, the digests are the ones published in pytorch/vision
# (torchvision/prototype/datasets/_builtin/mnist.py) and in public download scripts.
FILES: dict[str, tuple[RemoteFile, RemoteFile, int]] = {
    "train": (
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            9_912_422,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        RemoteFile(
            "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            28_881,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "d53e105ee54ea40749a09fcbcd1e9432",
        ),
        60_000,
    ),
    "test": (
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            1_648_877,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "9fb629c4189551a2d022fa330f9573f3",
        ),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            4_542,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        10_000,
    ),
}


def _read_split(
    folder: Path, split: str, verify: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Images as float32 rows in [0, 1] and labels (or None where a file is absent)."""
    images_rf, labels_rf, n_expected = FILES[split]
    path = local_copy(folder, images_rf)
    if path is None:
        return None, None
    images, sha = read_idx(path, 3, (28, 28))
    if verify:
        check_digest(path, sha, images_rf)
    if verify and len(images) != n_expected:  # unreachable when the digest matched
        raise DataError(f"{path}: {len(images)} images, expected {n_expected}")
    labels = None
    lpath = local_copy(folder, labels_rf)
    if lpath is not None:
        labels, lsha = read_idx(lpath, 1)
        if verify:
            check_digest(lpath, lsha, labels_rf)
        if len(labels) != len(images):
            raise DataError(
                f"{lpath}: {len(labels)} labels for {len(images)} images in {path.name}; "
                "the two files do not belong together"
            )
        if labels.max() > 9:
            raise DataError(f"{lpath}: label {int(labels.max())} is not a digit 0-9")
    x = np.empty((len(images), 784), dtype=np.float32)
    np.multiply(images.reshape(len(images), 784), np.float32(1.0 / 255.0), out=x)
    if float(x.max()) <= 0.0:
        raise DataError(f"{path}: every pixel is 0; the file is damaged")
    return x, (labels.astype(np.int64) if labels is not None else None)


def load_mnist(
    data_dir: str | Path | None = None,
    *,
    splits: Sequence[str] | None = None,
    validation: bool = False,
    verify: bool | None = None,
    progress: bool = True,
    **_: object,
) -> Dataset:
    """MNIST from ``<data dir>/mnist``: the ``splits`` asked for (default train and test).

    Files of the needed splits (default train and test) that are missing are downloaded (see
    :mod:`aevb.data.download`), or the call fails with one line naming them. ``validation``
    moves the last 10 000 training images into a "valid" split. ``verify`` (default on;
    ``AEVB_VERIFY=0`` turns it off) checks each file against its published sha256.
    """
    folder = data_root(data_dir) / FOLDER
    verify = verify_enabled(verify)
    need = set(splits) if splits is not None else {"train", "test"}
    need = {"train" if s == "valid" else s for s in need}
    unknown = need - set(FILES)
    if unknown:
        raise DataError(f"mnist has no split {sorted(unknown)[0]!r}; it has train, valid, test")
    absent = [FILES[s][0] for s in sorted(need) if local_copy(folder, FILES[s][0]) is None]
    fetch_missing(folder, absent, "mnist", mirrors("mnist", MIRRORS), progress)

    # with ``splits`` given only those are read (evaluating on test never reads the training file)
    train, train_labels = _read_split(folder, "train", verify) if "train" in need else (None, None)
    test, test_labels = _read_split(folder, "test", verify) if "test" in need else (None, None)
    missing: dict[str, str] = {}
    labels: dict[str, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}
    for split, x in (("train", train), ("test", test)):
        rf = FILES[split][0]
        if x is None and local_copy(folder, rf) is None:
            missing[split] = (
                f"mnist: {folder / rf.name} is missing, so there is no {split} split; download "
                f"{MIRRORS[0]}{rf.name} ({rf.size:,} bytes, md5 {rf.md5}) into {folder}"
            )
        elif x is None:
            missing[split] = f"mnist: the {split} split was not loaded (splits={sorted(need)})"
    if train is not None and validation:
        if len(train) <= N_VALID:
            raise DataError(
                f"mnist: --validation needs more than {N_VALID} training images, found {len(train)}"
            )
        extra["valid"] = train[-N_VALID:]
        train = train[:-N_VALID]
        if train_labels is not None:
            labels["valid"] = train_labels[-N_VALID:]
            train_labels = train_labels[:-N_VALID]
    elif validation:
        missing["valid"] = missing["train"]
    if train_labels is not None:
        labels["train"] = train_labels
    if test_labels is not None:
        labels["test"] = test_labels
    if train is None and test is None:
        raise DataError(next(iter(missing.values())))
    sizes = f"{len(train) if train is not None else 0} train"
    sizes += f" / {len(extra['valid'])} valid" if "valid" in extra else ""
    sizes += f" / {len(test) if test is not None else 0} test"
    return Dataset(
        name="mnist",
        train=train if train is not None else np.zeros((0, 784), np.float32),
        test=test,
        image_shape=(28, 28),
        default_likelihood="bernoulli",
        default_hidden=500,
        description=f"MNIST, 28x28 grey levels scaled to [0, 1]; {sizes}",
        extra_splits=extra,
        missing=missing,
        labels=labels,
    )
