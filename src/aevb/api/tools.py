"""Using a trained run: samples, the manifold, reconstructions, encoding and decoding,
latent interpolation, and curves of several runs.

The tools return NumPy arrays and write a file only when given ``out=``. Data comes back as rows,
one datapoint per row ``(N, D)`` (reshape to ``model.config.image_shape`` to view images), in
data units: a run trained with ``--standardize`` has its z-scores undone. Latent points are rows
``(N, J)`` of the model's latent space. Where a tool reads data it takes either an array ``x``
(rows in data units, or ``(N, *image_shape)`` images) or a split of a dataset (``data``,
``split``, ``data_dir``; by default the run's own data).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

from .. import figures, runs
from ..errors import ConfigError, DataError, RunError
from ..model import VAE, ModelConfig
from .common import _checked_rows, _run_data, _unstandardize, _write_image_or_array, load

ArrayInput: TypeAlias = "npt.ArrayLike | torch.Tensor"


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """Datapoints beside their reconstructions (decoder mean at the posterior's center)."""

    x: np.ndarray
    """(n, D): the datapoints, in data units."""
    reconstruction: np.ndarray
    """(n, D): their reconstructions, in data units."""


@dataclass(frozen=True, eq=False)
class Encoding:
    """The approximate posterior q(z|x) of N datapoints.

    ``params`` holds the encoder's outputs by name, each (N, J): ``mu`` and ``logvar`` for the
    Gaussian posterior (also as the attributes ``mu`` and ``logvar``), ``loc`` and ``log_scale``
    or others for other families. ``center`` (N, J) is the posterior mean (Gaussian) or median:
    the latent point a reconstruction decodes.
    """

    params: dict[str, np.ndarray]
    center: np.ndarray

    @property
    def mu(self) -> np.ndarray:
        """(N, J) posterior means of the Gaussian posterior."""
        return self._param("mu")

    @property
    def logvar(self) -> np.ndarray:
        """(N, J) posterior log-variances of the Gaussian posterior."""
        return self._param("logvar")

    def _param(self, name: str) -> np.ndarray:
        if name not in self.params:
            raise AttributeError(
                f"this posterior has no {name!r}; its parameters are {list(self.params)} "
                "(.params), its latent points .center"
            )
        return self.params[name]


@dataclass(frozen=True, eq=False)
class Manifold:
    """Figure 4: decoder means over a K x K grid of the 2-D latent space, row by row.

    Row r of the picture is rows r*K .. r*K+K-1 here; z2 grows upwards, z1 to the right.
    """

    decoded: np.ndarray
    """(K*K, D): the decoder means, in data units."""
    latents: np.ndarray
    """(K*K, J): the latent points; ``dims`` vary over the grid, the others are 0."""
    dims: tuple[int, int] = (0, 1)
    """The two latent dimensions the grid varies (0-based): z_dims[0] across, z_dims[1] up."""
    grid_over: str = "prior"
    """"prior": the paper's grid (the prior's quantiles); "codes": the data's codes' quantiles."""


@dataclass(frozen=True, eq=False)
class Interpolation:
    """Decoded latent paths between the posterior centers of pairs of datapoints."""

    decoded: np.ndarray
    """(pairs, methods, steps, D): the decoder means along each path, in data units."""
    latents: np.ndarray
    """(pairs, methods, steps, J): the latent paths, from one center to the other."""
    index: np.ndarray
    """(2 * pairs,): the datapoints' rows (in ``x`` or the split); pair p is rows 2p, 2p+1."""
    methods: tuple[str, ...]
    """The path kinds, in the order of the second axis: "linear" and/or "spherical"."""


def _rows(x: ArrayInput, config: ModelConfig, source: str = "x") -> np.ndarray:
    """x as float32 rows of the model's width: (N, D) rows or (N, *image_shape) images."""
    try:
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    except (ValueError, TypeError) as e:
        raise DataError(f"{source}: not an array ({e})") from None
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.bool_)
        or (np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating))
    ):
        raise DataError(f"{source}: expected a numeric array, got dtype {a.dtype}")
    d, shape = config.x_dim, config.image_shape
    images = shape is not None and a.ndim == 1 + len(shape) and tuple(a.shape[1:]) == tuple(shape)
    if not (images or (a.ndim == 2 and a.shape[1] == d)):
        want = f"(N, {d}) rows" + (f" or (N, {', '.join(map(str, shape))}) images" if shape else "")
        hint = "; for one datapoint use x[None]" if a.ndim == 1 and a.size == d else ""
        raise DataError(f"{source} has shape {a.shape}; this model takes {want}{hint}")
    if len(a) == 0:
        raise DataError(f"{source} has no rows")
    return np.array(a.reshape(len(a), d), dtype=np.float32)  # a copy: never the caller's memory


