"""``aevb gradients RUNDIR``: the variance of each estimator's gradient at a run's model.

The math is :mod:`aevb.gradients`; this module picks the model (the run's trained one, or its
initialisation rebuilt from config.json and the seed), one fixed minibatch of the run's data, and
writes the result: ``gradients_{at}.json`` and a log-scale bar chart ``gradients_{at}.png`` in
``out`` (default ``RUNDIR/gradients``, a folder the run's manifest does not list: the run's own
files are never touched).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import figures, runs
from ..errors import ConfigError, RunError
from ..gradient_variance import (
    GRADIENT_ESTIMATORS,
    GradientMoments,
    gradient_moments,
    variance_ratios,
)
from ..model import VAE, ModelConfig
from ..seeds import split_seed
from ..settings import TrainConfig
from .common import _run_data, load, resolve_device
from .training import _build_model

DEFAULT_DRAWS = 500
"""Gradient draws per estimator: the 4 estimators take ~5 s on the digits model on 2 cores."""

NO_ENCODER = {
    "mcem": "Monte Carlo EM trains no encoder (its q(z|x) stays at its initialisation)",
    "autoencoder": "the auto-encoder's encoder has no trained posterior variance",
}
"""Algorithms whose runs have no trained q(z|x) to measure gradients of, and why."""


def gradients(
    run_dir: str | Path,
    *,
    at: str = "trained",
    draws: int = DEFAULT_DRAWS,
    batch_size: int = 100,
    estimators: list[str] | tuple[str, ...] | None = None,
    split: str = "test",
    data: str | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
    baseline_draws: int | None = None,
    out: str | Path | None = None,
    write: bool = True,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Each estimator's gradient of the minibatch bound wrt the encoder, drawn ``draws`` times.

    ``at`` is "trained" (the run's model) or "init" (its initial parameters, rebuilt from
    config.json with the run's seed). The minibatch is ``batch_size`` rows of ``split`` drawn by
    ``seed`` (binarized as evaluation does). ``estimators`` default to A, B (where the KL is
    analytic), score-function and score-function-baseline (:mod:`aevb.gradients`). Returns a
    JSON-ready dict: per estimator and parameter tensor the total variance, mean squared norm
    and squared norm of the mean, and the ratios "score-function/B" etc. With ``write`` it is
    also written as ``gradients_{at}.json`` beside a bar chart ``gradients_{at}.png`` in ``out``
    (default ``RUNDIR/gradients``). Bad input is a :class:`~aevb.errors.ConfigError`.
    """
    run_dir = Path(run_dir)
    _check_counts(draws, batch_size, baseline_draws, at)
    cfg = runs.read_config(run_dir)
    algorithm = cfg["train"].get("algorithm", "aevb")
    if algorithm in NO_ENCODER:
        raise ConfigError(
            f"{run_dir} was trained with --algorithm {algorithm}: {NO_ENCODER[algorithm]}; "
            "measure an aevb, wake-sleep or full-vb run"
        )
    folder = Path(out) if out is not None else run_dir / "gradients"
    if write:  # before the measurement: a folder that cannot be written is an error now
        runs.make_dir(folder)
        runs.check_writable(folder)
    model = _initial_model(run_dir, cfg, data_dir) if at == "init" else load(run_dir)
    names = _estimators(estimators, model)
    dev = resolve_device(device)
    model = model.to(dev)
    _, rows, mode, _ = _run_data(run_dir, data, split, data_dir, None)
    if batch_size > len(rows):
        raise ConfigError(
            f"--batch-size {batch_size} needs that many points; {split} has {len(rows)}"
        )
    index = np.sort(np.random.default_rng(seed).choice(len(rows), batch_size, replace=False))
    x = torch.from_numpy(np.ascontiguousarray(rows[index])).to(dev)
    t0 = time.perf_counter()
    results = _measure(model, x, names, draws, seed, baseline_draws, progress)
    res = _report(results, cfg, (at, split, mode), seed, batch_size, baseline_draws or draws)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    if write:
        _write(res, folder, at)
    return res


def _check_counts(draws: int, batch_size: int, baseline_draws: int | None, at: str) -> None:
    """One-line errors for counts and choices that cannot work."""
    if draws < 2:
        raise ConfigError(f"too few draws to estimate a variance: --draws {draws}; give at least 2")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
    if baseline_draws is not None and baseline_draws < 1:
        raise ConfigError(f"--baseline-draws must be a positive integer, got {baseline_draws}")
    if at not in ("trained", "init"):
        raise ConfigError(f"unknown --at {at!r}; choose trained or init")


def _estimators(estimators: list[str] | tuple[str, ...] | None, model: VAE) -> list[str]:
    """The estimators measured: those asked for, checked, or every one the model supports."""
    analytic = model.config.supports_estimator("B")
    if estimators is None:
        return [e for e in GRADIENT_ESTIMATORS if e != "B" or analytic]
    names = list(dict.fromkeys(estimators))
    for e in names:
        if e not in GRADIENT_ESTIMATORS:
            raise ConfigError(
                f"unknown gradient estimator {e!r}; choose from {', '.join(GRADIENT_ESTIMATORS)}"
            )
    if "B" in names and not analytic:
        c = model.config
        raise ConfigError(
            f"estimator B needs an analytic KL({c.posterior} || {c.prior}), which has no closed "
            "form; leave B out"
        )
    if not names:
        raise ConfigError("give at least one estimator")
    return names


