"""User arrays: .npy, .npz and .csv files whose rows are datapoints."""

from __future__ import annotations

import difflib
import math
import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import DataError
from .base import Dataset, check_finite

USER_SUFFIXES = (".npy", ".npz", ".csv")
HELD_OUT_FRACTION = 0.1
"""A file with one array is split by a fixed permutation (seed 0): the last 10 % is test."""


IMAGE_CHANNELS = (1, 3)
"""Channels an image array may have: 1 (grey, stored as (H, W)) or 3 (RGB, channel-last)."""


def _channels_ok(shape: tuple[int, ...], source: str) -> tuple[int, ...]:
    """(N, H, W, C) images: C must be 1 (grey; the shape becomes (H, W)) or 3 (RGB)."""
    c = shape[-1]
    if c == 4:
        raise DataError(
            f"{source}: images of shape {shape} have 4 channels (RGBA?); aevb models 1 (grey) or "
            "3 (RGB): drop the alpha channel first, x[..., :3]"
        )
    if c not in IMAGE_CHANNELS:
        hint = "; channels first? use np.moveaxis(x, 1, -1)" if shape[1] in (1, 3) else ""
        raise DataError(
            f"{source}: images (N, H, W, C) need C = 1 (grey) or 3 (RGB), got shape {shape}{hint}"
        )
    return (int(shape[1]), int(shape[2])) if c == 1 else (int(shape[1]), int(shape[2]), 3)


def _as_rows(a: np.ndarray, source: str) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Flatten (N, D), (N, H, W) or (N, H, W, C) data to float32 rows (channel-last: a row is
    the H*W*C values in the array's own order); return the implied image shape."""
    if (
        a.dtype == object
        or np.issubdtype(a.dtype, np.complexfloating)
        or not (np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_))
    ):
        raise DataError(f"{source}: expected a numeric array, got dtype {a.dtype}")
    shape: tuple[int, ...] | None
    if a.ndim == 2:
        shape = None
    elif a.ndim == 3:
        shape = (int(a.shape[1]), int(a.shape[2]))
        a = a.reshape(a.shape[0], -1)
    elif a.ndim == 4:
        shape = _channels_ok(tuple(a.shape), source)
        a = a.reshape(a.shape[0], -1)
    else:
        raise DataError(
            f"{source}: expected a 2-D array (rows are datapoints), 3-D grey images (N, H, W) "
            f"or 4-D images (N, H, W, C), got shape {a.shape}"
        )
    if a.shape[0] < 2 or a.shape[1] < 1:
        raise DataError(f"{source}: needs at least 2 rows and 1 column, got shape {a.shape}")
    x = np.ascontiguousarray(a, dtype=np.float32)
    check_finite(x, source)
    return x, shape


