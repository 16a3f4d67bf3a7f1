"""Per-point evaluation files and the paired comparison of two models on the same points.

Two models evaluated on the same test points differ by much less noise than their two standard
errors suggest: most of each estimate's spread is between datapoints (some digits are simply
harder), and that part cancels in the per-point difference. ``aevb evaluate --per-point FILE``
keeps the values behind each mean (CSV: each point's index in its split, then ``bound``,
``reconstruction``, ``kl``, and ``iwae_bound``, ``log_likelihood_is``, ``log_likelihood_hmc`` where
they were computed); :func:`compare` gives the mean difference with its paired standard error.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch

from .. import runs
from ..errors import ConfigError, DataError

INDEX = "index"
PREFERRED = ("log_likelihood_is", "log_likelihood_hmc", "iwae_bound", "bound")
"""Which column :func:`compare` takes when none is named: the tightest estimate in both files."""


def check_per_point_path(path: str | Path | None) -> Path | None:
    """``path`` as a Path once it is known to be writable as a file (its folder is made), so a
    long evaluation does not fail at its end on a mistyped name; None stays None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--per-point {path} is a folder; give a file name such as points.csv")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--per-point {path}: cannot make its folder ({e.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"--per-point {path}: its folder is not writable; choose another")
    return path


def write_per_point(path: str | Path, index: np.ndarray, columns: dict[str, torch.Tensor]) -> str:
    """Write ``columns`` (name -> one value per point) beside each point's index in its split, as
    CSV with a header line; written to a temporary file and renamed, so a failed call leaves an
    existing file as it was. Returns the path written."""
    names = [INDEX, *columns]
    values = [index.astype(np.float64)] + [c.double().cpu().numpy() for c in columns.values()]
    buf = io.StringIO()
    table = np.column_stack(values)
    np.savetxt(buf, table, delimiter=",", header=",".join(names), comments="", fmt="%.10g")
    runs.atomic_write_bytes(path, buf.getvalue().encode())
    return str(path)


def read_per_point(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a file :func:`write_per_point` wrote (``index`` as integers)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; write one with aevb evaluate RUNDIR --per-point")
    try:
        with path.open() as f:
            header = f.readline().strip().split(",")
            table = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a per-point file ({e}); write it again") from None
    if header[0] != INDEX or table.shape[1] != len(header) or len(table) == 0:
        raise DataError(
            f"{path}: not a per-point file (expected a header 'index,...' and one row per "
            "point); write it with aevb evaluate RUNDIR --per-point"
        )
    bad = np.flatnonzero(~np.isfinite(table).all(1))
    if len(bad):
        raise DataError(f"{path}: line {bad[0] + 2} holds a value that is not a finite number")
    cols = {name: table[:, i] for i, name in enumerate(header)}
    cols[INDEX] = cols[INDEX].astype(np.int64)
    return cols


def _column(a: dict, b: dict, column: str | None, names: tuple[str, str]) -> str:
    """The column compared: ``column`` if both files hold it, else the first of PREFERRED."""
    both = [c for c in a if c in b and c != INDEX]
    if column is None:
        found = [c for c in PREFERRED if c in both]
        if not found:
            raise DataError(f"{names[0]} and {names[1]} share no value column")
        return found[0]
    if column not in both:
        raise ConfigError(f"unknown --column {column!r}: both files hold {', '.join(both)}")
    return column


def compare(a: str | Path, b: str | Path, column: str | None = None) -> dict:
    """Mean of ``column`` in per-point files ``a`` and ``b`` and their difference a - b with its
    paired standard error (and, beside it, the standard error the two means would have if they
    were independent). The files must hold the same points of the same split, in order: the
    index column says which. ``column`` defaults to log p(x) by importance sampling, else by
    Appendix D, else the IWAE bound, else the bound, whichever both files hold first."""
    ca, cb = read_per_point(a), read_per_point(b)
    if not np.array_equal(ca[INDEX], cb[INDEX]):
        raise DataError(
            f"{a} and {b} hold different points ({len(ca[INDEX])} and {len(cb[INDEX])}); "
            "evaluate both with the same --split, --points and --spread"
        )
    name = _column(ca, cb, column, (str(a), str(b)))
    va, vb = ca[name], cb[name]
    n = len(va)

    def se(v: np.ndarray) -> float:
        return float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0

    d = va - vb
    return {
        "column": name,
        "points": n,
        "a": str(a),
        "b": str(b),
        "a_mean": float(va.mean()),
        "a_se": se(va),
        "b_mean": float(vb.mean()),
        "b_se": se(vb),
        "difference": float(d.mean()),
        "difference_se": se(d),
        "independent_se": math.hypot(se(va), se(vb)),
    }