def _data(
    run_dir: str | Path,
    x: ArrayInput | None,
    data: str | None,
    split: str | None,
    data_dir: str | Path | None,
    binarize: str | None,
    which: str | int = "last",
) -> tuple[VAE, np.ndarray, dict]:
    """The run's model, model-space rows (``x``, or a split of a dataset) and config."""
    if x is None:
        model, rows, _, cfg = _run_data(
            Path(run_dir), data, split or "test", data_dir, binarize, which
        )
        return model, rows, cfg
    if data is not None or data_dir is not None or split is not None:
        raise ConfigError("give the data as x (an array) or as data/split/data_dir, not both")
    cfg = runs.read_config(run_dir)
    model = load(run_dir, which=which)
    rows = _rows(x, model.config)
    stats = cfg["data"].get("standardize")
    if stats:  # the run's z-scores, from its training set (as a split of its data gets them)
        mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
        rows = ((rows.astype(np.float64) - mean) / std).astype(np.float32)
    mode = binarize or cfg["train"].get("binarize", "grey")
    return model, _checked_rows(rows, model, cfg, mode, "x"), cfg


def _numpy(x: torch.Tensor, cfg: dict | None = None) -> np.ndarray:
    """A CPU NumPy copy of model-space x, in data units when ``cfg`` standardised the run."""
    return (_unstandardize(x, cfg) if cfg else x).detach().cpu().numpy()


def sample(
    run_dir: str | Path, n: int = 100, *, seed: int = 0, out: str | Path | None = None
) -> np.ndarray:
    """Decoder means E[x|z] for n draws z ~ p(z): (n, D) in data units; ``seed`` fixes the draws.

    With ``out`` they are also written: a PNG grid, or .npy / .csv rows (the array returned).
    """
    if n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    model = load(run_dir)
    cfg = runs.read_config(run_dir)
    x = model.sample(n, torch.Generator().manual_seed(seed))
    if out is not None:
        ncol = int(math.ceil(math.sqrt(n)))
        shape = model.config.image_shape
        _write_image_or_array(Path(out), x, shape, ncol, f"{n} samples", cfg)
    return _numpy(x, cfg)


GRIDS = ("prior", "codes")
"""Where ``manifold`` lays its grid: the paper's (the prior's quantiles) or the data's codes."""


def manifold(
    run_dir: str | Path,
    grid: int = 20,
    *,
    grid_over: str = "prior",
    dims: Sequence[int] | None = None,
    quantiles: tuple[float, float] = (0.01, 0.99),
    data: str | None = None,
    data_dir: str | Path | None = None,
    which: str | int = "last",
    out: str | Path | None = None,
    model: VAE | None = None,
) -> Manifold:
    """Figure 4: decoder means over a ``grid`` x ``grid`` grid of two latent dimensions.

    ``grid_over="prior"`` (the paper's) takes the unit square's cell centers through Phi^-1 (as
    :func:`aevb.figures.manifold_latents`), or through the prior's inverse CDF for other priors;
    it assumes the codes fill the prior. ``"codes"`` spans each axis between the ``quantiles`` of
    the training set's posterior centers (the run's data, or ``data``), so every tile lies where
    the data's codes do. ``dims`` names the two dimensions to vary (default: both of a 2-D space;
    for more, the two with the largest KL); the others are held at zero, the prior's center.
    ``which`` picks the model as :func:`aevb.load` does (last, best, or a snapshot's sample
    count); ``model`` is the run's model where it is loaded already. With ``out`` the grid is
    also written: a PNG, or .npy / .csv rows (the ``decoded`` array).
    """
    model = model or load(run_dir, which=which)
    if grid_over not in GRIDS:
        raise ConfigError(f"unknown --grid-over {grid_over!r}; choose one of {', '.join(GRIDS)}")
    pair = _manifold_dims(run_dir, model, dims)
    if grid_over == "prior":
        plane, what = _prior_grid(model, grid, pair), "grid over the prior"
    else:
        lo, hi = _code_box(run_dir, which, pair, quantiles, data, data_dir)
        plane = figures.box_latents(grid, lo, hi)
        what = f"grid over the codes' {quantiles[0]:.0%}-{quantiles[1]:.0%} quantiles"
    z = torch.zeros(grid * grid, model.config.latent_dim)
    z[:, list(pair)] = plane
    with torch.no_grad():
        x = model.decode_mean(z.to(model.device))
    cfg = runs.read_config(run_dir)
    if out is not None:
        shape = model.config.image_shape
        title = f"learned manifold ({what}"
        if model.config.latent_dim > 2:
            title += f"; z{pair[0] + 1}, z{pair[1] + 1} varied, the rest at 0"
        _write_image_or_array(Path(out), x, shape, grid, title + ")", cfg)
    return Manifold(_numpy(x, cfg), z.numpy(), pair, grid_over)


