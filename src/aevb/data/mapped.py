"""Data larger than memory: the rows of an .npy file, read from disk as training needs them.

:class:`MappedRows` reads only the rows of each minibatch (one ``pread`` a row, as float32), and
scans a whole split in sequential blocks. Nothing of the file stays in the process, so its
resident memory is bounded whatever the file's size (the kernel's page cache, which it shrinks
under pressure, keeps re-reads fast where memory allows). A memory map would not do: on recent
kernels a fault maps a whole large folio of the page cache (up to 2 MiB) for a row of 784 bytes.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import HELD_OUT_FRACTION
from .base import Dataset

BLOCK_BYTES = 8 << 20
"""Bytes read at a time when a whole split is scanned (support checks, fingerprint, mean)."""
STAT_EVERY = 64
"""Minibatch reads between two checks that the file has not changed under the run."""


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an .npy file, refusing what cannot be read by rows."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable .npy file ({e})") from None
        offset = f.tell()
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise DataError(f"{path}: expected a numeric array, got dtype {dtype}")
    if np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{path}: expected a real array, got dtype {dtype}")
    if fortran and len(shape) > 1:
        raise DataError(
            f"{path}: is stored column-major (Fortran order), so a row is not contiguous; "
            "save it with numpy.save(path, numpy.ascontiguousarray(x))"
        )
    if len(shape) not in (2, 3, 4) or shape[0] < 2:
        raise DataError(
            f"{path}: expected rows (N, D), images (N, H, W) or (N, H, W, C), got {shape}"
        )
    held = path.stat().st_size - offset
    if math.prod(shape) * dtype.itemsize != held:
        raise DataError(
            f"{path}: the header promises {math.prod(shape) * dtype.itemsize:,} bytes of data "
            f"but {held:,} follow it; the file is truncated or damaged"
        )
    return tuple(int(s) for s in shape), dtype, offset


class _RowFile:
    """An open .npy file read by rows, shared by the splits cut from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shape, self.dtype, self.offset = _header(path)
        self.width = math.prod(self.shape[1:])
        self.row_bytes = self.width * self.dtype.itemsize
        self.stat = self._stat()
        self._fd = os.open(path, os.O_RDONLY)
        self._reads = 0
        self._sha256: str | None = None

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_size, st.st_mtime_ns

    def check_unchanged(self) -> None:
        """Refuse to go on reading a file that was rewritten or truncated under the run."""
        if self._stat() != self.stat:
            raise DataError(
                f"{self.path}: the file changed while the run was reading it; restore it and "
                "continue with --resume"
            )

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (indices into the file), as stored: one positioned read a row."""
        self._reads += 1
        if self._reads % STAT_EVERY == 0:
            self.check_unchanged()
        out = np.empty((len(rows), self.width), self.dtype)
        flat = out.reshape(-1).view(np.uint8).data
        b, base = self.row_bytes, self.offset
        for i, r in enumerate(rows.tolist()):
            if os.preadv(self._fd, [flat[i * b : (i + 1) * b]], base + r * b) != b:
                self.check_unchanged()
                raise DataError(f"{self.path}: a row could not be read; is the file complete?")
        return out

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of the whole file, in order, a block of BLOCK_BYTES at a time."""
        self.check_unchanged()
        per = max(1, BLOCK_BYTES // self.row_bytes)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for lo in range(0, self.shape[0], per):
                n = min(per, self.shape[0] - lo)
                block = np.empty((n, self.width), self.dtype)
                if f.readinto(block.reshape(-1).view(np.uint8).data) != n * self.row_bytes:
                    raise DataError(f"{self.path}: ended early; is the file complete?")
                yield lo, block
        self.check_unchanged()

    def sha256(self) -> str:
        """SHA-256 of the file's rows (computed once)."""
        if self._sha256 is None:
            h = hashlib.sha256()
            for _, block in self.blocks():
                h.update(block.data)
            self._sha256 = h.hexdigest()
        return self._sha256


class MappedRows:
    """Rows of a memory-mapped .npy file in a fixed order (a split), read as float32 on demand.

    It stands where a float32 array of shape ``(len(index), D)`` would: ``len``, ``shape``,
    slicing (``rows[:n]``, a shorter split), :meth:`read` of given positions, :meth:`head`,
    :meth:`chunks` and :meth:`mean`.
    """

    def __init__(self, file: _RowFile, index: np.ndarray) -> None:
        self.file = file
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.file.width)

    def __getitem__(self, key: slice) -> MappedRows:
        if not isinstance(key, slice):
            raise TypeError("MappedRows takes slices; use read() for given rows")
        return MappedRows(self.file, self.index[key])

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at the given positions of this split, in that order, as float32 (n, D)."""
        return self.file.take(self.index[positions]).astype(np.float32, copy=False)

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` rows as a float32 array."""
        return self.read(np.arange(min(n, len(self))))

    def chunks(self) -> Iterator[np.ndarray]:
        """The split's rows as stored (uint8 stays uint8: checks of every value are then cheap),
        a block at a time, in the FILE's order; :meth:`read` gives the split's order."""
        mask = self._mask()
        for lo, block in self.file.blocks():
            yield block[mask[lo : lo + len(block)]]

    def _mask(self) -> np.ndarray:
        mask = np.zeros(self.file.shape[0], dtype=bool)
        mask[self.index] = True
        return mask

    def digest(self) -> dict:
        """Shape, dtype and a SHA-256 of this split's rows: the file's hash with the split's
        row indices (the same file and index are the same rows in the same order)."""
        h = hashlib.sha256(self.file.sha256().encode())
        h.update(self.index.data)
        return {"shape": list(self.shape), "dtype": str(self.file.dtype), "sha256": h.hexdigest()}

    def mean(self) -> np.ndarray:
        """Mean row in float64 (the decoder-bias initialisation), one block at a time."""
        total = np.zeros(self.file.width)
        for c in self.chunks():
            total += c.sum(0, dtype=np.float64)
        return total / len(self)


