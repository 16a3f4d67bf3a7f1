"""Validating readers for the raw dataset formats: IDX (MNIST) and .amat text (binarized MNIST).

Each reader accepts the file gzip-compressed or not (recognised by its magic bytes, not its name),
reads no more than the header promises (a header claiming 10^12 items is rejected before anything
is allocated), parses with numpy, and returns the sha256 of the decompressed content so callers can
check it against the published digest. Every problem is a DataError naming the file and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08
MAX_BYTES = 1 << 30
"""No reader accepts more than 1 GiB of decompressed content (MNIST's largest file is 47 MB)."""

_REFETCH = "delete it and download it again (or put a good copy there)"


def _open(path: Path) -> tuple[io.BufferedIOBase, bool]:
    """The file as a binary stream (decompressing gzip), and whether it was compressed."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == GZIP_MAGIC:
            return gzip.open(path, "rb"), True  # noqa: SIM115 (the caller closes it)
        return open(path, "rb"), False  # noqa: SIM115
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None


CHUNK = 1 << 20


def _read_upto(stream: io.BufferedIOBase, n: int) -> bytes:
    """At most n bytes, read in chunks: memory grows with what the file holds, never with what
    its header claims (``read(n)`` allocates n bytes before it reads any)."""
    parts, got = [], 0
    while got < n:
        part = stream.read(min(CHUNK, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_exact(stream: io.BufferedIOBase, n: int, path: Path, what: str) -> bytes:
    try:
        data = _read_upto(stream, n)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: damaged or truncated gzip data ({e}); {_REFETCH}") from None
    if len(data) != n:
        raise DataError(
            f"{path}: truncated: the {what} needs {n:,} bytes but only {len(data):,} are there; "
            f"{_REFETCH}"
        )
    return data


def _expect_end(stream: io.BufferedIOBase, path: Path) -> None:
    """Reading to the end makes gzip check its CRC and length; trailing bytes are an error."""
    try:
        extra = stream.read(1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: damaged or truncated gzip data ({e}); {_REFETCH}") from None
    if extra:
        raise DataError(f"{path}: has bytes after the data its header describes; {_REFETCH}")


def read_idx(
    path: str | Path, ndim: int, item_shape: tuple[int, ...] = ()
) -> tuple[np.ndarray, str]:
    """An IDX file of unsigned bytes with ``ndim`` dimensions; returns (array, content sha256).

    ``item_shape`` fixes every dimension after the first (for MNIST images (28, 28)).
    """
    path = Path(path)
    stream, _ = _open(path)
    with stream:
        header = _read_exact(stream, 4, path, "IDX magic number")
        if header[:2] != b"\0\0" or header[2] != IDX_UBYTE or header[3] != ndim:
            raise DataError(
                f"{path}: wrong magic number 0x{header.hex()} (expected 0x0000{IDX_UBYTE:02x}"
                f"{ndim:02x}, an IDX file of unsigned bytes with {ndim} dimensions); "
                f"is this the right file? {_REFETCH}"
            )
        dims_raw = _read_exact(stream, 4 * ndim, path, "IDX header")
        dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
        if item_shape and dims[1:] != tuple(item_shape):
            raise DataError(
                f"{path}: header says items of shape {dims[1:]}, expected {tuple(item_shape)}; "
                f"{_REFETCH}"
            )
        n_bytes = int(np.prod(dims, dtype=object))
        if dims[0] < 1 or n_bytes > MAX_BYTES:
            raise DataError(
                f"{path}: header claims {dims[0]:,} items ({n_bytes:,} bytes), which is not a "
                f"plausible dataset; the header is damaged; {_REFETCH}"
            )
        if not isinstance(stream, gzip.GzipFile):
            size = path.stat().st_size
            if size != 4 + 4 * ndim + n_bytes:
                raise DataError(
                    f"{path}: header promises {n_bytes:,} data bytes but the file has "
                    f"{size - 4 - 4 * ndim:,}; the file is truncated or damaged; {_REFETCH}"
                )
        body = _read_exact(stream, n_bytes, path, "data")
        _expect_end(stream, path)
    digest = hashlib.sha256(header + dims_raw)
    digest.update(body)
    return np.frombuffer(body, dtype=np.uint8).reshape(dims), digest.hexdigest()


def read_amat(path: str | Path, columns: int) -> tuple[np.ndarray, str]:
    """A .amat text file of 0/1 values, one row a line; returns (uint8 array, content sha256).

    Parsed in a few vectorised numpy passes (no Python loop per value): every non-space byte must
    be a lone ``0`` or ``1`` and every non-empty line must hold ``columns`` of them.
    """
    path = Path(path)
    stream, _ = _open(path)
    with stream:
        try:
            raw = _read_upto(stream, MAX_BYTES + 1)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: damaged or truncated gzip data ({e}); {_REFETCH}") from None
    if len(raw) > MAX_BYTES:
        raise DataError(f"{path}: more than {MAX_BYTES:,} bytes of text; not a dataset file")
    sha = hashlib.sha256(raw).hexdigest()
    b = np.frombuffer(raw, dtype=np.uint8)
    fast = _amat_canonical(b, columns)
    if fast is not None:
        return fast, sha
    # The general layout (any whitespace): slower, and it names the first bad line.
    space = (b == 32) | (b == 9) | (b == 13) | (b == 10)
    token = ~space
    bad = token & (b != ord("0")) & (b != ord("1"))
    if bad.any():
        i = int(np.argmax(bad))
        line = int(np.count_nonzero(b[:i] == 10)) + 1
        raise DataError(
            f"{path}: line {line} holds {bytes(b[i : i + 1])!r} where a 0 or 1 was expected; "
            f"not a binarized .amat file? {_REFETCH}"
        )
    if (token[1:] & token[:-1]).any():
        i = int(np.argmax(token[1:] & token[:-1]))
        line = int(np.count_nonzero(b[:i] == 10)) + 1
        raise DataError(f"{path}: line {line} holds a value other than a single 0 or 1; {_REFETCH}")
    line_of = np.searchsorted(np.flatnonzero(b == 10), np.flatnonzero(token))
    counts = np.bincount(line_of)
    counts = counts[counts > 0]
    if len(counts) == 0:
        raise DataError(f"{path}: holds no data rows; {_REFETCH}")
    wrong = np.flatnonzero(counts != columns)
    if len(wrong):
        raise DataError(
            f"{path}: row {int(wrong[0]) + 1} has {int(counts[wrong[0]])} values, expected "
            f"{columns}; the file is truncated or damaged; {_REFETCH}"
        )
    values = (b[token] - ord("0")).reshape(len(counts), columns)
    return values, sha


def _amat_canonical(b: np.ndarray, columns: int) -> np.ndarray | None:
    """The usual layout, "v v ... v\\n" with single spaces, checked in two strided passes."""
    width = 2 * columns
    if len(b) == 0 or len(b) % width:
        return None
    m = b.reshape(-1, width)
    seps = m[:, 1::2]
    if not ((seps[:, :-1] == 32).all() and (seps[:, -1] == 10).all()):
        return None
    values = m[:, 0::2] - np.uint8(ord("0"))  # wraps below "0" to large values
    if (values > 1).any():
        return None
    return np.ascontiguousarray(values)


def read_bytes_checked(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """A whole (small) file, refusing anything over ``max_bytes``."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DataError(f"{path}: {size:,} bytes is far too large for this dataset; {_REFETCH}")
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


__all__ = ["read_amat", "read_bytes_checked", "read_idx"]