def _prior_grid(model: VAE, grid: int, pair: tuple[int, int]) -> torch.Tensor:
    """The paper's grid: the unit square's cell centers through the prior's inverse CDF."""
    z = figures.manifold_latents(grid)
    if model.config.prior == "normal":
        return z
    u = torch.full((grid * grid, model.config.latent_dim), 0.5, dtype=torch.float64)
    u[:, list(pair)] = 0.5 * torch.erfc(-z.double() / math.sqrt(2.0))
    try:
        return model.prior.icdf(u).float()[:, list(pair)]
    except NotImplementedError:
        raise ConfigError(
            f"manifold needs the prior's inverse CDF; the {model.config.prior!r} prior has "
            "none in closed form (use --grid-over codes)"
        ) from None


def _manifold_dims(run_dir: str | Path, model: VAE, dims: Sequence[int] | None) -> tuple[int, int]:
    """The two latent dimensions to vary: ``dims``, or the two the run's KL ranks highest."""
    n = model.config.latent_dim
    if n < 2:
        raise ConfigError(f"manifold needs at least 2 latent dimensions; this model has {n}")
    if dims is not None:
        pair = tuple(int(d) for d in dims)
        if len(pair) != 2 or pair[0] == pair[1] or not all(0 <= d < n for d in pair):
            raise ConfigError(
                f"--dims takes two different dimensions from 0 to {n - 1}, got {list(dims)}"
            )
        return pair[0], pair[1]
    if n == 2:
        return 0, 1
    kl = _kl_per_dim(run_dir)
    if kl is None:
        raise ConfigError(
            f"this run recorded no KL per dimension to choose 2 of its {n}; give --dims I J"
        )
    first, second = sorted(range(n), key=lambda d: -kl[d])[:2]
    return min(first, second), max(first, second)


def _kl_per_dim(run_dir: str | Path) -> list[float] | None:
    """The KL per latent dimension at the run's last evaluation (training split first)."""
    for rec in reversed(runs.read_metrics(run_dir)):
        for key in ("train_kl_per_dim", "test_kl_per_dim", "validation_kl_per_dim"):
            if key in rec:
                return list(rec[key])
    return None


def _code_box(
    run_dir: str | Path,
    which: str | int,
    pair: tuple[int, int],
    quantiles: tuple[float, float],
    data: str | None,
    data_dir: str | Path | None,
) -> tuple[list[float], list[float]]:
    """The ``quantiles`` of the training set's posterior centers along the two dimensions."""
    lo_q, hi_q = quantiles
    if not 0.0 <= lo_q < hi_q <= 1.0:
        raise ConfigError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    found = encode(run_dir, data=data, split="train", data_dir=data_dir, which=which)
    c = torch.from_numpy(found.center[:, list(pair)]).double()
    return torch.quantile(c, lo_q, dim=0).tolist(), torch.quantile(c, hi_q, dim=0).tolist()


