"""Evaluating a trained run: its bound on a split, the importance-weighted bound and
estimates of the marginal likelihood log p(x)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.memory import IN_MEMORY, is_in_memory
from ..diagnostics import BoundTerms, latent_usage
from ..errors import ConfigError
from ..model import VAE
from ..seeds import split_seed
from ..stats import standard_error
from .common import _run_data, resolve_device
from .comparing import check_per_point_path, write_per_point


def evaluate(
    run_dir: str | Path,
    split: str = "test",
    *,
    data: Any = None,
    data_dir: str | Path | None = None,
    binarize: str | None = None,
    estimator: str | None = None,
    samples: int = 1,
    iwae_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    marginal: str | None = None,
    importance_samples: int = 5000,
    importance_precision: str = "auto",
    points: int | None = None,
    spread: bool = False,
    chunk_size: int = 4096,
    hmc_samples: int = 50,
    hmc_leapfrog: int = 4,
    hmc_warmup: int = 200,
    hmc_target_accept: float = 0.9,
    workers: int | None = None,
    device: str = "cpu",
    progress: bool = False,
    which: str = "last",
    model: str | None = None,
    per_point: str | Path | None = None,
) -> dict:
    """The lower bound per datapoint on a split, with its standard error over datapoints; on the
    same draws its terms ``reconstruction``, ``kl`` (with ``_se``) and the latent usage
    ``active_units``, ``activity``, ``active_threshold``, ``kl_per_dim`` (docs/EVALUATION.md).

    The run's data is reloaded and checked against its recorded fingerprint; ``data`` is other
    data: a name, a file, an array (evaluated whole) or a ``(train, test)`` pair (by ``split``).
    ``points`` keeps the first N points of the split (with ``spread``, N points evenly spaced
    through it: the first ones of a file may not be typical, e.g. binarized MNIST's test set).
    ``marginal`` ("is", "hmc" or "both") adds estimates of log p(x) on the same points
    (PAPER.md section 7): importance sampling with the encoder as proposal
    (``importance_samples`` = K draws per point, decoded ``chunk_size`` pairs at a time, the
    decoder's products in ``importance_precision``: float32, bf16, "auto" = bf16 where fast) and/or
    the Appendix D estimator (``hmc_samples`` posterior draws per point, ``hmc_leapfrog``
    leapfrog steps, ``hmc_warmup`` warm-up transitions adapting the step size to
    ``hmc_target_accept``), each with its standard error over points, its paired gap to the bound
    and its settings, under ``result["marginal"][method]``; on CPU both run ``workers``
    single-threaded workers (default: torch's thread count; see
    :func:`aevb.marginal.importance_sampling`). ``iwae_samples`` = K adds the importance-weighted
    bound (``result["iwae_bound"]``); for runs trained on it, the bound reported is the ELBO (B
    where the KL is analytic, else A) and K defaults to the run's.
    ``which="best"`` evaluates best_model.safetensors of a run trained with ``keep="best"`` (as
    in :func:`load`); ``model=`` is its older spelling, still accepted.
    ``per_point``: a CSV of each point's values, for :func:`aevb.compare` (``result["per_point"]``).
    """
    run_dir, which = Path(run_dir), _which(which, model)  # which="best": best_model.safetensors
    per_point = check_per_point_path(per_point)  # before the work, not after it
    vae, x, mode, cfg = _run_data(run_dir, data, split, data_dir, binarize, which)
    est, iwae_samples = _estimators(estimator, iwae_samples, vae, cfg)
    settings: dict[str, Any] = dict(importance_samples=importance_samples, chunk_size=chunk_size)
    settings.update(hmc_samples=hmc_samples, hmc_leapfrog=hmc_leapfrog, hmc_warmup=hmc_warmup)
    settings["hmc_target_accept"] = hmc_target_accept
    _check_counts(iwae_samples, samples, marginal, workers, **settings)
    x, index = _take_points(x, points, spread, split)
    dev, settings["importance_precision"] = _device(device, importance_precision, marginal)
    vae, t0 = vae.to(dev), time.perf_counter()
    xt, terms = _bounds(vae, x, est, samples, batch_size, seed, dev)
    res = {
        **_what(run_dir, data, cfg, split, which, mode),
        "estimator": est,
        "samples": samples,
        "points": len(terms.bound),
        "points_spread": bool(spread and points is not None),
        **_terms(terms),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    cols = {"bound": terms.bound, "reconstruction": terms.reconstruction, "kl": terms.kl}
    res.update(_iwae(vae, xt, iwae_samples, seed, dev, cols))
    res.update(
        _marginals(vae, xt, terms.bound, marginal, seed, dev, progress, settings, workers, cols)
    )
    return _write_points(res, per_point, index, cols)


def _what(run_dir: Path, data: Any, cfg: dict, split: str, which: str, mode: str) -> dict:
    """What an evaluation looked at: the run, its model, the data, split and binarization."""
    name = cfg["data"]["spec"] if data is None else _data_name(data)
    return {"run": str(run_dir), "data": name, "split": split, "model": which, "binarize": mode}


def _write_points(
    res: dict, per_point: str | Path | None, index: np.ndarray, cols: dict[str, torch.Tensor]
) -> dict:
    """``res`` with ``per_point`` (the path) once ``cols`` are written there; unchanged without."""
    if per_point is not None:
        res["per_point"] = write_per_point(per_point, index, cols)
    return res


def _refuse_autoencoder(cfg: dict) -> None:
    """An auto-encoder run (``algorithm="autoencoder"``) has no bound to evaluate: refused in one
    line (docs/ALGORITHMS.md); its test reconstruction is in its metrics.jsonl."""
    if cfg["train"].get("algorithm") == "autoencoder":
        raise ConfigError(
            "this run is an auto-encoder, which has no lower bound; it reports its reconstruction "
            "log p(x|z=mu(x)) (test_reconstruction in its metrics.jsonl; aevb info shows it)"
        )


def _data_name(data: Any) -> str:
    """How a result names the data evaluated: its spec, or IN_MEMORY for data given from Python."""
    return IN_MEMORY if is_in_memory(data) else str(data)


def _estimators(
    estimator: str | None, iwae_samples: int | None, model: VAE, cfg: dict
) -> tuple[str, int | None]:
    """The ELBO estimator and IWAE K evaluated: the run's unless given (its K for iwae runs)."""
    _refuse_autoencoder(cfg)
    if estimator == "iwae":
        raise ConfigError("--estimator names an ELBO estimator (A or B); use --iwae-samples K")
    est = estimator or cfg["train"]["estimator"]
    if est == "iwae":
        est = "B" if model.config.supports_estimator("B") else "A"
        iwae_samples = iwae_samples or int(cfg["train"]["samples"])
    elif estimator is None and est == "score-function":  # it trained the ELBO: evaluate it
        est = "B" if model.config.supports_estimator("B") else "A"
    return est, iwae_samples


def _bounds(
    model: VAE,
    x: np.ndarray,
    est: str,
    samples: int,
    batch_size: int,
    seed: int,
    dev: torch.device,
) -> tuple[torch.Tensor, BoundTerms]:
    """The points as a tensor on ``dev`` and the ELBO of each with its two terms and the
    per-dimension view of the posterior (:class:`~aevb.diagnostics.BoundTerms`), ``batch_size``
    points at a time."""
    g = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
        parts = [
            model.bound_terms(xt[i : i + batch_size], est, samples, g).packed()
            for i in range(0, len(xt), batch_size)
        ]
    return xt, BoundTerms.unpack(torch.cat(parts), model.config.latent_dim)


def _terms(terms: BoundTerms) -> dict:
    """The bound and its two terms with their standard errors, and the use of the latent space:
    active units (Burda et al. 2015), the activity and mean KL of each dimension, the threshold."""
    usage = latent_usage(terms.center, terms.kl_per_dim)
    return {
        "bound": float(terms.bound.mean()),
        "bound_se": standard_error(terms.bound),
        "reconstruction": float(terms.reconstruction.mean()),
        "reconstruction_se": standard_error(terms.reconstruction),
        "kl": float(terms.kl.mean()),
        "kl_se": standard_error(terms.kl),
        "active_units": usage.active_units,
        "active_threshold": usage.threshold,
        "activity": usage.activity,
        "kl_per_dim": usage.kl_per_dim,
    }


def _which(which: str, model: str | None) -> str:
    """evaluate's model choice: ``which``, or ``model``, its older spelling."""
    if model is None:
        return which
    if which not in ("last", model):
        raise ConfigError(f"which={which!r} and model={model!r} disagree; give which alone")
    return model


def _check_counts(
    iwae_samples: int | None,
    samples: int,
    marginal: str | None,
    workers: int | None,
    *,
    importance_samples: int,
    chunk_size: int,
    hmc_samples: int,
    hmc_leapfrog: int,
    hmc_warmup: int,
    hmc_target_accept: float,
) -> None:
    """evaluate's sample counts and estimator settings, each checked with the option's name."""
    if iwae_samples is not None and iwae_samples < 1:
        raise ConfigError(f"--iwae-samples must be positive, got {iwae_samples}")
    if samples < 1:
        raise ConfigError(f"--samples must be positive, got {samples}")
    if marginal not in (None, "is", "hmc", "both"):
        raise ConfigError(f"unknown --marginal {marginal!r}; choose is, hmc or both")
    for name, v in (
        ("--importance-samples", importance_samples),
        ("--chunk-size", chunk_size),
        ("--hmc-samples", hmc_samples),
        ("--hmc-leapfrog", hmc_leapfrog),
        ("--workers", workers or 1),
    ):
        if int(v) < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v}")
    if hmc_warmup < 0:
        raise ConfigError(f"--hmc-warmup must be >= 0, got {hmc_warmup}")
    if not 0.0 < hmc_target_accept < 1.0:
        raise ConfigError(f"--hmc-target-accept must lie in (0, 1), got {hmc_target_accept}")


def _device(device: str, precision: str, marginal: str | None) -> tuple[torch.device, str]:
    """The device to evaluate on and the precision of importance sampling there ("auto": bf16
    where it is fast); an explicit bf16 needs importance sampling asked for and, on a CPU, bf16
    instructions (:mod:`aevb.hardware`)."""
    from ..marginal import check_precision, resolve_precision

    dev = resolve_device(device)
    if precision == "auto":
        return dev, resolve_precision(precision, dev)
    if precision != "float32" and marginal not in ("is", "both"):
        raise ConfigError(
            f"--importance-precision {precision} applies to importance sampling: "
            "add --marginal is (or both)"
        )
    check_precision(precision, dev, "--importance-precision")
    return dev, precision


def _take_points(
    x: np.ndarray, points: int | None, spread: bool, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of x evaluated and their indices: all, the first ``points``, or (``spread``)
    that many evenly spaced through it."""
    n = len(x)
    if points is None:
        return x, np.arange(n)
    if points < 1 or points > n:
        raise ConfigError(
            f"--points must be between 1 and the {n} points of the {split} split, got {points}"
        )
    index = (np.arange(points) * n) // points if spread else np.arange(points)
    return x[index], index


def _iwae(
    model: VAE,
    xt: torch.Tensor,
    iwae_samples: int | None,
    seed: int,
    dev: torch.device,
    cols: dict[str, torch.Tensor],
) -> dict:
    """The importance-weighted bound with K = ``iwae_samples``, its standard error and K (its
    value per point into ``cols``)."""
    if iwae_samples is None:
        return {}
    step = max(1, 20_000 // iwae_samples)  # at most ~20 000 decoded (z, x) pairs at once
    gi = torch.Generator(device=dev).manual_seed(split_seed(seed, 9))
    with torch.no_grad():
        w = torch.cat(
            [model.iwae_bound(xt[i : i + step], iwae_samples, gi) for i in range(0, len(xt), step)]
        )
    cols["iwae_bound"] = w
    return {
        "iwae_samples": iwae_samples,
        "iwae_bound": float(w.mean()),
        "iwae_bound_se": standard_error(w),
    }


def _marginals(
    model: VAE,
    xt: torch.Tensor,
    b: torch.Tensor,
    marginal: str | None,
    seed: int,
    dev: torch.device,
    progress: bool,
    settings: dict,
    workers: int | None,
    cols: dict[str, torch.Tensor],
) -> dict:
    """``{"marginal": {method: estimate}}``: log p(x) by each method asked for ("both": is, then
    hmc), each with its own generator (its value per point into ``cols``); ``{}`` without
    ``marginal``."""
    if marginal is None:
        return {}
    workers = workers or torch.get_num_threads()
    methods = ("is", "hmc") if marginal == "both" else (marginal,)
    out = {}
    for i, method in enumerate(methods):
        gm = torch.Generator(device=dev).manual_seed(split_seed(seed, 8, i))
        out[method] = _marginal_estimate(
            model, xt, b, method, gm, progress, cols, **settings, workers=workers
        )
    return {"marginal": out}


def _marginal_estimate(
    model: VAE,
    x: torch.Tensor,
    bound: torch.Tensor,
    method: str,
    generator: torch.Generator,
    progress: bool,
    cols: dict[str, torch.Tensor],
    **s: Any,
) -> dict:
    """log p(x) by one method: mean, standard error, paired gap to the bound, settings."""
    from .. import marginal as mlik

    label = "importance sampling" if method == "is" else "Appendix D (HMC)"
    t0 = time.perf_counter()
    r: mlik.ISResult | mlik.HMCMarginalResult
    with tqdm(total=len(x), desc=label, unit="points", disable=not progress, leave=False) as bar:
        if method == "is":
            r = mlik.importance_sampling(
                model,
                x,
                s["importance_samples"],
                chunk_size=s["chunk_size"],
                workers=s["workers"],
                generator=generator,
                progress=bar.update,
                precision=s["importance_precision"],
            )
        else:
            r = mlik.hmc_marginal(
                model,
                x,
                posterior_samples=s["hmc_samples"],
                leapfrog_steps=s["hmc_leapfrog"],
                warmup=s["hmc_warmup"],
                target_accept=s["hmc_target_accept"],
                workers=s["workers"],
                generator=generator,
                progress=bar.update,
            )
    seconds = time.perf_counter() - t0
    lp = r.log_px.double().cpu()
    cols[f"log_likelihood_{method}"] = lp
    gap = lp - bound.double().cpu()
    out = {
        "method": method,
        "log_likelihood": float(lp.mean()),
        "se": standard_error(lp),
        "gap": float(gap.mean()),
        "gap_se": standard_error(gap),
        "seconds": round(seconds, 3),
    }
    if isinstance(r, mlik.ISResult):  # method "is"
        ess = r.ess.double().cpu()
        if r.precision != "float32":  # what ran it: a GPU, the CPU's bf16 instructions, "forced"
            out["bf16_instructions"] = mlik.check_precision(r.precision, x.device)
        out.update(
            importance_samples=r.samples,
            chunk_size=r.chunk_size,
            precision=r.precision,
            workers=s["workers"],
            bound_k=float(r.bound.double().mean()),
            bound_k_se=standard_error(r.bound.double().cpu()),
            ess_mean=float(ess.mean()),
            ess_median=float(ess.median()),
            ess_min=float(ess.min()),
        )
    else:
        out.update(
            {k: v for k, v in r.settings.items() if k != "initial_step_size"},
            workers=s["workers"],
            accept_rate=float(r.accept_rate.mean()),
            step_size_median=float(r.step_size.median()),
            ess_median=float(r.ess.median()),
            rel_var_median=float(r.rel_var.median()),
        )
    return out
