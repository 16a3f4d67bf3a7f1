"""The paper's experiments (Section 5 and Appendix A) as configurations over the library.

Each figure is a :class:`Protocol`: panels of curves, every curve one ``aevb train`` run with the
paper's settings, plus how to draw and tabulate the result. :func:`reproduce` trains what is
missing (each curve in its own run directory, so an interrupted reproduction resumes), then writes
the figure as PNG and its final values as markdown and JSON. Nothing here knows more about
training than :func:`aevb.api.train` exposes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import api, figures, runs
from .errors import ConfigError, RunError

FIGURES = ("figure2", "figure3", "figure4", "figure5")
BUDGETS = ("smoke", "quick", "paper")
MNIST_DATA = ("binarized-mnist", "mnist")
MANIFEST = "reproduction.json"

# Training samples per curve. "paper" is the paper's own count where it gives one: 10^8 per curve
# in Figure 2 (its x-axis) and about 6 * 10^7 in Figure 3; Figures 4 and 5 state none, so they
# use Figure 2's. "smoke" only proves the pipeline end to end (the tests run it).
SAMPLES = {
    "figure2": {"smoke": 2_000, "quick": 3_000_000, "paper": 100_000_000},
    "figure3": {"smoke": 2_000, "quick": 1_000_000, "paper": 60_000_000},
    "figure4": {"smoke": 2_000, "quick": 3_000_000, "paper": 100_000_000},
    "figure5": {"smoke": 2_000, "quick": 3_000_000, "paper": 100_000_000},
}
EVAL_SIZE = {"smoke": 300, "quick": 10_000, "paper": 10_000}  # points per split per evaluation
# Figure 3's Appendix D estimate: the paper's 1 000 train and 1 000 test points at "paper".
MARGINAL_POINTS = {"smoke": 8, "quick": 200, "paper": 1_000}
# Figure 3's HMC chains per estimate: the smoke test only proves the pipeline (paper: 50 after 200)
HMC_CHAINS = {"smoke": {"eval_hmc_samples": 10, "eval_hmc_warmup": 20}}
GRID = {"smoke": 6, "quick": 20, "paper": 20}  # Figure 4: K x K manifold tiles
# Figure 4 keeps its model at these counts too, so the manifold is seen forming: at "paper", the
# quick budget's 3 * 10^6, then 10^7, beside the final 10^8 ("smoke" proves the pipeline).
SNAPSHOT_SAMPLES = {"smoke": [1_000], "quick": [], "paper": [3_000_000, 10_000_000]}
N_SAMPLES = {"smoke": 16, "quick": 100, "paper": 100}  # Figure 5: samples per panel

ALGORITHM_LABELS = {"aevb": "AEVB", "wake-sleep": "Wake-Sleep", "mcem": "MCEM"}


@dataclass(frozen=True)
class Curve:
    """One training run of a panel: an algorithm and the ``api.train`` options it runs with."""

    algorithm: str
    options: dict

    @property
    def label(self) -> str:
        return ALGORITHM_LABELS.get(self.algorithm, self.algorithm)


@dataclass(frozen=True)
class Panel:
    """One panel of a figure: a dataset and N_z (and N_train in Figure 3) with its curves."""

    key: str  # directory name, e.g. "mnist-nz3"
    title: str  # e.g. "MNIST, $N_z$ = 3"
    curves: tuple[Curve, ...]


@dataclass(frozen=True)
class Protocol:
    """A figure of the paper at one budget: its panels and how it is drawn."""

    figure: str
    budget: str
    samples: int
    panels: tuple[Panel, ...]
    metric: str  # what the curves show: "bound" or "log_likelihood"
    kind: str  # "curves" (Figures 2, 3), "manifold" (Figure 4), "samples" (Figure 5)
    title: str

    @property
    def runs(self) -> list[tuple[Panel, Curve]]:
        return [(p, c) for p in self.panels for c in p.curves]


@dataclass
class Reproduction:
    """What :func:`reproduce` wrote: the figure, the tables and the value rows they hold."""

    path: Path
    figure: Path
    table: Path
    json: Path
    rows: list[dict] = field(default_factory=list)


def protocol(figure: str, budget: str = "quick", mnist: str = "binarized-mnist") -> Protocol:
    """The paper's protocol for ``figure`` at ``budget`` (Section 5, Appendix A)."""
    if figure not in FIGURES:
        raise ConfigError(f"unknown figure {figure!r}; choose one of {', '.join(FIGURES)}")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if mnist not in MNIST_DATA:
        raise ConfigError(f"unknown --mnist {mnist!r}; choose one of {', '.join(MNIST_DATA)}")
    n = SAMPLES[figure][budget]
    # Section 5: Adagrad, step size from {0.01, 0.02, 0.1} by a short trial, M = 100, L = 1,
    # N(0, 0.01^2) initialisation, the N(0, I) weight prior; 500 hidden units for MNIST, 200 for
    # Frey Face. Log-spaced evaluations give the curves.
    common = {
        "optimizer": "adagrad",
        "lr": 0.02 if budget == "smoke" else "auto",  # smoke: no trial (tested on its own)
        "batch_size": 100,
        "samples": 1,
        "budget": n,
        "eval_size": EVAL_SIZE[budget],
        "eval_per_decade": 4,
        "seed": 0,
    }
    mnist_opts = {**common, "data": mnist, "hidden": 500}
    frey_opts = {**common, "data": "frey", "hidden": 200}

    def curves(opts: dict, algorithms: tuple[str, ...], **extra: Any) -> tuple[Curve, ...]:
        return tuple(Curve(a, {**opts, **extra, "algorithm": a}) for a in algorithms)

    def nz_panels(
        dataset: str, opts: dict, dims: tuple[int, ...], algs: tuple[str, ...]
    ) -> list[Panel]:
        name = "MNIST" if dataset == "mnist" else "Frey Face"
        return [
            Panel(f"{dataset}-nz{d}", f"{name}, $N_z$ = {d}", curves(opts, algs, latent_dim=d))
            for d in dims
        ]

    both = ("aevb", "wake-sleep")
    if figure == "figure2":  # bound vs samples, AEVB against wake-sleep
        panels = nz_panels("mnist", mnist_opts, (3, 5, 10, 20, 200), both)
        panels += nz_panels("frey", frey_opts, (2, 5, 10, 20), both)
        return Protocol(figure, budget, n, tuple(panels), "bound", "curves", "Figure 2")
    if figure == "figure3":  # marginal likelihood (Appendix D), N_z = 3, 100 hidden units
        opts = {
            **mnist_opts,
            "hidden": 100,
            "latent_dim": 3,
            "eval_marginal": "hmc",
            "eval_marginal_points": MARGINAL_POINTS[budget],
            # more points for the linear axis; few in the smoke test (each is an HMC estimate)
            "eval_per_decade": 1 if budget == "smoke" else 6,
            **HMC_CHAINS.get(budget, {}),
        }
        panels = [
            Panel(
                f"ntrain{size}",
                f"MNIST, $N_z$ = 3, $N_{{train}}$ = {size:,}",
                curves(opts, ("aevb", "wake-sleep", "mcem"), train_size=size),
            )
            for size in (1_000, 50_000)
        ]
        return Protocol(figure, budget, n, tuple(panels), "log_likelihood", "curves", "Figure 3")
    if figure == "figure4":  # learned 2-D manifolds
        kept = SNAPSHOT_SAMPLES[budget]
        snap = {"snapshots": kept} if kept else {}
        panels = [
            Panel("frey-nz2", "(a) Frey Face", curves(frey_opts, ("aevb",), latent_dim=2, **snap)),
            Panel("mnist-nz2", "(b) MNIST", curves(mnist_opts, ("aevb",), latent_dim=2, **snap)),
        ]
        return Protocol(figure, budget, n, tuple(panels), "bound", "manifold", "Figure 4")
    letters = "abcd"
    panels = [  # figure5: random samples from MNIST models
        Panel(
            f"mnist-nz{d}",
            f"({letters[i]}) {d}-D latent space",
            curves(mnist_opts, ("aevb",), latent_dim=d),
        )
        for i, d in enumerate((2, 5, 10, 20))
    ]
    return Protocol(figure, budget, n, tuple(panels), "bound", "samples", "Figure 5")