def reconstruct(
    run_dir: str | Path,
    *,
    x: ArrayInput | None = None,
    n: int | None = None,
    data: str | None = None,
    split: str | None = None,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
) -> Reconstruction:
    """Datapoints and their reconstructions: the decoder mean at the posterior's center.

    The datapoints are the first ``n`` rows of ``x`` (default: all), or of a split of the data
    (``split`` default "test", ``n`` default 50). With ``out`` they are also written: a PNG of
    data | reconstruction pairs, or .npy / .csv rows alternating datapoint and reconstruction.
    """
    if n is not None and n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    model, rows, cfg = _data(run_dir, x, data, split, data_dir, "grey")
    xt = torch.from_numpy(np.ascontiguousarray(rows[: n or (len(rows) if x is not None else 50)]))
    rec = model.reconstruct(xt)
    if out is not None:
        pairs = torch.stack([xt, rec], 1).reshape(-1, xt.shape[1])
        shape = model.config.image_shape
        _write_image_or_array(Path(out), pairs, shape, 10, "data | reconstruction", cfg)
    return Reconstruction(_numpy(xt, cfg), _numpy(rec, cfg))


def encode(
    run_dir: str | Path,
    *,
    x: ArrayInput | None = None,
    data: str | None = None,
    split: str | None = None,
    data_dir: str | Path | None = None,
    binarize: str | None = None,
    which: str | int = "last",
    out: str | Path | None = None,
) -> Encoding:
    """The approximate posterior q(z|x) of every row of ``x`` or of a split (default "test").

    ``binarize`` overrides the run's binarization of the data; ``which`` picks the model as
    :func:`aevb.load` does (last, best, or a snapshot's sample count). With ``out`` the
    parameters are also written: an .npz of the named arrays (mu, logvar; other families their
    own names) or an .npy of their columns side by side ([mu, logvar]).
    """
    suffix = Path(out).suffix.lower() if out is not None else None
    if suffix not in (None, ".npy", ".npz"):
        raise ConfigError(f"--out {out}: use a .npy or .npz file name")
    model, rows, _ = _data(run_dir, x, data, split, data_dir, binarize, which)
    with torch.no_grad():
        params = model.encode(rows)
        center = model.encoder.family.from_params(*params).center()
    names = getattr(model.encoder.family, "param_names", ()) or ("mu", "logvar")
    arrays: dict[str, Any] = {k: _numpy(p) for k, p in zip(names, params, strict=True)}
    if out is not None:
        buf = io.BytesIO()
        if suffix == ".npz":
            np.savez(buf, **arrays)
        else:
            np.save(buf, np.concatenate(list(arrays.values()), 1))
        runs.atomic_write_bytes(Path(out), buf.getvalue())
    return Encoding(arrays, _numpy(center))


def decode(
    run_dir: str | Path,
    latents: str | Path | Encoding | npt.ArrayLike,
    *,
    out: str | Path | None = None,
) -> np.ndarray:
    """Decoder means E[x|z] for latent points: (N, D) in data units (--standardize undone).

    ``latents`` is an (N, J) array, an :class:`Encoding` (its centers are decoded), or the path
    of an .npy/.npz written by :func:`encode` (its posterior means are decoded). With ``out``
    (.npy, .csv or .png) the result is also written.
    """
    model = load(run_dir)
    cfg = runs.read_config(run_dir)
    j = model.config.latent_dim
    if isinstance(latents, Encoding):
        latents = latents.center
    elif isinstance(latents, str | Path):
        latents = _latents_file(Path(latents))
    z = np.asarray(latents, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] not in (j, 2 * j):
        raise DataError(f"latents of shape {z.shape}: expected (N, {j}) or encode's (N, {2 * j})")
    with torch.no_grad():
        x = model.decode_mean(torch.from_numpy(np.ascontiguousarray(z[:, :j])))
    if out is not None:
        ncol = int(math.ceil(math.sqrt(len(x))))
        _write_image_or_array(Path(out), x, model.config.image_shape, ncol, "decoded", cfg)
    return _numpy(x, cfg)


