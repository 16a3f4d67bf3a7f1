"""The ``aevb`` command line: a thin layer over :mod:`aevb.api`.

Bad input (unknown option, missing file, malformed data, unsupported value) prints one line
``aevb: error: ...`` naming the problem and the fix, and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, api, compat, distributed, experiments, runs, settings
from .api.gradients import DEFAULT_DRAWS as GRADIENT_DRAWS
from .api.tools import GRIDS as MANIFOLD_GRIDS
from .config import load_config
from .data import BINARIZE_MODES
from .errors import AevbError, ConfigError
from .options import MAX_COUNT, bounded_int, positive_int
from .selection import metric_for


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"aevb: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


_seed = bounded_int(0, 2**63 - 1, "a seed from 0 to 2^63-1")
_steps = bounded_int(0, MAX_COUNT, "a number from 0 to 10^15")


def _data_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--data",
        default=default,
        help="dataset name (digits, mnist, binarized-mnist, frey), a .npy/.npz/.csv file (rows "
        "are datapoints) or a folder of images"
        + (f" (default: {default})" if default else " (default: the run's training data)"),
    )
    p.add_argument(
        "--data-dir",
        help="folder holding mnist/, binarized_mnist/, frey/ (else $AEVB_DATA_DIR, else "
        "~/.cache/aevb; missing files are downloaded there)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aevb",
        description="Auto-Encoding Variational Bayes: train and use variational auto-encoders.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"aevb {__version__} (run format {runs.FORMAT_VERSION}; {compat.describe()})",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a VAE with AEVB (Algorithm 1)")
    _add_train_arguments(t)
    t.set_defaults(func=_cmd_train)
    _add_evaluate_parser(sub)
    _add_compare_parser(sub)
    _add_tool_parsers(sub)
    _add_plot_interpolate_verify_parsers(sub)
    _add_export_info_parsers(sub)
    _add_gradients_parser(sub)
    _add_reproduce_parser(sub)
    _add_explore_parser(sub)
    return parser


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``aevb train``: the run's place, then one flag per declared option (aevb.settings)."""
    parser.add_argument("--out", help="run directory to create (required unless --resume)")
    parser.add_argument(
        "--resume",
        metavar="RUNDIR",
        help="continue this run where it stopped (with --budget, --epochs, --device or "
        "--data-dir only)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or JSON file of train options (or a run's config.json); flags override it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    settings.add_train_arguments(parser)


def _add_evaluate_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    e = sub.add_parser("evaluate", help="lower bound on a split, with its standard error")
    e.add_argument("run_dir", metavar="RUNDIR")
    _data_args(e, None)
    e.add_argument("--split", default="test", help="train, test or valid (default test)")
    e.add_argument("--binarize", choices=BINARIZE_MODES, help="default: the run's")
    e.add_argument("--estimator", choices=["A", "B"], help="ELBO estimator (default: the run's)")
    e.add_argument("--samples", type=positive_int, default=1)
    e.add_argument(
        "--iwae-samples",
        type=positive_int,
        help="also the importance-weighted bound with K samples (default: K of an iwae run)",
    )
    e.add_argument("--seed", type=_seed, default=0)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--marginal",
        choices=["is", "hmc", "both"],
        help="also estimate log p(x): importance sampling, Appendix D (HMC), or both",
    )
    e.add_argument(
        "--importance-samples", type=positive_int, default=5000, help="K for --marginal is"
    )
    e.add_argument(
        "--importance-precision",
        choices=["auto", "float32", "bf16"],
        default="auto",
        help="the decoder's products in --marginal is: bf16 on the same draws as float32 "
        "(CUDA, or a CPU with bf16 instructions; docs/EVALUATION.md has its bias, < 0.02 nats), "
        "float32, or auto (default): bf16 where it is fast, float32 elsewhere",
    )
    e.add_argument("--points", type=positive_int, help="use the first N points of the split")
    e.add_argument(
        "--spread", action="store_true", help="--points N evenly spaced through the split"
    )
    e.add_argument(
        "--chunk-size", type=positive_int, default=4096, help="(z, x) pairs decoded at once"
    )
    e.add_argument(
        "--hmc-samples", type=positive_int, default=50, help="HMC posterior draws per point"
    )
    e.add_argument(
        "--hmc-leapfrog",
        "--leapfrog-steps",
        dest="hmc_leapfrog",
        type=positive_int,
        default=4,
        help="leapfrog steps per HMC transition",
    )
    e.add_argument(
        "--hmc-warmup", type=_steps, default=200, help="step-size adaptation transitions"
    )
    e.add_argument(
        "--hmc-target-accept",
        "--target-accept",
        dest="hmc_target_accept",
        type=float,
        default=0.9,
        help="HMC acceptance target",
    )
    e.add_argument(
        "--workers", type=positive_int, help="CPU worker threads for --marginal (default: threads)"
    )
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    e.add_argument(
        "--which",
        "--model",
        dest="which",
        default="last",
        help="best: the model with the best validation bound (runs trained with --keep best); "
        "N: the snapshot kept after N training samples (--snapshots)",
    )
    e.add_argument(
        "--per-point",
        metavar="FILE",
        help="also write each point's values to this CSV file (for aevb compare)",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_evaluate)