def held_out(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed split of n rows: a permutation from ``seed``, its last 10 % (at least one row)
    held out. Returns (kept, held-out) indices, both in the permutation's order."""
    perm = np.random.default_rng(seed).permutation(n)
    n_out = max(1, int(round(HELD_OUT_FRACTION * n)))
    return perm[:-n_out], perm[-n_out:]


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The numeric rows of a CSV file and its header's column names (None without a header)."""
    text = path.read_text().splitlines()
    rows = [ln for ln in text if ln.strip()]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    first = rows[0].split(",")
    names = None
    try:
        [float(v) for v in first]
        start = 0
    except ValueError:
        start = 1  # a header line
        names = [v.strip().strip('"') for v in first]
    out = []
    width = None
    for i, ln in enumerate(rows[start:], start=start + 1):
        fields = ln.split(",")
        if width is None:
            width = len(fields)
        if len(fields) != width:
            raise DataError(f"{path}: line {i} has {len(fields)} fields, expected {width}")
        try:
            out.append([float(v) for v in fields])
        except ValueError as e:
            raise DataError(f"{path}: line {i} is not numeric ({e})") from None
    if not out:
        raise DataError(f"{path}: no data rows")
    if names is not None and len(names) != width:
        raise DataError(f"{path}: the header has {len(names)} names but the rows {width} fields")
    return np.asarray(out, dtype=np.float64), names


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_npy_header(f: IO[bytes], size: int, source: str) -> None:
    """Read an .npy header and refuse, before anything is allocated, an array whose header
    promises other than the ``size`` bytes the file holds, or more than this machine's memory."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:
        shape, _, dtype = fmt._read_array_header(f, version)  # type: ignore[attr-defined]
    if dtype.hasobject:
        raise DataError(f"{source}: holds Python objects, which aevb never unpickles")
    needed = math.prod(shape) * dtype.itemsize
    held = size - f.tell()
    if needed != held:
        raise DataError(
            f"{source}: the header promises {needed:,} bytes of data but {held:,} follow it; "
            "the file is truncated or damaged"
        )
    if needed > _memory_bytes():
        raise DataError(f"{source}: {needed:,} bytes of data, more than this machine's memory")


def _load_file(path: Path) -> dict[str, np.ndarray]:
    """Arrays in the file by name; a single unnamed array is returned as ``data``.

    Every header is checked against the bytes really there before numpy reads the file, so a
    damaged or hostile header never causes a large allocation.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                _check_npy_header(f, path.stat().st_size, str(path))
            return {"data": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.filename.endswith(".npy"):
                        raise DataError(
                            f"{path}: holds {info.filename!r}, which is not an .npy array; "
                            "write the file with numpy.savez"
                        )
                    with zf.open(info) as f:
                        _check_npy_header(f, info.file_size, f"{path}[{info.filename}]")
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix == ".csv":
            return {"data": _read_csv(path)[0]}
    except DataError:
        raise
    except Exception as e:  # the parsers' errors vary with the damage; all mean a bad file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read as {suffix} ({msg}); is the file complete?") from None
    raise DataError(f"{path}: unknown file type {suffix!r}; use one of {list(USER_SUFFIXES)}")


def select_columns(
    x: np.ndarray, names: list[str] | None, columns: list[str | int], source: str
) -> tuple[np.ndarray, list[str]]:
    """Keep ``columns`` (header names, or 0-based indices) of x; return them with their names."""
    idx = []
    for c in columns:
        if names is not None and str(c) in names:
            idx.append(names.index(str(c)))
            continue
        try:
            i = int(c)
        except (TypeError, ValueError):
            if names is None:
                raise DataError(
                    f"{source}: has no header line, so column {c!r} must be a 0-based index"
                ) from None
            near = difflib.get_close_matches(str(c), names, n=1, cutoff=0.0)
            raise DataError(
                f"{source}: no column {c!r}; did you mean {near[0]!r}? (columns: {names})"
            ) from None
        if not 0 <= i < x.shape[1]:
            raise DataError(f"{source}: column index {i} out of range 0..{x.shape[1] - 1}")
        idx.append(i)
    if len(set(idx)) != len(idx):
        raise DataError(f"{source}: columns {list(columns)} name a column twice")
    picked = [names[i] if names is not None else str(i) for i in idx]
    return np.ascontiguousarray(x[:, idx]), picked


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """A user file's arrays by name (a .csv's one array is "data"), and a .csv's header names."""
    if not path.exists():
        raise DataError(f"{path}: no such file; give a .npy, .npz or .csv file or --data digits")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a .npy, .npz or .csv file")
    if path.suffix.lower() != ".csv":
        return _load_file(path), None
    try:
        data, names = _read_csv(path)
    except (ValueError, OSError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read as .csv ({e}); is the file complete?") from None
    return {"data": data}, names


def held_out_valid(n: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``--validation``'s split of n training rows: (kept rows in order, valid rows), seed 1."""
    kept, out = held_out(n, 1)
    if len(kept) < 1:
        raise DataError(f"{source}: too few training rows ({n}) to hold out valid")
    return np.sort(kept), out


def load_array_file(
    path: str | Path,
    image_shape: tuple[int, ...] | None = None,
    *,
    columns: list[str | int] | None = None,
    validation: bool = False,
) -> Dataset:
    """Load a user file: an .npz may hold ``train``, ``test`` (and ``valid``); one array is split.

    Rows are datapoints; (N, H, W) and (N, H, W, C) images are flattened channel-last (see
    :func:`_as_rows`). Values are checked for finiteness here and against the likelihood later.
    ``columns`` keeps those columns (CSV header names or 0-based indices), in that order.
    ``validation`` holds out 10 % of the training rows (a fixed permutation, seed 1) as the split
    "valid", unless an .npz brings its own ``valid`` array.
    """
    path = Path(path)
    arrays, names = _read_arrays(path)
    return dataset_from_arrays(
        arrays,
        str(path),
        name=path.name,
        description=f"user data from {path}",
        image_shape=image_shape,
        names=names,
        columns=columns,
        validation=validation,
    )


def dataset_from_arrays(
    arrays: dict[str, np.ndarray],
    source: str,
    *,
    name: str,
    description: str,
    image_shape: tuple[int, ...] | None = None,
    names: list[str] | None = None,
    columns: list[str | int] | None = None,
    validation: bool = False,
) -> Dataset:
    """A Dataset from named arrays (``train``/``test``/``valid``, or one array that is split),
    checked as a user file is: numeric, finite, rows of the same width. ``source`` names them in
    errors."""
    path = source
    picked = None
    if columns:
        for k, a in arrays.items():
            if a.ndim != 2:
                raise DataError(f"{path}[{k}]: column selection needs 2-D arrays, got {a.shape}")
            arrays[k], picked = select_columns(a, names, list(columns), f"{path}")
    elif names is not None:
        picked = names
    valid = None
    if "valid" in arrays:
        valid, _ = _as_rows(arrays.pop("valid"), f"{path}[valid]")
    if "train" in arrays:
        train, shape = _as_rows(arrays["train"], f"{path}[train]")
        test = None
        if "test" in arrays:
            test, _ = _as_rows(arrays["test"], f"{path}[test]")
            if test.shape[1] != train.shape[1]:
                raise DataError(
                    f"{path}: test has {test.shape[1]} columns but train has {train.shape[1]}"
                )
    elif len(arrays) == 1:
        x, shape = _as_rows(next(iter(arrays.values())), str(path))
        kept, out = held_out(len(x), 0)
        train, test = x[kept], x[out]
    else:
        raise DataError(
            f"{path}: holds arrays {sorted(arrays)}; name them 'train' (and optionally 'test')"
        )
    if validation and valid is None:
        kept, out = held_out_valid(len(train), str(path))
        valid, train = train[out], train[kept]
    if valid is not None and valid.shape[1] != train.shape[1]:
        raise DataError(f"{path}: valid has {valid.shape[1]} columns, train {train.shape[1]}")
    shape = tuple(image_shape) if image_shape else shape
    if shape is not None and math.prod(shape) != train.shape[1]:
        raise DataError(
            f"{path}: image shape {'x'.join(map(str, shape))} does not match "
            f"{train.shape[1]} columns"
        )
    return Dataset(
        name=name,
        train=train,
        test=test,
        image_shape=shape,
        default_likelihood="bernoulli",
        description=description,
        extra_splits={"valid": valid} if valid is not None else {},
        column_names=picked,
    )