def _latents_file(path: Path) -> np.ndarray:
    """The first array of an .npy/.npz of latents: encode's mu (then logvar)."""
    if not path.exists():
        raise DataError(f"{path}: no such file; write latents with 'aevb encode'")
    if path.is_dir() or path.suffix.lower() not in (".npy", ".npz"):
        raise DataError(f"{path}: latents must be an .npy or .npz file ('aevb encode')")
    from ..data.arrays import _load_file  # headers checked before anything is allocated

    arrays = _load_file(path)
    if not arrays:
        raise DataError(f"{path}: holds no arrays")
    return next(iter(arrays.values()))


def _slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation (slerp) between z0 and z1 at fractions t."""
    n0, n1 = z0.norm(), z1.norm()
    cos = torch.clamp(torch.dot(z0, z1) / (n0 * n1).clamp_min(1e-12), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(torch.sin(omega)) < 1e-6:  # (anti)parallel: the linear path
        return (1 - t)[:, None] * z0 + t[:, None] * z1
    so = torch.sin(omega)
    a, b = torch.sin((1 - t) * omega) / so, torch.sin(t * omega) / so
    return a[:, None] * z0 + b[:, None] * z1


def interpolate(
    run_dir: str | Path,
    *,
    x: ArrayInput | None = None,
    pairs: int = 4,
    steps: int = 10,
    data: str | None = None,
    split: str | None = None,
    data_dir: str | Path | None = None,
    method: str = "both",
    seed: int = 0,
    out: str | Path | None = None,
) -> Interpolation:
    """Decoded latent paths between the posterior centers of ``pairs`` random pairs of points.

    The points are rows of ``x`` or of a split (default "test"), drawn by ``seed``. ``method`` is
    "linear", "spherical" (Gaussian prior only: the great circle, where prior mass concentrates)
    or "both" (spherical only where the prior is Gaussian). Each path has ``steps`` points from
    one center to the other, endpoints included. With ``out`` the paths are also written: a PNG
    (one row per pair and method, the two data points at its ends), an .npy of ``decoded``, or an
    .npz with ``x`` (``decoded``), ``z`` (``latents``), ``index`` and ``methods``.
    """
    if pairs < 1 or steps < 2:
        raise ConfigError(f"--pairs must be >= 1 and --steps >= 2, got {pairs} and {steps}")
    if method not in ("linear", "spherical", "both"):
        raise ConfigError(f"unknown --method {method!r}; choose linear, spherical or both")
    model, rows, cfg = _data(run_dir, x, data, split, data_dir, "grey")
    methods = _path_methods(model, method)
    if 2 * pairs > len(rows):
        where = "x" if x is not None else (split or "test")
        raise ConfigError(f"--pairs {pairs} needs {2 * pairs} points; {where} has {len(rows)}")
    index = np.random.default_rng(seed).choice(len(rows), size=2 * pairs, replace=False)
    xs = torch.from_numpy(np.ascontiguousarray(rows[index], dtype=np.float32))
    with torch.no_grad():
        centers = model.encoder.posterior(xs).center()
    z = _latent_paths(centers, pairs, methods, steps)
    with torch.no_grad():
        dec = model.decode_mean(z.reshape(-1, z.shape[-1])).reshape(pairs, len(methods), steps, -1)
    result = Interpolation(_numpy(dec, cfg), z.numpy(), index, tuple(methods))
    if out is not None:
        _write_paths(Path(out), model, xs, dec, result)
    return result


def _path_methods(model: VAE, method: str) -> list[str]:
    """The path kinds drawn: spherical ones only where the prior is Gaussian."""
    gaussian = model.config.prior == "normal"
    if method == "spherical" and not gaussian:
        raise ConfigError(
            f"spherical paths assume a Gaussian prior, this model's is {model.config.prior!r}; "
            "use --method linear"
        )
    methods = ["linear", "spherical"] if method == "both" else [method]
    if not gaussian:
        methods = ["linear"]
    return methods


def _latent_paths(
    centers: torch.Tensor, pairs: int, methods: list[str], steps: int
) -> torch.Tensor:
    """The latent paths between consecutive pairs of centers: (pairs, methods, steps, J)."""
    t = torch.linspace(0.0, 1.0, steps)
    zs = []
    for p in range(pairs):
        z0, z1 = centers[2 * p], centers[2 * p + 1]
        for m in methods:
            if m == "linear":
                zs.append((1 - t)[:, None] * z0 + t[:, None] * z1)
            else:
                zs.append(_slerp(z0, z1, t))
    return torch.stack(zs).reshape(pairs, len(methods), steps, -1)


def _write_paths(
    out: Path, model: VAE, xs: torch.Tensor, dec: torch.Tensor, result: Interpolation
) -> None:
    """Write interpolate's result: a PNG of the paths between their data points, .npy or .npz."""
    pairs, methods, steps = dec.shape[0], result.methods, dec.shape[2]
    suffix = out.suffix.lower()
    if suffix in (".npy", ".npz"):
        buf = io.BytesIO()
        if suffix == ".npy":
            np.save(buf, result.decoded)
        else:
            np.savez(
                buf,
                x=result.decoded,
                z=result.latents,
                index=result.index,
                methods=np.array(methods),
            )
        runs.atomic_write_bytes(out, buf.getvalue())
    elif suffix == ".png":
        rows = []
        for p in range(pairs):
            for k in range(len(methods)):
                rows += [xs[2 * p], *dec[p, k], xs[2 * p + 1]]
        title = f"data | {' / '.join(methods)} path between posterior means | data"
        figures.save_grid(out, torch.stack(rows), model.config.image_shape, steps + 2, title)
    else:
        raise ConfigError(f"--out {out}: use a .png, .npy or .npz file name")