def _add_compare_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    c = sub.add_parser(
        "compare", help="two models on the same points: the mean difference, paired SE"
    )
    c.add_argument("a", metavar="A.csv", help="a file written by aevb evaluate --per-point")
    c.add_argument("b", metavar="B.csv", help="another, on the same points")
    c.add_argument(
        "--column",
        help="the value compared (default: log_likelihood_is, log_likelihood_hmc, iwae_bound "
        "or bound, the first both files hold)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_cmd_compare)


def _add_tool_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    s = sub.add_parser("sample", help="decoder means for z drawn from the prior")
    s.add_argument("run_dir", metavar="RUNDIR")
    s.add_argument("--n", type=positive_int, default=100)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--out", required=True, help="FILE.png (grid) or FILE.npy")
    s.set_defaults(func=_cmd_sample)

    m = sub.add_parser("manifold", help="Figure 4: the learned 2-D manifold")
    m.add_argument("run_dir", metavar="RUNDIR")
    m.add_argument("--grid", type=positive_int, default=20, help="K x K tiles (default 20)")
    m.add_argument(
        "--grid-over",
        choices=MANIFOLD_GRIDS,
        default="prior",
        help="prior: the paper's grid (the prior's quantiles); codes: between the 1%% and 99%% "
        "quantiles of the training set's codes",
    )
    m.add_argument(
        "--dims",
        nargs=2,
        type=int,
        metavar=("I", "J"),
        help="the two latent dimensions to vary, from 0 (default: the two with the largest KL); "
        "the others are held at 0",
    )
    m.add_argument("--which", default="last", help="last, best, or a snapshot's sample count")
    m.add_argument(
        "--data", help="the data whose codes --grid-over codes follows (default: the run's)"
    )
    m.add_argument("--data-dir", help="where named datasets are kept")
    m.add_argument("--out", required=True, help="FILE.png or FILE.npy")
    m.set_defaults(func=_cmd_manifold)

    r = sub.add_parser("reconstruct", help="data beside its reconstructions")
    r.add_argument("run_dir", metavar="RUNDIR")
    _data_args(r, None)
    r.add_argument("--split", default="test")
    r.add_argument("--n", type=positive_int, default=50)
    r.add_argument("--out", required=True, help="FILE.png or FILE.npy")
    r.set_defaults(func=_cmd_reconstruct)

    c = sub.add_parser("encode", help="posterior means and log-variances")
    c.add_argument("run_dir", metavar="RUNDIR")
    _data_args(c, None)
    c.add_argument("--split", default="test")
    c.add_argument("--binarize", choices=BINARIZE_MODES)
    c.add_argument("--out", required=True, help="Z.npy ([mu, logvar] columns) or Z.npz")
    c.set_defaults(func=_cmd_encode)

    dc = sub.add_parser("decode", help="decoder means for latent points (data units)")
    dc.add_argument("run_dir", metavar="RUNDIR")
    dc.add_argument("--latents", required=True, help="Z.npy or Z.npz (as written by encode)")
    dc.add_argument("--out", required=True, help="X.csv, X.npy or X.png")
    dc.set_defaults(func=_cmd_decode)


def _add_plot_interpolate_verify_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    pl = sub.add_parser("plot", help="bound-vs-samples curves of several runs on one figure")
    pl.add_argument("run_dirs", metavar="RUNDIR", nargs="+")
    pl.add_argument("--out", required=True, help="FILE.png")
    pl.add_argument("--labels", help="comma-separated curve labels (default: directory names)")
    pl.add_argument(
        "--metric",
        choices=["bound", "iwae_bound", "log_likelihood", "reconstruction"],
        default="bound",
    )
    pl.add_argument("--title")
    pl.add_argument(
        "--since",
        type=int,
        metavar="SAMPLES",
        help="only the evaluations from this many training samples on (the end of long runs)",
    )
    pl.add_argument(
        "--terms",
        action="store_true",
        help="draw the bound's two terms, E_q[log p(x|z)] and KL(q(z|x) || p(z)), instead",
    )
    pl.set_defaults(func=_cmd_plot)

    ip = sub.add_parser("interpolate", help="decoded paths between pairs of posterior means")
    ip.add_argument("run_dir", metavar="RUNDIR")
    _data_args(ip, None)
    ip.add_argument("--split", default="test")
    ip.add_argument("--pairs", type=positive_int, default=4, help="pairs of points (default 4)")
    ip.add_argument("--steps", type=positive_int, default=10, help="points per path (default 10)")
    ip.add_argument(
        "--method",
        choices=["linear", "spherical", "both"],
        default="both",
        help="linear, spherical (Gaussian prior), or both (default)",
    )
    ip.add_argument("--seed", type=_seed, default=0, help="which pairs are drawn")
    ip.add_argument("--out", required=True, help="FILE.png, FILE.npy or FILE.npz")
    ip.set_defaults(func=_cmd_interpolate)

    vf = sub.add_parser("verify", help="check every file of a run against its manifest")
    vf.add_argument("run_dir", metavar="RUNDIR")
    vf.set_defaults(func=_cmd_verify)


def _add_export_info_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    ex = sub.add_parser(
        "export", help="the encoder and decoder as ONNX or torch.export files (docs/EXPORT.md)"
    )
    ex.add_argument("run_dir", metavar="RUNDIR")
    ex.add_argument(
        "--format",
        required=True,
        choices=["onnx", "torch-export"],
        help="onnx (needs pip install aevb[onnx]) or torch-export (.pt2, torch.export.save)",
    )
    ex.add_argument(
        "--part",
        choices=["encoder", "decoder", "both"],
        default="both",
        help="x -> q(z|x)'s parameters, z -> p(x|z)'s, or both (default)",
    )
    ex.add_argument(
        "--out", required=True, help="a new (or empty) folder: the files and export.json"
    )
    ex.set_defaults(func=_cmd_export)

    nf = sub.add_parser("info", help="a run's model card: data, model, objective, results")
    nf.add_argument("run_dir", metavar="RUNDIR")
    nf.add_argument("--json", action="store_true", help="print one JSON object")
    nf.set_defaults(func=_cmd_info)


def _add_gradients_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    gr = sub.add_parser(
        "gradients",
        help="variance of the encoder's gradient: score function vs reparameterization",
    )
    gr.add_argument("run_dir", metavar="RUNDIR")
    _data_args(gr, None)
    gr.add_argument("--split", default="test", help="where the minibatch comes from (default test)")
    gr.add_argument(
        "--at",
        choices=["trained", "init"],
        default="trained",
        help="the run's trained model, or its initialisation rebuilt with the run's seed",
    )
    gr.add_argument(
        "--draws",
        type=int,
        default=GRADIENT_DRAWS,
        help=f"gradient draws per estimator (default {GRADIENT_DRAWS})",
    )
    gr.add_argument("--batch-size", type=int, default=100, help="M, the minibatch's size")
    gr.add_argument(
        "--estimators",
        help="comma-separated subset of A, B, score-function, score-function-baseline "
        "(default: all, B where the KL is analytic)",
    )
    gr.add_argument(
        "--baseline-draws",
        type=int,
        help="draws of f averaged for score-function-baseline's baseline (default --draws)",
    )
    gr.add_argument("--seed", type=_seed, default=0, help="the minibatch and the noise")
    gr.add_argument(
        "--out", help="folder for gradients_AT.json and .png (default RUNDIR/gradients)"
    )
    gr.add_argument("--json", action="store_true", help="print one JSON object")
    gr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    gr.add_argument("--quiet", action="store_true", help="no progress bar")
    gr.set_defaults(func=_cmd_gradients)


def _add_reproduce_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    rp = sub.add_parser(
        "reproduce", help="a figure of the paper (2-5), its table and values (docs/REPRODUCTION.md)"
    )
    rp.add_argument("figure", choices=list(experiments.FIGURES))
    rp.add_argument(
        "--budget",
        choices=list(experiments.BUDGETS),
        default="quick",
        help="smoke (about a minute), quick (an hour or less on 2 cores; default), paper "
        "(the paper's sample counts)",
    )
    rp.add_argument(
        "--out", help="folder for the runs and results (default reproductions/FIG-BUDGET)"
    )
    rp.add_argument(
        "--mnist",
        choices=list(experiments.MNIST_DATA),
        default="binarized-mnist",
        help="MNIST data: the fixed binarization (default) or grey MNIST as Bernoulli targets",
    )
    rp.add_argument(
        "--data-dir", help="folder holding mnist/, binarized_mnist/, frey/ (else $AEVB_DATA_DIR)"
    )
    rp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    rp.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="curves trained at once in worker processes, sharing the CPU threads (default 1)",
    )
    rp.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="DIR",
        help="another reproduction's folder: copy its curves trained with the same settings "
        "instead of training them (repeatable)",
    )
    rp.add_argument(
        "--panel",
        action="append",
        default=[],
        metavar="KEY",
        help="only this panel, e.g. mnist-nz20 (repeatable; default: every panel); a later call "
        "without it trains the rest",
    )
    rp.add_argument("--quiet", action="store_true", help="no progress bars")
    rp.set_defaults(func=_cmd_reproduce)


