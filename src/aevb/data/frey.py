"""Frey Face (Brendan Frey): 1 965 grey video frames of one face, 28 rows x 20 columns.

Read from ``frey_rawface.mat`` (Sam Roweis' data page) in ``<data dir>/frey/``: the MATLAB
variable ``ff`` is a uint8 array of 560 x 1 965, one column per frame, each column the frame's
pixels row by row (reshaped to 28 x 20 in C order the faces are upright). Intensities are scaled to
[0, 1] and modelled with a Gaussian likelihood (the paper's choice for this continuous data).

Fixed split (no random numbers involved): every tenth frame, indices 9, 19, ..., 1 959, is test
(196 frames) and the other 1 769 train. The frames come from one video, so a test frame has close
neighbours in time among the training frames; the test bound measures fit to held-out frames of
the same sequence, not to new faces.
"""

from __future__ import annotations

import io
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
from .readers import read_bytes_checked

FOLDER = "frey"
MIRRORS = ("https://cs.nyu.edu/~roweis/data/",)
IMAGE_SHAPE = (28, 20)
N_FRAMES = 1965
TEST_EVERY = 10
"""Frame i is a test frame when i % 10 == 9."""

FILE = RemoteFile(
    "frey_rawface.mat",
    "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64",
    1_100_584,
    "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64",
    "5aeb024d42b8a6091f30e5eb18c8a48d",
)
"""sha256 computed from ../shared/data/frey (whose md5 matches the one published with it)."""


def split_indices(n: int = N_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """Train and test frame indices of the fixed split."""
    idx = np.arange(n)
    test = idx % TEST_EVERY == TEST_EVERY - 1
    return idx[~test], idx[test]


def read_frey(path: Path, verify: bool = True) -> np.ndarray:
    """The frames of a frey_rawface.mat as uint8 rows of 560 pixels (row-major 28 x 20)."""
    from scipy.io import loadmat

    raw = read_bytes_checked(path, 64 << 20)
    if verify:
        import hashlib

        check_digest(path, hashlib.sha256(raw).hexdigest(), FILE)
    if not raw.startswith(b"MATLAB 5.0 MAT-file"):
        raise DataError(
            f"{path}: not a MATLAB 5 .mat file (its header is {raw[:19]!r}); "
            "delete it and download frey_rawface.mat again"
        )
    try:
        mat = loadmat(io.BytesIO(raw), variable_names=["ff"])
    except Exception as e:  # scipy's parser fails in many ways on a damaged file (zlib.error, ...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"{path}: cannot read as a .mat file ({msg}); delete it and download it again"
        ) from None
    ff = mat.get("ff")
    if not isinstance(ff, np.ndarray):
        raise DataError(f"{path}: has no variable 'ff'; is this frey_rawface.mat?")
    rows = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if ff.dtype != np.uint8 or ff.ndim != 2 or ff.shape[0] != rows or ff.shape[1] < 2:
        raise DataError(
            f"{path}: 'ff' is {ff.dtype} of shape {ff.shape}, expected uint8 of shape "
            f"({rows}, {N_FRAMES}); is this frey_rawface.mat?"
        )
    if verify and ff.shape[1] != N_FRAMES:
        raise DataError(f"{path}: {ff.shape[1]} frames, expected {N_FRAMES}")
    if int(ff.max()) == int(ff.min()):
        raise DataError(f"{path}: every pixel is {int(ff.max())}; the file is damaged")
    return np.ascontiguousarray(ff.T)


def load_frey(
    data_dir: str | Path | None = None,
    *,
    verify: bool | None = None,
    progress: bool = True,
    **_: object,
) -> Dataset:
    """Frey Face from ``<data dir>/frey`` (downloaded if missing): 1 769 train / 196 test frames."""
    folder = data_root(data_dir) / FOLDER
    verify = verify_enabled(verify)
    if local_copy(folder, FILE) is None:
        fetch_missing(folder, [FILE], "frey", mirrors("frey", MIRRORS), progress)
    path = local_copy(folder, FILE)
    assert path is not None
    if path.name.endswith(".gz"):
        raise DataError(f"{path}: decompress it first (gunzip {path})")
    frames = read_frey(path, verify)
    x = frames.astype(np.float32) / np.float32(255.0)
    tr, te = split_indices(len(x))
    return Dataset(
        name="frey",
        train=x[tr],
        test=x[te],
        image_shape=IMAGE_SHAPE,
        default_likelihood="gaussian",
        default_hidden=200,
        description=(
            f"Frey Face, 28x20 grey levels scaled to [0, 1]; {len(tr)} train / {len(te)} test "
            "(every tenth frame)"
        ),
    )