def _initial_model(run_dir: Path, cfg: dict, data_dir: str | Path | None) -> VAE:
    """The run's model before training: rebuilt from config.json with its seed, as training
    built it (the training split is read for the decoder bias a run may start at its mean)."""
    try:
        mcfg, tcfg = ModelConfig(**cfg["model"]), TrainConfig(**cfg["train"])
    except TypeError as e:
        raise RunError(f"{run_dir / runs.CONFIG}: settings this aevb does not know ({e})") from None
    rows = _run_data(run_dir, None, "train", data_dir, "grey")[1]
    limit = cfg["data"].get("train_size")
    train_x = torch.from_numpy(np.ascontiguousarray(rows[:limit] if limit else rows))
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        model = _build_model(mcfg, tcfg, torch.device("cpu"), train_x)
    model.eval()
    return model


def _measure(
    model: VAE,
    x: torch.Tensor,
    names: list[str],
    draws: int,
    seed: int,
    baseline_draws: int | None,
    progress: bool,
) -> dict[str, GradientMoments]:
    """gradient_moments for each estimator, one progress bar. Common random numbers: each
    estimator starts from the same noise stream, so their ratios are paired comparisons."""
    out = {}
    with tqdm(total=draws * len(names), desc="gradient draws", disable=not progress) as bar:
        for est in names:
            bar.set_postfix_str(est)
            g = torch.Generator(device=x.device).manual_seed(split_seed(seed, 10))
            out[est] = gradient_moments(
                model.encoder,
                model.decoder,
                model.prior,
                x,
                est,
                draws,
                g,
                baseline_draws=baseline_draws,
                on_draws=bar.update,
            )
    return out


def _report(
    results: dict[str, GradientMoments],
    cfg: dict,
    where: tuple[str, str, str],
    seed: int,
    batch_size: int,
    baseline_draws: int,
) -> dict[str, Any]:
    """The measurement as a JSON-ready dict; ``where`` is (at, split, binarization)."""
    first = next(iter(results.values()))
    at, split, mode = where
    return {
        "data": cfg["data"].get("spec"),
        "split": split,
        "binarize": mode,
        "at": at,
        "batch_size": batch_size,
        "draws": first.draws,
        "baseline_draws": baseline_draws if "score-function-baseline" in results else None,
        "seed": seed,
        "groups": list(first.mean),
        "estimators": {est: r.summary() for est, r in results.items()},
        "ratios": variance_ratios(results),
    }


def _write(res: dict[str, Any], out: Path, at: str) -> None:
    """gradients_{at}.json and gradients_{at}.png in ``out``, each written atomically."""
    png = out / f"gradients_{at}.png"
    plot_variances(res, png)
    res["json"], res["figure"] = str(out / f"gradients_{at}.json"), str(png)
    runs.atomic_write_json(out / f"gradients_{at}.json", res)


def plot_variances(res: dict[str, Any], path: Path) -> None:
    """A log-scale bar chart: total variance per parameter tensor (and all), one bar per
    estimator."""
    plt = figures._pyplot()
    groups = [*res["groups"], "all"]
    ests = list(res["estimators"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) + 2), 4), dpi=100)
    width = 0.8 / len(ests)
    top = 1e-300
    for k, est in enumerate(ests):
        tv = [max(res["estimators"][est][g]["total_variance"], 1e-300) for g in groups]
        ax.bar(np.arange(len(groups)) + (k - (len(ests) - 1) / 2) * width, tv, width, label=est)
        top = max(top, *tv)
    ax.set_yscale("log")
    ax.set_ylim(top=top * 300)  # room for the legend above the bars
    ax.set_xticks(np.arange(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("total variance (trace of the covariance)")
    ax.set_title(
        f"Encoder gradient of the minibatch bound: {res['data']} {res['split']}, "
        f"M={res['batch_size']}, {res['draws']} draws, {res['at']} model",
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=len(ests), loc="upper left")
    fig.tight_layout()
    figures._save_figure(fig, path)


def render_gradients(res: dict[str, Any]) -> str:
    """The measurement as a table: total variance per parameter tensor and estimator, then the
    ratios of the score-function estimators' to the reparameterized ones'."""
    ests = list(res["estimators"])
    groups = [*res["groups"], "all"]
    w = max(len(g) for g in groups) + 2
    lines = [
        f"gradient of the minibatch bound wrt the encoder: {res['data']} {res['split']}, "
        f"M={res['batch_size']}, {res['draws']} draws per estimator, {res['at']} model "
        f"({res['seconds']:.1f} s)",
        "total variance (trace of the covariance; mean squared norm = this + squared norm of "
        "the mean):",
        "".join([f"{'parameter':<{w}}", *(f"{e:>26}" for e in ests)]),
    ]
    for g in groups:
        cells = (f"{res['estimators'][e][g]['total_variance']:>26.4g}" for e in ests)
        lines.append("".join([f"{g:<{w}}", *cells]))
    if res["ratios"]:
        lines.append("variance ratios (all parameters):")
        for name, r in res["ratios"].items():
            lines.append(f"  {name:<32} {r['all']:>12.4g}")
    if "json" in res:
        lines.append(f"written: {res['json']}, {res['figure']}")
    return "\n".join(lines)