def _add_explore_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    xp = sub.add_parser(
        "explore", help="the latent space in the browser: map, decoding, interpolation (local)"
    )
    xp.add_argument("run_dir", metavar="RUNDIR")
    _data_args(xp, None)
    xp.add_argument("--split", default="test", help="the points on the map (default test)")
    xp.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; another one warns)",
    )
    xp.add_argument(
        "--port",
        type=bounded_int(0, 65535, "a port from 0 to 65535"),
        default=0,
        help="port (default 0: a free one; the URL is printed)",
    )
    xp.add_argument(
        "--max-points",
        type=bounded_int(2, 10**7, "a number from 2 to 10^7"),
        default=10_000,
        help="larger splits are thinned to this many points, evenly spaced (default 10000)",
    )
    xp.set_defaults(func=_cmd_explore)


def _columns(value: str | list[str] | None) -> list[str] | None:
    """--columns a,b,c (or a list from a config file) as a list of names/indices."""
    if value is None or isinstance(value, list):
        return value
    return [c.strip() for c in str(value).split(",") if c.strip()]


def _cmd_train(args: argparse.Namespace) -> int:
    # the declared options given as flags (the rest are absent: argparse.SUPPRESS), over the
    # config file's, over the declared defaults
    options = load_config(args.config) if args.config is not None else {}
    flags = {k: v for k, v in vars(args).items() if k in settings.OWNER}
    if {"budget", "epochs"} & set(flags):  # the run length given on the line replaces the file's
        options.pop("budget", None)
        options.pop("epochs", None)
    options.update(flags)
    out = args.out if args.out is not None else options.pop("out", None)
    options.pop("out", None)
    if args.resume is None and out is None:
        raise ConfigError("give --out RUNDIR for a new run, or --resume RUNDIR")
    if args.resume is not None and out is not None:
        raise ConfigError("give --out for a new run or --resume for an old one, not both")
    run = api.train(out=out, resume=args.resume, progress=not args.quiet, **options)
    if not distributed.is_main():
        return 0  # under torchrun rank 0 alone reports
    print(_summary_line(run))
    f, tc = run.final, run.config["train"]
    if not args.quiet and run.timing.get("training_s"):
        print(_timing_line(run.timing))
    metric = metric_for(tc.get("estimator"))
    if tc.get("keep") == "best" and metric in f:
        best = max(run.metrics, key=lambda r: r.get(metric, float("-inf")))
        print(
            f"best {metric.replace('_', ' ')} {best[metric]:.3f} at {best['samples_seen']:,} "
            f"samples (kept as {run.path}/best_model.safetensors)"
        )
    note = _latent_usage_note(f, tc)
    if note is not None:
        sys.stderr.write(note + "\n")
    return 0


