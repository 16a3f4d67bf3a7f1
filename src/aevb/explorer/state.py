"""What ``aevb explore`` serves: a run's model and the encoder means of a split, in 2-D.

:class:`Explorer` loads a run read-only (its manifest verified first), encodes the split once,
and answers each action of the page with a JSON-ready dict: the points of the map under a
projection, one datapoint with its reconstruction, a decoded latent point, a decoded path between
two points, a decoded grid. Every request parameter is checked here; a bad one raises
:class:`BadRequest`, which the server turns into a 400 with a JSON message.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import runs
from ..api.card import info as run_card
from ..api.card import render_info
from ..api.common import _folder_size, _run_data, _unstandardize
from ..api.tools import _path_methods, _slerp
from ..data import DATASETS, load_dataset
from ..data.memory import IN_MEMORY, is_in_memory
from ..errors import ConfigError, DataError
from ..model import VAE

MAX_ABS = 1e3
"""Largest latent or map coordinate a request may give (in absolute value)."""
MAX_GRID = 24
"""Largest side of a decoded grid (MAX_GRID**2 decodes in one request)."""
MAX_GRID_VALUES = 1_000_000
"""Largest number of values a decoded grid may return (side**2 * the data's width)."""
MAX_STEPS = 64
"""Most points of a decoded interpolation path in one request."""
DEFAULT_MAX_POINTS = 10_000
"""Points on the map by default: larger splits are thinned to this many, evenly spaced."""
LABELLED = ("digits", "mnist")
"""Named datasets whose splits carry class labels (image folders with class subfolders too)."""
CURVE_KEYS = ("bound", "reconstruction", "kl", "iwae_bound", "log_likelihood", "active_units")


class BadRequest(ValueError):
    """A request the explorer cannot answer as asked: a 400 with this one-line message."""


@dataclass(frozen=True)
class Projection:
    """A linear map of latent points to the page's 2-D plane: ``u = matrix @ z - offset``.

    Its pre-image of a map point holds the coordinates the map does not show at ``mean`` (the
    split's mean latent point): ``z = mean + matrix.T @ (u + offset - matrix @ mean)``, so that
    projecting the pre-image gives the map point back (the rows of ``matrix`` are orthonormal).
    """

    name: str
    matrix: np.ndarray
    offset: np.ndarray
    mean: np.ndarray
    axes: tuple[str, str]
    explained: tuple[float, float] | None = None

    def to_map(self, z: np.ndarray) -> np.ndarray:
        """(N, J) latent points -> (N, 2) map points."""
        return z @ self.matrix.T - self.offset

    def preimage(self, u: np.ndarray) -> np.ndarray:
        """(N, 2) map points -> (N, J) latent points (the hidden coordinates at the mean)."""
        return self.mean + (u + self.offset - self.matrix @ self.mean) @ self.matrix

    def describe(self) -> dict:
        """The projection as the page (and a test) needs it: JSON-ready."""
        return {
            "name": self.name,
            "axes": list(self.axes),
            "matrix": self.matrix.tolist(),
            "offset": self.offset.tolist(),
            "mean": self.mean.tolist(),
            "explained": list(self.explained) if self.explained else None,
        }


def pca_projection(z: np.ndarray) -> Projection:
    """The first two principal components of the latent points, centred on their mean."""
    z64 = z.astype(np.float64)
    mean = z64.mean(0)
    _, s, vt = np.linalg.svd(z64 - mean, full_matrices=False)
    if vt.shape[0] < 2:
        raise DataError("a PCA map needs at least two latent dimensions and two points")
    v = vt[:2].copy()
    v *= np.where(v[np.arange(2), np.abs(v).argmax(1)] < 0, -1.0, 1.0)[:, None]  # fixed signs
    var = s**2
    total = float(var.sum()) or 1.0
    return Projection("pca", v, v @ mean, mean, ("PC1", "PC2"), (var[0] / total, var[1] / total))


def axes_projection(z: np.ndarray, i: int, j: int) -> Projection:
    """Latent coordinates i and j (0-based) as they are; the others held at their mean."""
    n_z = z.shape[1]
    m = np.zeros((2, n_z))
    m[0, i] = 1.0
    if j < n_z:
        m[1, j] = 1.0
    name = "latent" if n_z <= 2 else f"z{i + 1},z{j + 1}"
    second = f"z{j + 1}" if j < n_z else "(unused)"
    return Projection(name, m, np.zeros(2), z.astype(np.float64).mean(0), (f"z{i + 1}", second))


def parse_floats(text: str, name: str, length: int | None = None) -> np.ndarray:
    """'1.5,-2' as a float array: finite, at most MAX_ABS in size, of ``length`` values."""
    parts = text.split(",") if text.strip() else []
    try:
        values = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        raise BadRequest(f"{name}: expected comma-separated numbers, got {text[:60]!r}") from None
    if length is not None and len(values) != length:
        raise BadRequest(f"{name}: expected {length} numbers, got {len(values)}")
    if not np.isfinite(values).all():
        raise BadRequest(f"{name}: NaN or infinite values are not latent points")
    if len(values) and np.abs(values).max() > MAX_ABS:
        raise BadRequest(f"{name}: values must lie within ±{MAX_ABS:g}")
    return values


class Explorer:
    """A run's model and one split's encoder means, answering the explorer page's requests.

    ``data``/``split``/``data_dir`` choose the datapoints as :func:`aevb.encode` does (default:
    the run's own data, test split); ``labels`` colours the map where the data has none of its
    own; a split larger than ``max_points`` is thinned to that many points, evenly spaced.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        data: Any = None,
        split: str = "test",
        data_dir: str | Path | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
        labels: Any = None,
    ) -> None:
        if max_points < 2:
            raise ConfigError(f"max_points must be at least 2, got {max_points}")
        self.run_dir = Path(run_dir)
        runs.verify_run(self.run_dir)  # every file against the manifest, before anything is used
        model, rows, mode, cfg = _run_data(self.run_dir, data, split, data_dir, None)
        self.model: VAE = model
        self.cfg = cfg
        self.split = split
        self.binarize = mode
        self.total = len(rows)
        self.index = _thin(len(rows), max_points)
        self.x = torch.from_numpy(np.ascontiguousarray(rows[self.index], dtype=np.float32))
        self._lock = threading.Lock()  # one model call at a time: the server's threads share it
        self.z = self._encode(self.x)
        self.labels, self.label_names = self._labels(data, labels, data_dir)
        self.data_name = str(cfg["data"]["spec"]) if data is None else _data_name(data)
        self.range = self._display_range()
        self._projections: dict[str, Projection] = {}
        self.default_projection = "latent" if self.latent_dim <= 2 else "pca"
        self.projection(self.default_projection)
        self._info = self._describe()

    # ------------------------------------------------------------------ set-up
    @property
    def latent_dim(self) -> int:
        return int(self.model.config.latent_dim)

    def _encode(self, x: torch.Tensor) -> np.ndarray:
        """The posterior centers (means of a Gaussian posterior) of the rows, in chunks."""
        out = []
        with self._lock, torch.inference_mode():
            for chunk in torch.split(x, 2048):
                out.append(self.model.encoder.posterior(chunk).center().double().cpu().numpy())
        return np.concatenate(out)

    def _labels(
        self, data: Any, given: Any, data_dir: str | Path | None
    ) -> tuple[np.ndarray | None, list[str] | None]:
        """Class codes of the shown points: given, else the dataset's own where it has any."""
        if given is not None:
            codes = np.asarray(given).reshape(-1)
            if len(codes) != self.total:
                raise DataError(f"labels: {len(codes)} given for {self.total} datapoints")
            return _codes(codes[self.index])
        spec = self.cfg["data"]["spec"] if data is None else data
        if is_in_memory(spec) or spec == IN_MEMORY or not isinstance(spec, str | Path):
            return None, None
        spec = str(spec)
        if spec not in LABELLED and (spec in DATASETS or not Path(spec).is_dir()):
            return None, None
        run_data = self.cfg["data"]
        same = spec == run_data["spec"]
        ds = load_dataset(  # as the split was loaded (api.common._run_data), for its labels
            spec,
            data_dir=data_dir
            if data_dir is not None
            else (run_data.get("data_dir") if data is None else None),
            splits=(self.split,),
            validation=(spec == "mnist" or spec not in DATASETS)
            and (self.split == "valid" or (same and bool(run_data.get("validation")))),
            progress=False,
            image_size=_folder_size(spec, self.model),
        )
        found = ds.labels.get(self.split)
        if found is None or len(found) != self.total:
            return None, None
        names = ds.label_names
        return np.asarray(found)[self.index].astype(np.int64), list(names) if names else None

    def _display_range(self) -> tuple[float, float]:
        """The data-unit values drawn black and white: [0, 1] for sigmoid means, else the data's."""
        standardized = bool(self.cfg["data"].get("standardize"))
        if self.model.config.likelihood in ("bernoulli", "gaussian") and not standardized:
            return 0.0, 1.0
        x = self._data_units(self.x)
        lo, hi = float(x.min()), float(x.max())
        return (lo, hi) if hi > lo else (lo, lo + 1.0)

    # ------------------------------------------------------------------ helpers
    def _data_units(self, x: torch.Tensor) -> np.ndarray:
        """Model-space rows -> data units (--standardize undone), finite float64."""
        return np.nan_to_num(_unstandardize(x, self.cfg).double().cpu().numpy())

    def _decode(self, z: np.ndarray) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            return self.model.decode_mean(torch.from_numpy(z.astype(np.float32)))

    def payloads(self, x: torch.Tensor) -> list[dict]:
        """Rows as the page draws them: 8-bit pixels of images, rounded values of table rows."""
        values = self._data_units(x)
        if self.model.config.image_shape is None:
            return [{"values": [float(f"{v:.6g}") for v in row]} for row in values]
        lo, hi = self.range
        pixels = np.rint(np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
        return [{"pixels": row.tolist()} for row in pixels]

    def projection(self, name: str | None) -> Projection:
        """The projection called ``name``: latent (N_z <= 2), pca, or 'zI,zJ' (1-based axes)."""
        name = name or self.default_projection
        if name in self._projections:
            return self._projections[name]
        if name == "latent" and self.latent_dim <= 2:
            p = axes_projection(self.z, 0, 1)
        elif name == "pca" and self.latent_dim > 2:
            p = pca_projection(self.z)
        else:
            i, j = _axes(name, self.latent_dim, self.default_projection)
            p = axes_projection(self.z, i, j)
        self._projections[p.name] = p
        return p

    def point_index(self, text: str, name: str = "i") -> int:
        """A shown point's position (0 .. points-1), checked."""
        try:
            i = int(text)
        except ValueError:
            raise BadRequest(f"{name}: expected a point number, got {text[:40]!r}") from None
        if not 0 <= i < len(self.index):
            raise BadRequest(f"{name}: no point {i}; the map has points 0 to {len(self.index) - 1}")
        return i

    # ------------------------------------------------------------------ actions
    def info(self) -> dict:
        """What the page shows once: the run, the data, the projections, curves, limits."""
        return self._info

    def _describe(self) -> dict:
        mc = self.model.config
        card = run_card(self.run_dir)
        metrics = runs.read_metrics(self.run_dir)
        names = self.cfg["data"].get("column_names")
        d = mc.x_dim
        thinned = len(self.index) < self.total
        return {
            "run": str(self.run_dir),
            "name": self.run_dir.name,
            "data": self.data_name,
            "trained_on": str(self.cfg["data"].get("spec")),
            "description": self.cfg["data"].get("description"),
            "split": self.split,
            "binarize": self.binarize,
            "points": len(self.index),
            "total": self.total,
            "thinned": thinned,
            "latent_dim": self.latent_dim,
            "likelihood": mc.likelihood,
            "prior": mc.prior,
            "posterior": mc.posterior,
            "kind": "table" if mc.image_shape is None else "image",
            "image_shape": list(mc.image_shape) if mc.image_shape else None,
            "columns": names if names and len(names) == d else [f"x{k + 1}" for k in range(d)],
            "range": list(self.range),
            "labelled": self.labels is not None,
            "label_names": self.label_names,
            "default_projection": self.default_projection,
            "spherical": mc.prior == "normal",
            "card": render_info(card),
            "architecture": card["architecture"],
            "objective": card["objective"],
            "curves": _curves(metrics),
            "active": _active(metrics),
            "limits": {"max_abs": MAX_ABS, "max_grid": MAX_GRID, "max_steps": MAX_STEPS},
        }

    def points(self, projection: str | None) -> dict:
        """Every shown point on the map, with its label and its row in the split."""
        p = self.projection(projection)
        u = p.to_map(self.z)
        return {
            "projection": p.describe(),
            "x": np.round(u[:, 0], 5).tolist(),
            "y": np.round(u[:, 1], 5).tolist(),
            "labels": self.labels.tolist() if self.labels is not None else None,
            "rows": self.index.tolist(),
        }

    def point(self, i: int) -> dict:
        """One shown datapoint: its image (or row), reconstruction, latent point and label."""
        x = self.x[i : i + 1]
        rec = self._decode(self.z[i : i + 1])
        label = int(self.labels[i]) if self.labels is not None else None
        return {
            "i": i,
            "row": int(self.index[i]),
            "label": label,
            "label_name": self._label_name(label),
            "z": self.z[i].tolist(),
            "data": self.payloads(x)[0],
            "reconstruction": self.payloads(rec)[0],
        }

    def _label_name(self, label: int | None) -> str | None:
        if label is None:
            return None
        names = self.label_names
        return names[label] if names and 0 <= label < len(names) else str(label)

    def decode(self, u: np.ndarray | None, z: np.ndarray | None, projection: str | None) -> dict:
        """The decoder mean at a map point ``u`` (its pre-image) or at a latent point ``z``."""
        p = self.projection(projection)
        if u is not None and z is None:
            latent = p.preimage(u[None])
        elif z is not None and u is None:
            latent = z[None]
        else:
            raise BadRequest("give the point as p (2 map coordinates) or z (a latent point)")
        x = self._decode(latent)
        return {
            "z": latent[0].tolist(),
            "p": p.to_map(latent)[0].tolist(),
            "data": self.payloads(x)[0],
        }

    def path(self, a: int, b: int, method: str, t: np.ndarray, projection: str | None) -> dict:
        """Decoded points at fractions ``t`` of the linear or spherical path from a's latent
        point to b's (their encoder means), with their places on the map."""
        try:
            _path_methods(self.model, method)
        except ConfigError as e:
            raise BadRequest(str(e)) from None
        z0, z1 = torch.from_numpy(self.z[a]), torch.from_numpy(self.z[b])
        tt = torch.from_numpy(t)
        zs = (1 - tt)[:, None] * z0 + tt[:, None] * z1 if method == "linear" else _slerp(z0, z1, tt)
        latent = zs.numpy()
        x = self._decode(latent)
        u = self.projection(projection).to_map(latent)
        return {
            "method": method,
            "t": t.tolist(),
            "z": latent.tolist(),
            "p": u.tolist(),
            "data": self.payloads(x),
        }

    def grid(self, n: int, xs: np.ndarray, ys: np.ndarray, projection: str | None) -> dict:
        """Decoder means over an n x n grid of the map's box [xs] x [ys], row by row from the
        top (y falls down the rows, x grows along them)."""
        if n * n * self.model.config.x_dim > MAX_GRID_VALUES:
            raise BadRequest(f"n: a {n}x{n} grid of this data is too large; ask for a smaller one")
        gx = np.linspace(xs[0], xs[1], n)
        gy = np.linspace(ys[1], ys[0], n)
        u = np.stack([np.tile(gx, n), np.repeat(gy, n)], 1)
        latent = self.projection(projection).preimage(u)
        return {"n": n, "p": u.tolist(), "data": self.payloads(self._decode(latent))}


def _data_name(data: Any) -> str:
    """What the map shows, in words: a dataset's name or path, or data given from Python."""
    if isinstance(data, str | Path):
        return str(data)
    return "data from Python"


def _thin(n: int, most: int) -> np.ndarray:
    """Row numbers of at most ``most`` of n rows, evenly spaced (all of them when n <= most)."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


def _codes(values: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """Labels of any kind as codes 0..K-1, with the names where they are not codes already."""
    if np.issubdtype(values.dtype, np.integer) and values.min(initial=0) >= 0:
        return values.astype(np.int64), None
    names, codes = np.unique(values.astype(str), return_inverse=True)
    return codes.astype(np.int64), [str(s) for s in names]


def _axes(name: str, n_z: int, default: str) -> tuple[int, int]:
    """'z2,z5' -> (1, 4): two different latent axes, 1-based in the name."""
    parts = name.split(",")
    try:
        if len(parts) != 2 or not all(p.startswith("z") for p in parts):
            raise ValueError
        i, j = (int(p[1:]) - 1 for p in parts)
    except ValueError:
        raise BadRequest(
            f"projection: unknown {name[:40]!r}; use {default} or two latent axes like z1,z2"
        ) from None
    if not (0 <= i < n_z and 0 <= j < n_z) or i == j:
        raise BadRequest(f"projection: {name!r} needs two different axes among z1 to z{n_z}")
    return i, j


def _curves(metrics: list[dict]) -> list[dict]:
    """The evaluations' scalar results by samples seen (bound, its terms, others where logged)."""
    out = []
    for rec in metrics:
        keep = {
            k: v
            for k, v in rec.items()
            if isinstance(v, int | float)
            and math.isfinite(v)
            and any(k == f"{s}_{c}" for s in ("train", "valid", "test") for c in CURVE_KEYS)
        }
        if keep:
            out.append({"samples_seen": rec.get("samples_seen", 0), **keep})
    return out


def _active(metrics: list[dict]) -> dict | None:
    """The last evaluation's latent usage (active units, KL per dimension), where logged: test,
    else validation (a run with --no-eval-test), else train, as the other reports choose."""
    for rec in reversed(metrics):
        split = runs.reported_split(rec, "kl_per_dim")
        if split is not None:
            return {
                "split": split,
                "samples_seen": rec.get("samples_seen", 0),
                "active_units": rec.get(f"{split}_active_units"),
                "kl_per_dim": rec[f"{split}_kl_per_dim"],
                "activity": rec.get(f"{split}_activity"),
            }
    return None