def plot(
    run_dirs: list[str | Path] | str | Path,
    out: str | Path = "curves.png",
    *,
    labels: list[str] | None = None,
    metric: str = "bound",
    title: str | None = None,
    since: int | None = None,
    terms: bool = False,
) -> Path:
    """Bound-vs-samples curves of several runs on one figure (Figure 2 style), from metrics.jsonl.

    Train solid, test dashed, validation dotted. ``labels`` default to the run directories' names;
    runs trained with a weighted KL term are marked from their metrics (``kl_weight``).
    ``metric`` may be "iwae_bound", "log_likelihood" or "reconstruction" (an auto-encoder's
    log p(x|z=mu(x)), a VAE's E_q[log p(x|z)]) for runs that logged them. ``since``
    keeps the evaluations from that many training samples on (to see the end of long runs).
    ``terms`` draws instead the bound's two terms, E_q[log p(x|z)] and KL(q(z|x) || p(z)), one
    panel each (and the KL weight of runs trained with one: :func:`aevb.figures.terms_figure`).
    """
    if terms and metric != "bound":
        raise ConfigError(f"--terms draws the bound's two terms; drop --metric {metric}")
    if since is not None and since < 0:
        raise ConfigError(f"--since must be a sample count >= 0, got {since}")
    dirs = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("give at least one run directory")
    if labels is not None and len(labels) != len(dirs):
        raise ConfigError(f"{len(labels)} labels for {len(dirs)} runs; give one label per run")
    curves = []
    for i, d in enumerate(dirs):
        if not (d / runs.METRICS).is_file():
            raise RunError(f"{d / runs.METRICS}: missing; give run directories of 'aevb train'")
        records = runs.read_metrics(d)
        if not any(r.get("samples_seen", 0) > 0 for r in records):
            raise RunError(f"{d / runs.METRICS}: no evaluation after training started yet")
        if since is not None:
            records = [r for r in records if r.get("samples_seen", 0) >= since]
            if not records:
                raise ConfigError(
                    f"{d}: no evaluation at or after {since:,} samples; use a smaller --since"
                )
        label = labels[i] if labels is not None else d.name
        if terms and not any("train_kl" in r for r in records):
            raise RunError(
                f"{d / runs.METRICS}: no reconstruction and KL terms logged (runs without an "
                "encoder-based bound, such as mcem, have none, nor do runs of older versions)"
            )
        if any("kl_weight" in r for r in records):
            label += " (KL-weighted training)"
        curves.append((label, records))
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: use a .png file name")
    if terms:
        figures.plot_terms(curves, out, title=title or "The bound's two terms per datapoint")
        return out
    figures.plot_curves(curves, out, title=title or "Lower bound per datapoint", metric=metric)
    return out