def _summary_line(run: api.Run) -> str:
    """The last evaluation: train and held-out numbers (test, else validation: --no-eval-test)."""
    f, tc = run.final, run.config["train"]
    what = "bound" if "train_bound" in f else "log_likelihood"  # MCEM has no bound
    label = "bound" if what == "bound" else "log p(x)"
    how = f"estimator {tc['estimator']}"
    if tc["algorithm"] == "autoencoder":  # no bound: its reconstruction log p(x|z=mu(x))
        what, label, how = "reconstruction", "log p(x|z=mu(x))", "auto-encoder"
    held = runs.reported_split(f, what, ("test", "valid")) or "test"
    iw = ""
    if f"{held}_iwae_bound" in f:
        iw = f", {held} IWAE bound {f[f'{held}_iwae_bound']:.3f} (K={tc['samples']})"
    return (
        f"trained {f.get('samples_seen', 0):,} samples ({how}): "
        f"train {label} {f.get(f'train_{what}', float('nan')):.3f}, {held} {label} "
        f"{f.get(f'{held}_{what}', float('nan')):.3f} nats{iw}; run in {run.path}"
    )


def _timing_line(t: dict) -> str:
    """Where the training call's time went: steps (and their rate), evaluations, checkpoints."""
    rate = t["samples"] / t["training_s"]
    return (
        f"time: training {t['training_s']:.1f} s ({rate:,.0f} samples/s), evaluations "
        f"{t['evaluation_s']:.1f} s, checkpoints {t['checkpoint_s']:.1f} s, figures "
        f"{t['figures_s']:.1f} s"
    )