def first_rows(x: np.ndarray | MappedRows, n: int) -> np.ndarray:
    """The first ``n`` rows of a split, loaded or mapped, as an array."""
    return x.head(n) if isinstance(x, MappedRows) else x[:n]


def load_mapped(
    path: str | Path, image_shape: tuple[int, ...] | None = None, validation: bool = False
) -> Dataset:
    """A Dataset whose splits are :class:`MappedRows` of one .npy file.

    The rows are split as a file with one array is in memory (a fixed permutation from seed 0,
    10 % test; ``validation`` holds out 10 % of the training rows with seed 1), so a small file
    gives the same splits, in the same order, mapped or loaded.
    """
    path = Path(path)
    if path.suffix.lower() != ".npy" or not path.is_file():
        raise DataError(
            f"{path}: --memory-map reads an existing .npy file (rows are datapoints); "
            "save the data with numpy.save, or drop --memory-map"
        )
    f = _RowFile(path)
    n = f.shape[0]
    perm = np.random.default_rng(0).permutation(n)
    n_test = max(1, int(round(HELD_OUT_FRACTION * n)))
    train, test = perm[:-n_test], perm[-n_test:]
    extra = {}
    if validation:
        idx = np.random.default_rng(1).permutation(len(train))
        n_valid = max(1, int(round(HELD_OUT_FRACTION * len(train))))
        extra["valid"] = MappedRows(f, train[idx[-n_valid:]])
        train = train[np.sort(idx[:-n_valid])]
    shape = image_shape or (f.shape[1:] if len(f.shape) > 2 else None)
    if shape is not None and math.prod(shape) != f.width:
        raise DataError(f"{path}: image shape {tuple(shape)} does not match {f.width} columns")
    size = path.stat().st_size
    return Dataset(
        name=path.name,
        train=MappedRows(f, train),  # type: ignore[arg-type]
        test=MappedRows(f, test),  # type: ignore[arg-type]
        image_shape=tuple(shape) if shape is not None else None,
        default_likelihood="bernoulli",
        description=f"user data from {path}, memory-mapped ({size / 2**30:.2f} GiB, {f.dtype})",
        extra_splits=extra,  # type: ignore[arg-type]
    )