def select_panels(proto: Protocol, keys: Sequence[str]) -> Protocol:
    """``proto`` with only the panels named in ``keys`` (all of them when ``keys`` is empty)."""
    if not keys:
        return proto
    known = [p.key for p in proto.panels]
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(
            f"unknown --panel {unknown[0]!r} for {proto.figure}; choose from {', '.join(known)}"
        )
    return replace(proto, panels=tuple(p for p in proto.panels if p.key in keys))


def _check_out(out: Path, proto: Protocol, mnist: str) -> None:
    """Refuse to mix a reproduction with another figure or budget in one directory."""
    want = {"figure": proto.figure, "budget": proto.budget, "mnist": mnist}
    if (out / MANIFEST).exists():
        try:
            have = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise RunError(f"{out / MANIFEST}: unreadable ({e}); choose a new --out") from None
        got = {k: have.get(k) for k in want}
        if got != want:
            raise ConfigError(
                f"--out {out} holds a reproduction of {got['figure']} at budget {got['budget']} "
                f"on {got['mnist']}; choose another --out for {proto.figure} at {proto.budget}"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not a reproduction; choose a new directory")
    runs.make_dir(out)
    runs.atomic_write_json(out / MANIFEST, {**want, "samples_per_curve": proto.samples})


def _finished(run_dir: Path, samples: int) -> bool:
    """Whether the run in ``run_dir`` has trained its ``samples`` and saved its model."""
    if not (run_dir / runs.CONFIG).exists() or not runs.has_file(run_dir, runs.MODEL):
        return False
    records = runs.read_metrics(run_dir)
    return bool(records) and records[-1].get("samples_seen", 0) >= samples


def _curve_key(curve: Curve, samples: int) -> str:
    """What a curve trains; snapshots only keep copies of its model, so they do not count."""
    options = {k: v for k, v in curve.options.items() if k != "snapshots"}
    return json.dumps({"options": options, "samples": samples}, sort_keys=True)


def _reusable(sources: list[Path], out: Path) -> dict[str, Path]:
    """Finished curves of other reproductions, by what they trained (options and samples)."""
    found: dict[str, Path] = {}
    for src in sources:
        try:
            have = json.loads((src / MANIFEST).read_text())
            other = protocol(have["figure"], have["budget"], have["mnist"])
        except (OSError, ValueError, KeyError, ConfigError):
            raise ConfigError(
                f"--reuse {src}: not a reproduction (no readable {MANIFEST}); "
                "give a folder that aevb reproduce wrote"
            ) from None
        if src.resolve() == out.resolve():
            continue
        for panel, curve in other.runs:
            run_dir = src / panel.key / curve.algorithm
            if _finished(run_dir, other.samples):
                found.setdefault(_curve_key(curve, other.samples), run_dir)
    return found


def shareable_siblings(out: Path, proto: Protocol) -> list[Path]:
    """Reproduction folders beside ``out`` that hold finished curves ``proto`` would train again."""
    if not out.parent.is_dir():
        return []
    keys = {
        _curve_key(c, proto.samples)
        for p, c in proto.runs
        if not _finished(out / p.key / c.algorithm, proto.samples)  # only what is still to train
    }
    if not keys:
        return []
    found = []
    for d in sorted(out.parent.iterdir()):
        if d.is_dir() and d.resolve() != out.resolve() and (d / MANIFEST).is_file():
            try:
                if keys & set(_reusable([d], out)):
                    found.append(d)
            except ConfigError:  # an unreadable manifest: not ours to judge here
                continue
    return found


def _copy_run(src: Path, dst: Path) -> None:
    """Copy a finished run directory into place (whole or not at all). ``dst`` holds no run
    (no config.json): at most the leftovers of a curve that never started, which go."""
    import shutil

    runs.make_dir(dst.parent)
    tmp = dst.parent / f".{dst.name}.copying"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _train_curve(
    run_dir: Path,
    options: dict,
    samples: int,
    data_dir: str | Path | None,
    device: str,
    progress: bool,
    threads: int | None = None,
    draw: bool = True,
) -> None:
    """Train one curve to ``samples``: start it, resume it, or leave it if it is done.

    ``draw``: the run's own figures (the smoke protocol, which only proves the pipeline, skips
    them: the reproduction's figure is drawn from every curve's metrics either way)."""
    if threads is not None:  # a worker process of a parallel reproduction
        torch.set_num_threads(threads)
    if _finished(run_dir, samples):
        return
    common: dict[str, Any] = {"device": device, "progress": progress, "draw_figures": draw}
    if (run_dir / runs.CONFIG).exists():
        api.train(resume=run_dir, budget=samples, **common)
    else:
        api.train(out=run_dir, data_dir=data_dir, **common, **options)


def reproduce(
    figure: str,
    budget: str = "quick",
    out: str | Path | None = None,
    *,
    mnist: str = "binarized-mnist",
    data_dir: str | Path | None = None,
    device: str = "auto",
    jobs: int = 1,
    reuse: Sequence[str | Path] = (),
    panels: Sequence[str] = (),
    progress: bool = True,
) -> Reproduction:
    """Run the paper's protocol for ``figure`` and write its PNG, markdown table and JSON.

    Every curve trains in ``out/<panel>/<algorithm>``; curves already trained are kept and a
    curve that was interrupted resumes, so calling this again finishes a stopped reproduction.
    ``out`` defaults to ``reproductions/<figure>-<budget>``. ``mnist`` chooses the MNIST data:
    the fixed binarization (default; its 50 000 training images) or grey MNIST used as Bernoulli
    targets (the paper-era convention; needs MNIST's training images). ``jobs`` > 1 trains that
    many curves at once in worker processes, sharing the CPU threads between them (the models
    are small, so on CPU two one-thread runs do more than one two-thread run). ``reuse`` names
    other reproductions' folders: a curve not started here that one of them trained with the same
    options and budget is copied instead of trained (Figure 5's curves are Figure 2's AEVB MNIST
    curves and Figure 4's MNIST one). ``panels`` (keys such as ``"mnist-nz20"``) restricts the
    call to those panels, in the figure, table and JSON too; a later call without it trains the
    rest (for a budget too long to run whole, such as ``paper``).
    """
    proto = select_panels(protocol(figure, budget, mnist), panels)
    if not 1 <= jobs <= 64:
        raise ConfigError(f"--jobs must be between 1 and 64, got {jobs}")
    out = Path(out) if out is not None else Path("reproductions") / f"{figure}-{budget}"
    found = _reusable([Path(r) for r in reuse], out)  # a bad --reuse fails before OUT is made
    if progress and not reuse:
        for d in shareable_siblings(out, proto):
            tqdm.write(f"{d} holds curves of {figure} at this budget: add --reuse {d} to copy them")
    _check_out(out, proto, mnist)
    started = time.perf_counter()
    todo = [(p, c, out / p.key / c.algorithm) for p, c in proto.runs]
    copied = _copy_reused(proto, todo, found, budget, progress)

    def where(i: int, panel: Panel, curve: Curve) -> str:
        n = len(todo)
        return f"{proto.figure} [{budget}] run {i}/{n}: {_plain(panel.title)} · {curve.label}"

    if jobs == 1:
        for i, (panel, curve, run_dir) in enumerate(todo, 1):
            if progress:
                state = (
                    "trained already"
                    if _finished(run_dir, proto.samples)
                    else "resuming"
                    if (run_dir / runs.CONFIG).exists()
                    else "training"
                )
                tqdm.write(f"{where(i, panel, curve)}: {state} in {run_dir}")
            _train_curve(
                run_dir,
                curve.options,
                proto.samples,
                data_dir,
                device,
                progress,
                draw=proto.budget != "smoke",
            )
    else:
        _train_parallel(proto, todo, data_dir, device, jobs, progress, where)
    summary = {"budget": budget, "mnist": mnist, "curves_copied_this_call": copied}
    return _write_results(proto, todo, out, summary, started, progress)


def _copy_reused(proto: Protocol, todo: list, found: dict, budget: str, progress: bool) -> int:
    """Copy the curves another reproduction trained (``--reuse``) that are not started here."""
    copied = 0
    for i, (_, curve, run_dir) in enumerate(todo, 1):
        src = found.get(_curve_key(curve, proto.samples))
        if src is not None and not (run_dir / runs.CONFIG).exists():
            _copy_run(src, run_dir)
            copied += 1
            if progress:
                tqdm.write(f"{proto.figure} [{budget}] run {i}/{len(todo)}: copied from {src}")
    return copied


def _write_results(
    proto: Protocol, todo: list, out: Path, summary: dict, started: float, progress: bool
) -> Reproduction:
    """The figure (PNG), its table (markdown) and its values (JSON), from the trained curves."""
    figure = proto.figure
    results = [
        (p, c, api.Run(d, api.load(d), runs.read_config(d), runs.read_metrics(d)))
        for p, c, d in todo
    ]
    rows = [_row(panel, curve, run) for panel, curve, run in results]
    fig_path = out / f"{figure}.png"
    _draw(proto, results, fig_path)
    table = out / f"{figure}.md"
    runs.atomic_write_bytes(table, _markdown(proto, rows, summary["mnist"]).encode())
    js = out / f"{figure}.json"
    wall = time.perf_counter() - started
    runs.atomic_write_json(
        js,
        {
            "figure": figure,
            "budget": summary["budget"],
            "mnist": summary["mnist"],
            "samples_per_curve": proto.samples,
            "train_seconds": sum(r["seconds"] or 0.0 for r in rows),
            "this_call_seconds": round(wall, 1),
            "curves_copied_this_call": summary["curves_copied_this_call"],
            "panels": [p.key for p in proto.panels],
            "rows": rows,
        },
    )
    if proto.kind == "manifold":
        _write_budget_effect(proto, todo, out)
    if progress:
        tqdm.write(f"{figure}: figure {fig_path}, table {table}, values {js}")
    return Reproduction(out, fig_path, table, js, rows)


def _write_budget_effect(proto: Protocol, todo: list[tuple[Panel, Curve, Path]], out: Path) -> None:
    """Figure 4 as it formed: per panel, the manifold at each snapshot the run kept and at its
    end (``<panel>-budget.png``), with the bound there and the spread of the codes per dimension
    (``budget.json``, ``budget.md``). Nothing is written for runs without snapshots."""
    rows: list[dict] = []
    for panel, _curve, run_dir in todo:
        kept: list[int | str] = list(runs.snapshots(run_dir))
        if not kept:
            continue
        grids = []
        metrics = runs.read_metrics(run_dir)
        for which in [*kept, "last"]:
            row = _snapshot_row(panel, run_dir, metrics, which)
            k = GRID[proto.budget]
            model = api.load(run_dir, which=which)
            with torch.no_grad():
                x = model.decode_mean(figures.manifold_latents(k))
            image = figures.image_grid(x, model.config.image_shape, k, pad=0)
            grids.append((f"{row['samples']:,} samples", image))
            rows.append(row)
        figures.plot_image_panels(grids, out / f"{panel.key}-budget.png", title=_plain(panel.title))
    if rows:
        runs.atomic_write_json(out / "budget.json", {"rows": rows})
        runs.atomic_write_bytes(out / "budget.md", _budget_markdown(rows).encode())


def _snapshot_row(panel: Panel, run_dir: Path, metrics: list[dict], which: int | str) -> dict:
    """One model of a run: its samples, the last evaluation's test bound by then, and the
    standard deviation over the training set of each dimension's posterior center."""
    if which == "last":
        samples = metrics[-1]["samples_seen"]
    else:
        _, meta = runs.load_run_tensors(run_dir, runs.snapshot_name(int(which)))
        samples = int(meta["samples_seen"])
    evals = [r for r in metrics if r["samples_seen"] <= samples and "test_bound" in r]
    centers = api.encode(run_dir, split="train", which=which).center.astype(np.float64)
    return {
        "panel": panel.key,
        "samples": samples,
        "evaluated_at": evals[-1]["samples_seen"] if evals else None,
        "test_bound": evals[-1]["test_bound"] if evals else None,
        "test_bound_se": evals[-1].get("test_bound_se") if evals else None,
        "code_std": [float(f"{v:.4g}") for v in centers.std(0)],
    }


def _budget_markdown(rows: list[dict]) -> str:
    lines = [
        "| panel | samples | test bound (at the evaluation before) | codes' std per dimension |",
        "|---|---|---|---|",
    ]
    for r in rows:
        bound = _fmt(r["test_bound"], r["test_bound_se"])
        at = f" (at {r['evaluated_at']:,})" if r["evaluated_at"] else ""
        std = ", ".join(f"{v:.3g}" for v in r["code_std"])
        lines.append(f"| {r['panel']} | {r['samples']:,} | {bound}{at} | {std} |")
    return "\n".join(lines) + "\n"


def _train_parallel(
    proto: Protocol,
    todo: list,
    data_dir: str | Path | None,
    device: str,
    jobs: int,
    progress: bool,
    where: Callable[[int, Panel, Curve], str],
) -> None:
    """Train the curves in ``jobs`` spawned worker processes; one line per finished curve."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .data import load_dataset

    # a missing or broken data file: one error line here, before any worker or progress bar
    for name in sorted({c.options["data"] for _, c, d in todo if not _finished(d, proto.samples)}):
        load_dataset(name, data_dir=data_dir, progress=progress)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")  # torch state is not fork-safe
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {
            pool.submit(
                _train_curve,
                d,
                c.options,
                proto.samples,
                data_dir,
                device,
                False,
                threads,
                proto.budget != "smoke",
            ): (i, p, c, d)
            for i, (p, c, d) in enumerate(todo, 1)
        }
        bar = tqdm(total=len(todo), unit="curve", disable=not progress, desc=proto.figure)
        try:
            for fut in as_completed(futures):
                i, p, c, d = futures[fut]
                fut.result()  # a worker's error (ConfigError, DataError, ...) is raised here
                bar.update(1)
                if progress:
                    last = runs.read_metrics(d)[-1]
                    vals = "  ".join(
                        f"{k} {last[k]:.2f}"
                        for k in ("train_bound", "test_bound", "test_log_likelihood")
                        if k in last
                    )
                    tqdm.write(f"{where(i, p, c)}: done ({vals})")
        except BaseException:
            # an error or Ctrl-C: cancel the queued curves and stop the running ones as Ctrl-C
            # stops them (their checkpoints resume them), rather than wait for them to finish
            for fut in futures:
                fut.cancel()
            _interrupt(multiprocessing.active_children())
            raise
        finally:
            bar.close()


def _interrupt(processes: list) -> None:
    """Send SIGINT to each process (a worker that already left is skipped)."""
    import signal

    for proc in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)


def _plain(title: str) -> str:
    """A panel title without matplotlib's math markup (for terminals and tables)."""
    return title.replace("$N_z$", "N_z").replace("$N_{train}$", "N_train")


def _final(records: list[dict], split: str, metric: str) -> tuple[float | None, float | None]:
    """The last logged value of ``split``'s ``metric`` and its standard error."""
    for r in reversed(records):
        if f"{split}_{metric}" in r:
            return r[f"{split}_{metric}"], r.get(f"{split}_{metric}_se")
    return None, None


def _row(panel: Panel, curve: Curve, run: api.Run) -> dict:
    last = run.metrics[-1] if run.metrics else {}
    row = {
        "panel": panel.key,
        "title": _plain(panel.title),
        "algorithm": curve.label,
        "latent_dim": run.model.config.latent_dim,
        "hidden": run.model.config.hidden,
        "n_train": run.config["data"]["n_train"],
        "samples": last.get("samples_seen"),
        "lr": run.config["train"]["lr"],
        "seconds": last.get("seconds"),
        "run": str(run.path),
    }
    for metric in ("bound", "log_likelihood", "bound_subset"):
        for split in ("train", "test"):
            v, se = _final(run.metrics, split, metric)
            if v is not None:
                row[f"{split}_{metric}"], row[f"{split}_{metric}_se"] = v, se
    return row


def _fmt(v: float | None, se: float | None = None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f} ± {se:.2f}" if se is not None and math.isfinite(se) else f"{v:.2f}"


def _markdown(proto: Protocol, rows: list[dict], mnist: str) -> str:
    """The final values as a markdown table (nats per datapoint; ± one standard error)."""
    what = {
        "bound": "lower bound",
        "bound_subset": "lower bound",
        "log_likelihood": "log p(x) (Appendix D estimate)",
    }
    lines = [
        f"# {proto.title}, budget `{proto.budget}` ({proto.samples:,} training samples per curve)",
        "",
        f"MNIST data: `{mnist}`. Values in nats per datapoint at the end of training, ± one "
        "standard error over the evaluated points.",
        "",
    ]
    if proto.metric == "log_likelihood":
        n = MARGINAL_POINTS[proto.budget]
        lines += [
            f"Bound and log p(x) on the first {n:,} points of each split (Appendix D: HMC with 4 "
            "leapfrog steps, 50 posterior samples, a Gaussian fit); MCEM has no bound.",
            "",
        ]
    # Figure 3: log p(x) on the first points of each split, beside the bound on those same points
    metrics = ["bound_subset", "log_likelihood"] if proto.metric == "log_likelihood" else ["bound"]
    head = ["panel", "algorithm", "N_train", "Adagrad lr"]
    for m in metrics:
        head += [f"train {what[m]}", f"test {what[m]}"]
    head += ["train seconds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["title"], r["algorithm"], f"{r['n_train']:,}", f"{r['lr']:g}"]
        for m in metrics:
            for split in ("train", "test"):
                cells.append(_fmt(r.get(f"{split}_{m}"), r.get(f"{split}_{m}_se")))
        cells.append("–" if r["seconds"] is None else f"{r['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _draw(proto: Protocol, results: list[tuple[Panel, Curve, api.Run]], path: Path) -> None:
    """The figure in the paper's layout."""
    if proto.kind == "curves":
        panels: dict[str, tuple[str, list]] = {}
        for panel, curve, run in results:
            panels.setdefault(panel.key, (panel.title, []))[1].append((curve.label, run.metrics))
        figures.plot_panels(
            list(panels.values()),
            path,
            metric=proto.metric,
            title=proto.title,
            xscale="log" if proto.metric == "bound" else "linear",
            ncols=5 if proto.figure == "figure2" else 2,
            legend_cols=4 if proto.figure == "figure2" else 3,
        )
        return
    grids = []
    for panel, _curve, run in results:
        model = run.model
        if proto.kind == "manifold":
            k = GRID[proto.budget]
            z = figures.manifold_latents(k).to(model.device)
            with torch.no_grad():
                x = model.decode_mean(z)
            grids.append((panel.title, figures.image_grid(x, model.config.image_shape, k, pad=0)))
        else:
            n = N_SAMPLES[proto.budget]
            x = model.sample(n, torch.Generator(device=model.device).manual_seed(0))
            ncol = int(math.isqrt(n))
            grid = figures.image_grid(x, model.config.image_shape, ncol, pad=0)
            grids.append((panel.title, grid))
    figures.plot_image_panels(grids, path, title=proto.title)
