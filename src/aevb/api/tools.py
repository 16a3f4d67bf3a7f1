"""Using a trained run: samples, the manifold, reconstructions, encoding and decoding,
latent interpolation, and curves of several runs."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .. import figures, runs
from ..errors import ConfigError, DataError, RunError
from ..model import VAE
from .common import _run_data, _unstandardize, _write_image_or_array, load


def sample(
    run_dir: str | Path, n: int = 100, out: str | Path = "samples.png", seed: int = 0
) -> Path:
    """Decoder means for n draws from the prior: a PNG grid, or (n, D) .npy / .csv rows."""
    if n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    model = load(run_dir)
    x = model.sample(n, torch.Generator().manual_seed(seed))
    ncol = int(math.ceil(math.sqrt(n)))
    cfg = runs.read_config(run_dir)
    shape = model.config.image_shape
    return _write_image_or_array(Path(out), x, shape, ncol, f"{n} samples", cfg)


def manifold(
    run_dir: str | Path,
    grid: int = 20,
    out: str | Path = "manifold.png",
    *,
    model: VAE | None = None,
) -> Path:
    """Figure 4: decoder means over a grid of the 2-D latent space (unit square via Phi^-1)."""
    model = model or load(run_dir)
    if model.config.latent_dim != 2:
        raise ConfigError(
            f"manifold needs a 2-D latent space; this model has {model.config.latent_dim} "
            "(train with --latent-dim 2)"
        )
    z = figures.manifold_latents(grid)
    if model.config.prior != "normal":  # the same unit-square grid through the prior's icdf
        try:
            z = model.prior.icdf(0.5 * torch.erfc(-z.double() / math.sqrt(2.0))).float()
        except NotImplementedError:
            raise ConfigError(
                f"manifold needs the prior's inverse CDF; the {model.config.prior!r} prior has "
                "none in closed form"
            ) from None
    z = z.to(model.device)
    with torch.no_grad():
        x = model.decode_mean(z)
    return _write_image_or_array(Path(out), x, model.config.image_shape, grid, "learned manifold")


def reconstruct(
    run_dir: str | Path,
    out: str | Path = "reconstructions.png",
    *,
    n: int = 50,
    data: str | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
) -> Path:
    """Data beside its reconstruction (decoder mean at the posterior mean), as a PNG grid."""
    model, x, _, cfg = _run_data(Path(run_dir), data, split, data_dir, "grey")
    xt = torch.from_numpy(np.ascontiguousarray(x[:n], dtype=np.float32))
    pairs = torch.stack([xt, model.reconstruct(xt)], 1).reshape(-1, xt.shape[1])
    return _write_image_or_array(
        Path(out), pairs, model.config.image_shape, 10, "data | reconstruction", cfg
    )


def encode(
    run_dir: str | Path,
    out: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    binarize: str | None = None,
) -> Path:
    """Posterior means and log-variances: .npz (arrays mu, logvar) or .npy ([mu, logvar]).

    Other posterior families write their raw parameters under their names (e.g. loc, log_scale).
    """
    model, x, _, _ = _run_data(Path(run_dir), data, split, data_dir, binarize)
    with torch.no_grad():
        params = model.encode(x)
    names = getattr(model.encoder.family, "param_names", ()) or ("mu", "logvar")
    out = Path(out)
    buf = io.BytesIO()
    if out.suffix.lower() == ".npz":
        arrays: dict[str, Any] = {n: p.numpy() for n, p in zip(names, params, strict=True)}
        np.savez(buf, **arrays)
    elif out.suffix.lower() == ".npy":
        np.save(buf, torch.cat(params, 1).numpy())
    else:
        raise ConfigError(f"--out {out}: use a .npy or .npz file name")
    runs.atomic_write_bytes(out, buf.getvalue())
    return out


def decode(
    run_dir: str | Path, latents: str | Path | npt.ArrayLike, out: str | Path | None = None
) -> np.ndarray:
    """Decoder means E[x|z] for latent points, in data units (--standardize undone).

    ``latents`` is an (N, J) array, or the path of an .npy/.npz written by :func:`encode` (its
    posterior means are decoded). With ``out`` (.npy, .csv or .png) the result is also written.
    """
    model = load(run_dir)
    cfg = runs.read_config(run_dir)
    j = model.config.latent_dim
    if isinstance(latents, str | Path):
        path = Path(latents)
        if not path.exists():
            raise DataError(f"{path}: no such file; write latents with 'aevb encode'")
        if path.is_dir() or path.suffix.lower() not in (".npy", ".npz"):
            raise DataError(f"{path}: latents must be an .npy or .npz file ('aevb encode')")
        from ..data.arrays import _load_file  # headers checked before anything is allocated

        arrays = _load_file(path)
        if not arrays:
            raise DataError(f"{path}: holds no arrays")
        latents = next(iter(arrays.values()))  # encode's .npz: mu (then logvar)
    z = np.asarray(latents, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] not in (j, 2 * j):
        raise DataError(f"latents of shape {z.shape}: expected (N, {j}) or encode's (N, {2 * j})")
    with torch.no_grad():
        x = model.decode_mean(torch.from_numpy(np.ascontiguousarray(z[:, :j])))
    if out is not None:
        ncol = int(math.ceil(math.sqrt(len(x))))
        _write_image_or_array(Path(out), x, model.config.image_shape, ncol, "decoded", cfg)
    return _unstandardize(x, cfg).numpy()


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
    out: str | Path = "interpolation.png",
    *,
    pairs: int = 4,
    steps: int = 10,
    data: str | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    method: str = "both",
    seed: int = 0,
) -> Path:
    """Decoded latent paths between the posterior means of ``pairs`` random pairs of points.

    ``method`` is "linear", "spherical" (Gaussian prior only: the great circle, where prior mass
    concentrates) or "both" (spherical only where the prior is Gaussian). Each path has ``steps``
    points from one mean to the other, endpoints included. ``out`` is a PNG (one row per pair and
    method, the two data points at its ends), an .npy of the decoded paths (pairs, methods, steps,
    D), or an .npz with ``x`` (that array), ``z`` (the latent paths), ``index`` (the points' rows in
    the split) and ``methods``.
    """
    if pairs < 1 or steps < 2:
        raise ConfigError(f"--pairs must be >= 1 and --steps >= 2, got {pairs} and {steps}")
    if method not in ("linear", "spherical", "both"):
        raise ConfigError(f"unknown --method {method!r}; choose linear, spherical or both")
    model, x, _, cfg = _run_data(Path(run_dir), data, split, data_dir, "grey")
    methods = _path_methods(model, method)
    if 2 * pairs > len(x):
        raise ConfigError(f"--pairs {pairs} needs {2 * pairs} points; {split} has {len(x)}")
    index = np.random.default_rng(seed).choice(len(x), size=2 * pairs, replace=False)
    xs = torch.from_numpy(np.ascontiguousarray(x[index], dtype=np.float32))
    with torch.no_grad():
        centers = model.encoder.posterior(xs).center()
    z = _latent_paths(centers, pairs, methods, steps)
    with torch.no_grad():
        dec = model.decode_mean(z.reshape(-1, z.shape[-1])).reshape(pairs, len(methods), steps, -1)
    out = Path(out)
    _write_paths(out, model, cfg, xs, z, dec, index, methods)
    return out


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
    out: Path,
    model: VAE,
    cfg: dict,
    xs: torch.Tensor,
    z: torch.Tensor,
    dec: torch.Tensor,
    index: np.ndarray,
    methods: list[str],
) -> None:
    """Write interpolate's result: a PNG of the paths between their data points, .npy or .npz."""
    pairs, steps = dec.shape[0], dec.shape[2]
    suffix = out.suffix.lower()
    if suffix in (".npy", ".npz"):
        arr = _unstandardize(dec, cfg).numpy()
        buf = io.BytesIO()
        if suffix == ".npy":
            np.save(buf, arr)
        else:
            np.savez(buf, x=arr, z=z.numpy(), index=index, methods=np.array(methods))
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
) -> Path:
    """Bound-vs-samples curves of several runs on one figure (Figure 2 style), from metrics.jsonl.

    Train solid, test dashed, validation dotted. ``labels`` default to the run directories' names;
    runs trained with a weighted KL term are marked from their metrics (``kl_weight``).
    ``metric`` may be "iwae_bound" or "log_likelihood" for runs that logged them. ``since``
    keeps the evaluations from that many training samples on (to see the end of long runs).
    """
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
        if any("kl_weight" in r for r in records):
            label += " (KL-weighted training)"
        curves.append((label, records))
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: use a .png file name")
    figures.plot_curves(curves, out, title=title or "Lower bound per datapoint", metric=metric)
    return out