def _latent_usage_note(final: dict, train: dict | None = None) -> str | None:
    """One line when a run ends with fewer than half its latent dimensions active (from its last
    evaluation, test split, else validation, else train), saying what to try (given the run's
    ``train`` configuration: :func:`settings.latent_usage_hint`); None otherwise."""
    split = runs.reported_split(final, "active_units") or "train"
    active, per_dim = final.get(f"{split}_active_units"), final.get(f"{split}_kl_per_dim")
    if active is None or not per_dim or 2 * active >= len(per_dim):
        return None
    return (
        f"aevb: note: only {active} of {len(per_dim)} latent dimensions are active "
        f"(Cov_x E_q[z_d|x] > 0.01 on the {split} split; figures/latent_usage.png), the "
        f"others' posterior means barely depend on x; {settings.latent_usage_hint(train)}"
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    res = api.evaluate(
        args.run_dir,
        args.split,
        data=args.data,
        data_dir=args.data_dir,
        binarize=args.binarize,
        estimator=args.estimator,
        samples=args.samples,
        iwae_samples=args.iwae_samples,
        seed=args.seed,
        marginal=args.marginal,
        importance_samples=args.importance_samples,
        importance_precision=args.importance_precision,
        points=args.points,
        spread=args.spread,
        chunk_size=args.chunk_size,
        hmc_samples=args.hmc_samples,
        hmc_leapfrog=args.hmc_leapfrog,
        hmc_warmup=args.hmc_warmup,
        hmc_target_accept=args.hmc_target_accept,
        workers=args.workers,
        device=args.device,
        progress=not args.quiet and args.marginal is not None,
        which=args.which,
        per_point=args.per_point,
    )
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        _print_evaluation(res)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    r = api.compare(args.a, args.b, column=args.column)
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0
    width = max(len(r["a"]), len(r["b"]), 5)
    print(f"{r['column']} on {r['points']:,} points (the same in both files), nats:")
    print(f"  {r['a']:<{width}}  {r['a_mean']:.3f} ± {r['a_se']:.3f}")
    print(f"  {r['b']:<{width}}  {r['b_mean']:.3f} ± {r['b_se']:.3f}")
    print(
        f"  {'A - B':<{width}}  {r['difference']:+.3f} ± {r['difference_se']:.3f} (paired; "
        f"{r['independent_se']:.3f} if the two means were independent)"
    )
    return 0


def _print_evaluation(res: dict) -> None:
    print(
        f"{res['data']} {res['split']} ({res['points']} points, {res['binarize']}): "
        f"bound {res['bound']:.3f} ± {res['bound_se']:.3f} nats "
        f"(estimator {res['estimator']}, L={res['samples']})"
    )
    if "kl" in res:
        print(_terms_lines(res))
    if "iwae_bound" in res:
        print(
            f"  IWAE bound {res['iwae_bound']:.3f} ± {res['iwae_bound_se']:.3f} nats "
            f"(K={res['iwae_samples']})"
        )
    for m in res.get("marginal", {}).values():
        bf16 = f", bf16 ({m['bf16_instructions']})" if "bf16_instructions" in m else ""
        how = (
            f"importance sampling, K={m['importance_samples']}{bf16}, "
            f"median ESS {m['ess_median']:.0f}"
            if m["method"] == "is"
            else f"Appendix D: HMC, L={m['posterior_samples']}, "
            f"{m['leapfrog_steps']} leapfrog steps, acceptance {m['accept_rate']:.2f}"
        )
        print(
            f"  log p(x) {m['log_likelihood']:.3f} ± {m['se']:.3f} nats, "
            f"{m['gap']:.3f} ± {m['gap_se']:.3f} above the bound ({how}; "
            f"{m['seconds']:.1f} s)"
        )
    if "per_point" in res:
        print(f"  per point: {res['per_point']} (aevb compare pairs two such files)")


def _terms_lines(res: dict) -> str:
    """The bound's two terms and the latent usage of an evaluation, as two indented lines."""
    kl = res["kl_per_dim"]
    per_dim = " ".join(f"{v:.2f}" for v in kl)
    if len(kl) > 20:  # the largest ten, by dimension (1-based)
        top = sorted(range(len(kl)), key=lambda d: -kl[d])[:10]
        per_dim = ", ".join(f"z{d + 1} {kl[d]:.2f}" for d in top) + " (the largest; --json: all)"
    return (
        f"  = reconstruction E_q[log p(x|z)] {res['reconstruction']:.3f} "
        f"± {res['reconstruction_se']:.3f} - KL(q(z|x) || p(z)) {res['kl']:.3f} "
        f"± {res['kl_se']:.3f} nats\n"
        f"  active units {res['active_units']} of {len(res['kl_per_dim'])} "
        f"(Cov_x E_q[z_d|x] > {res['active_threshold']:g}); KL per dimension: {per_dim}"
    )


def _cmd_decode(args: argparse.Namespace) -> int:
    x = api.decode(args.run_dir, args.latents, out=args.out)
    print(f"{args.out} ({len(x)} rows)")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    labels = _columns(args.labels)
    print(
        api.plot(
            args.run_dirs,
            args.out,
            labels=labels,
            metric=args.metric,
            title=args.title,
            since=args.since,
            terms=args.terms,
        )
    )
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    api.interpolate(
        args.run_dir,
        pairs=args.pairs,
        steps=args.steps,
        data=args.data,
        split=args.split,
        data_dir=args.data_dir,
        method=args.method,
        seed=args.seed,
        out=args.out,
    )
    print(Path(args.out))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    api.sample(args.run_dir, args.n, seed=args.seed, out=args.out)
    print(Path(args.out))
    return 0


def _cmd_manifold(args: argparse.Namespace) -> int:
    found = api.manifold(
        args.run_dir,
        args.grid,
        grid_over=args.grid_over,
        dims=args.dims,
        which=args.which,
        data=args.data,
        data_dir=args.data_dir,
        out=args.out,
    )
    i, j = found.dims
    if found.latents.shape[1] > 2:
        rest = found.latents.shape[1] - 2
        print(f"varied z{i + 1} and z{j + 1} (0-based {i}, {j}); the other {rest} held at 0")
    print(Path(args.out))
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    api.reconstruct(
        args.run_dir,
        n=args.n,
        data=args.data,
        split=args.split,
        data_dir=args.data_dir,
        out=args.out,
    )
    print(Path(args.out))
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    api.encode(
        args.run_dir,
        data=args.data,
        split=args.split,
        data_dir=args.data_dir,
        binarize=args.binarize,
        out=args.out,
    )
    print(Path(args.out))
    return 0


def _cmd_gradients(args: argparse.Namespace) -> int:
    res = api.gradients(
        args.run_dir,
        at=args.at,
        draws=args.draws,
        batch_size=args.batch_size,
        estimators=_columns(args.estimators),
        split=args.split,
        data=args.data,
        data_dir=args.data_dir,
        seed=args.seed,
        baseline_draws=args.baseline_draws,
        out=args.out,
        progress=not args.quiet,
        device=args.device,
    )
    print(json.dumps(res, sort_keys=True) if args.json else api.render_gradients(res))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    res = experiments.reproduce(
        args.figure,
        args.budget,
        args.out,
        mnist=args.mnist,
        data_dir=args.data_dir,
        device=args.device,
        jobs=args.jobs,
        reuse=args.reuse,
        panels=args.panel,
        progress=not args.quiet,
    )
    print(f"{res.figure}\n{res.table}\n{res.json}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    res = runs.verify_run(args.run_dir)
    how = "match their checksums" if res["checksums"] else "parse (format 1: no checksums)"
    n, fmt = len(res["files"]), res["format_version"]
    print(f"{args.run_dir}: run format {fmt}, {n} files {how}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    res = api.export(args.run_dir, args.format, args.part, out=args.out)
    print("\n".join(res.summary()))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    card = api.info(args.run_dir)
    print(json.dumps(card, sort_keys=True) if args.json else api.render_info(card))
    return 0


def _cmd_explore(args: argparse.Namespace) -> int:
    server = api.explore(
        args.run_dir,
        data=args.data,
        split=args.split,
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        max_points=args.max_points,
    )
    print(f"aevb explore: {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
        sys.stderr.write("aevb: explore stopped\n")
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aevb`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AevbError as e:
        sys.stderr.write(f"aevb: error: {e}\n")
        return 2
    except distributed.RankLostError as e:  # torchrun: another rank died or hung
        sys.stderr.write(f"aevb: error: {e}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        # A process group with a lost peer can abort the interpreter while it is torn down
        # ("terminate called without an active exception", exit -6): leave without teardown.
        os._exit(1)
    except OSError as e:  # a file or folder the command was given cannot be read or written
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"aevb: error: {where}{e.strerror or e}\n")
        return 2
    except (MemoryError, RuntimeError) as e:
        too_big = ("alloc", "out of memory", "overflow", "too large", "numel")
        if not isinstance(e, MemoryError) and not any(w in str(e).lower() for w in too_big):
            raise
        sys.stderr.write(
            "aevb: error: out of memory for what was asked (a model, minibatch or sample count "
            "too large for this machine); ask for less\n"
        )
        return 2
    except KeyboardInterrupt:
        if args.command == "reproduce":
            sys.stderr.write("aevb: interrupted; run the same command again to continue\n")
        else:
            sys.stderr.write("aevb: interrupted; continue a training run with --resume RUNDIR\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
