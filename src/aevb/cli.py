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

from . import __version__, api, distributed, experiments, runs
from .data import BINARIZE_MODES
from .distributions import POSTERIORS, PRIORS
from .errors import AevbError, ConfigError
from .training import LR_SCHEDULES


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"aevb: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


MAX_COUNT = 10**15
"""The largest count an option takes: beyond it no size fits in memory or finishes."""


def _positive_int(text: str) -> int:
    try:
        v = int(float(text)) if "e" in text.lower() else int(text)
    except (ValueError, OverflowError):  # "1e999" is inf, which no integer is
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= v <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to 10^15, got {text!r}")
    return v


def _bounded_int(lo: int, hi: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    parse.__name__ = "int"
    return parse


_seed = _bounded_int(0, 2**63 - 1, "a seed from 0 to 2^63-1")
_depth = _bounded_int(0, 64, "a number of hidden layers from 0 to 64")
_steps = _bounded_int(0, MAX_COUNT, "a number from 0 to 10^15")


def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive step size, got {text!r}")
    return v


def _data_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--data",
        default=default,
        help="dataset name (digits, mnist, binarized-mnist, frey) or a .npy/.npz/.csv file; "
        "rows are datapoints"
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
    parser.add_argument("--version", action="version", version=f"aevb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a VAE with AEVB (Algorithm 1)")
    _data_args(t, "digits")
    t.add_argument("--out", help="run directory to create (required unless --resume)")
    t.add_argument("--resume", metavar="RUNDIR", help="continue this run where it stopped")
    t.add_argument("--latent-dim", type=_positive_int, default=20, help="N_z (default 20)")
    t.add_argument(
        "--hidden", type=_positive_int, help="hidden units (default: 500 MNIST, 200 others)"
    )
    t.add_argument("--depth", type=_depth, default=1, help="hidden layers per network (default 1)")
    t.add_argument("--activation", default="tanh", help="tanh (paper), relu, softplus, elu")
    t.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or JSON file of train options (or a run's config.json); flags override it",
    )
    t.add_argument(
        "--likelihood",
        choices=["bernoulli", "gaussian", "gaussian-linear"],
        help="default: dataset's (gaussian-linear with --standardize)",
    )
    t.add_argument(
        "--algorithm",
        choices=["aevb", "wake-sleep", "mcem", "full-vb"],
        default="aevb",
        help="AEVB (Algorithm 1), or the paper's comparisons",
    )
    t.add_argument(
        "--full-vb-eval",
        choices=["mean", "sample"],
        default="mean",
        help="full VB: bound at the posterior-mean weights, or averaged over weight draws",
    )
    t.add_argument(
        "--posterior",
        choices=sorted(POSTERIORS),
        default="normal",
        help="latent family of q(z|x) (docs/FAMILIES.md; default normal)",
    )
    t.add_argument(
        "--prior",
        choices=sorted(PRIORS),
        help="family of p(z), its standard member (default: the posterior's family)",
    )
    t.add_argument(
        "--architecture",
        choices=["mlp", "conv"],
        default="mlp",
        help="MLP encoder/decoder (paper) or convolutional (image data)",
    )
    t.add_argument(
        "--estimator",
        choices=["A", "B", "iwae"],
        help="SGVB estimator A or B, or iwae (importance-weighted bound, K = --samples); "
        "default: B where KL(posterior || prior) is analytic, else A",
    )
    t.add_argument(
        "--eval-marginal",
        choices=["is", "hmc"],
        help="also log log p(x) at each evaluation: importance sampling or Appendix D (HMC)",
    )
    t.add_argument(
        "--eval-marginal-points", type=_positive_int, default=1000, help="points per split"
    )
    t.add_argument("--train-size", type=_positive_int, help="use the first N training points")
    t.add_argument("--mcem-leapfrog", type=_positive_int, help="MCEM: leapfrog steps (10)")
    t.add_argument("--mcem-updates", type=_positive_int, help="MCEM: updates per sample (5)")
    t.add_argument("--mcem-target-accept", type=float, help="MCEM: HMC acceptance target (0.9)")
    t.add_argument(
        "--samples", type=_positive_int, default=1, help="L (K for iwae), samples per datapoint"
    )
    t.add_argument(
        "--batch-size",
        type=_positive_int,
        default=100,
        help="M (default 100); per process under torchrun (docs/DISTRIBUTED.md)",
    )
    t.add_argument("--optimizer", choices=["adagrad", "adam"], default="adagrad")
    t.add_argument(
        "--lr", type=_lr, default="auto", help="step size, or auto: trial of {0.01,0.02,0.1}"
    )
    length = t.add_mutually_exclusive_group()
    length.add_argument(
        "--budget", type=_positive_int, help="training samples evaluated (default 1e6)"
    )
    length.add_argument("--epochs", type=_positive_int, help="passes over the training set")
    t.add_argument("--seed", type=_seed, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--binarize", choices=BINARIZE_MODES, default="grey")
    t.add_argument("--image-shape", type=_positive_int, nargs=2, metavar=("H", "W"))
    t.add_argument(
        "--validation",
        action="store_true",
        help="MNIST: train on the first 50 000 images, hold out the last 10 000 as split 'valid'",
    )
    t.add_argument(
        "--init", choices=["paper", "torch"], default="paper", help="N(0,0.01^2) or torch"
    )
    t.add_argument(
        "--no-weight-prior",
        dest="weight_prior",
        action="store_false",
        help="drop the N(0, I) parameter prior (plain ML instead of approximate MAP)",
    )
    t.add_argument("--eval-per-decade", type=_positive_int, default=4)
    t.add_argument("--eval-size", type=_positive_int, default=10_000, help="points per evaluation")
    t.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=300.0,
        help="write a checkpoint at least this often (default 300)",
    )
    t.add_argument(
        "--checkpoint-samples",
        type=_positive_int,
        help="also write a checkpoint after every N training samples",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    d = t.add_argument_group("day-to-day options (docs/GUIDE.md)")
    d.add_argument(
        "--kl-beta",
        type=float,
        default=1.0,
        help="weight of the KL term in the training objective (default 1: the bound itself)",
    )
    d.add_argument(
        "--kl-warmup",
        type=_positive_int,
        metavar="SAMPLES",
        help="raise the KL weight linearly from 0 over this many training samples",
    )
    d.add_argument(
        "--lr-schedule",
        choices=list(LR_SCHEDULES),
        default="constant",
        help="decay the step size from --lr to --lr-min over the budget (default: constant, "
        "the paper's)",
    )
    d.add_argument(
        "--lr-min",
        type=float,
        default=0.0,
        help="the step size a cosine or linear schedule ends at (default 0)",
    )
    d.add_argument(
        "--keep",
        choices=["last", "best"],
        default="last",
        help="best: also keep the model with the best validation bound (needs --validation)",
    )
    d.add_argument(
        "--patience",
        type=_positive_int,
        help="stop after this many evaluations without a better validation bound",
    )
    d.add_argument(
        "--decoder-bias-init",
        action="store_true",
        help="start the decoder's bias at the logit of the training-set mean",
    )
    d.add_argument(
        "--precision",
        choices=["float32", "bf16"],
        default="float32",
        help="bf16: bfloat16 autocast of the training step on CUDA (an error on CPU)",
    )
    d.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard files to RUNDIR/tensorboard",
    )
    d.add_argument(
        "--columns", help="CSV columns to use, comma-separated header names or 0-based indices"
    )
    d.add_argument(
        "--standardize",
        action="store_true",
        help="z-score each column (training-set statistics, kept in the run); real-valued data",
    )

    e = sub.add_parser("evaluate", help="lower bound on a split, with its standard error")
    e.add_argument("run_dir", metavar="RUNDIR")
    _data_args(e, None)
    e.add_argument("--split", default="test", help="train, test or valid (default test)")
    e.add_argument("--binarize", choices=BINARIZE_MODES, help="default: the run's")
    e.add_argument("--estimator", choices=["A", "B"], help="ELBO estimator (default: the run's)")
    e.add_argument("--samples", type=_positive_int, default=1)
    e.add_argument(
        "--iwae-samples",
        type=_positive_int,
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
        "--importance-samples", type=_positive_int, default=5000, help="K for --marginal is"
    )
    e.add_argument("--points", type=_positive_int, help="use the first N points of the split")
    e.add_argument(
        "--spread", action="store_true", help="--points N evenly spaced through the split"
    )
    e.add_argument(
        "--chunk-size", type=_positive_int, default=4096, help="(z, x) pairs decoded at once"
    )
    e.add_argument(
        "--hmc-samples", type=_positive_int, default=50, help="HMC posterior draws per point"
    )
    e.add_argument("--leapfrog-steps", type=_positive_int, default=4, help="per HMC transition")
    e.add_argument(
        "--hmc-warmup", type=_steps, default=200, help="step-size adaptation transitions"
    )
    e.add_argument("--target-accept", type=float, default=0.9, help="HMC acceptance target")
    e.add_argument(
        "--workers", type=_positive_int, help="CPU worker threads for --marginal (default: threads)"
    )
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    e.add_argument(
        "--model",
        choices=["last", "best"],
        default="last",
        help="best: the model with the best validation bound (runs trained with --keep best)",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="decoder means for z drawn from the prior")
    s.add_argument("run_dir", metavar="RUNDIR")
    s.add_argument("--n", type=_positive_int, default=100)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--out", required=True, help="FILE.png (grid) or FILE.npy")

    m = sub.add_parser("manifold", help="Figure 4: the learned 2-D manifold")
    m.add_argument("run_dir", metavar="RUNDIR")
    m.add_argument("--grid", type=_positive_int, default=20)
    m.add_argument("--out", required=True, help="FILE.png or FILE.npy")

    r = sub.add_parser("reconstruct", help="data beside its reconstructions")
    r.add_argument("run_dir", metavar="RUNDIR")
    _data_args(r, None)
    r.add_argument("--split", default="test")
    r.add_argument("--n", type=_positive_int, default=50)
    r.add_argument("--out", required=True, help="FILE.png or FILE.npy")

    c = sub.add_parser("encode", help="posterior means and log-variances")
    c.add_argument("run_dir", metavar="RUNDIR")
    _data_args(c, None)
    c.add_argument("--split", default="test")
    c.add_argument("--binarize", choices=BINARIZE_MODES)
    c.add_argument("--out", required=True, help="Z.npy ([mu, logvar] columns) or Z.npz")

    dc = sub.add_parser("decode", help="decoder means for latent points (data units)")
    dc.add_argument("run_dir", metavar="RUNDIR")
    dc.add_argument("--latents", required=True, help="Z.npy or Z.npz (as written by encode)")
    dc.add_argument("--out", required=True, help="X.csv, X.npy or X.png")

    pl = sub.add_parser("plot", help="bound-vs-samples curves of several runs on one figure")
    pl.add_argument("run_dirs", metavar="RUNDIR", nargs="+")
    pl.add_argument("--out", required=True, help="FILE.png")
    pl.add_argument("--labels", help="comma-separated curve labels (default: directory names)")
    pl.add_argument("--metric", choices=["bound", "iwae_bound", "log_likelihood"], default="bound")
    pl.add_argument("--title")
    pl.add_argument(
        "--since",
        type=int,
        metavar="SAMPLES",
        help="only the evaluations from this many training samples on (the end of long runs)",
    )

    ip = sub.add_parser("interpolate", help="decoded paths between pairs of posterior means")
    ip.add_argument("run_dir", metavar="RUNDIR")
    _data_args(ip, None)
    ip.add_argument("--split", default="test")
    ip.add_argument("--pairs", type=_positive_int, default=4, help="pairs of points (default 4)")
    ip.add_argument("--steps", type=_positive_int, default=10, help="points per path (default 10)")
    ip.add_argument(
        "--method",
        choices=["linear", "spherical", "both"],
        default="both",
        help="linear, spherical (Gaussian prior), or both (default)",
    )
    ip.add_argument("--seed", type=_seed, default=0, help="which pairs are drawn")
    ip.add_argument("--out", required=True, help="FILE.png, FILE.npy or FILE.npz")

    vf = sub.add_parser("verify", help="check every file of a run against its manifest")
    vf.add_argument("run_dir", metavar="RUNDIR")

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
        type=_positive_int,
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
    rp.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _columns(value) -> list[str] | None:
    """--columns a,b,c (or a list from a config file) as a list of names/indices."""
    if value is None or isinstance(value, list):
        return value
    return [c.strip() for c in str(value).split(",") if c.strip()]


def _with_config(parser: argparse.ArgumentParser, argv, first: argparse.Namespace):
    """Re-parse ``train`` with a config file's values as defaults, so flags given override them."""
    from .config import load_config

    options = load_config(first.config)
    if first.budget is not None or first.epochs is not None:  # the run length is on the line
        options.pop("budget", None)
        options.pop("epochs", None)
    known = vars(first)
    algo = dict(options.pop("algorithm_options", None) or {})
    for key in [k for k in algo if k in known]:  # --mcem-* flags
        options[key] = algo.pop(key)
    extra = {k: options.pop(k) for k in list(options) if k not in known}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    saved = {k: train.get_default(k) for k in options}
    train.set_defaults(**options)
    try:
        args = parser.parse_args(argv)
    finally:
        train.set_defaults(**saved)
    args.config_extra, args.config_algorithm_options = extra, algo
    return args


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        if args.resume is None and args.out is None:
            raise ConfigError("give --out RUNDIR for a new run, or --resume RUNDIR")
        if args.resume is not None and args.out is not None:
            raise ConfigError("give --out for a new run or --resume for an old one, not both")
        run = api.train(
            args.data,
            args.out,
            resume=args.resume,
            latent_dim=args.latent_dim,
            hidden=args.hidden,
            depth=args.depth,
            activation=args.activation,
            likelihood=args.likelihood,
            algorithm=args.algorithm,
            full_vb_eval=args.full_vb_eval,
            eval_marginal=args.eval_marginal,
            train_size=args.train_size,
            eval_marginal_points=args.eval_marginal_points,
            algorithm_options={
                **getattr(args, "config_algorithm_options", {}),
                **{
                    k: v
                    for k in ("mcem_leapfrog", "mcem_updates", "mcem_target_accept")
                    if (v := getattr(args, k)) is not None
                },
            },
            posterior=args.posterior,
            prior=args.prior,
            architecture=args.architecture,
            estimator=args.estimator,
            samples=args.samples,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.lr,
            budget=args.budget,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            binarize=args.binarize,
            data_dir=args.data_dir,
            image_shape=tuple(args.image_shape) if args.image_shape else None,
            validation=args.validation,
            init=args.init,
            weight_prior=args.weight_prior,
            eval_per_decade=args.eval_per_decade,
            eval_size=args.eval_size,
            checkpoint_seconds=args.checkpoint_seconds,
            checkpoint_samples=args.checkpoint_samples,
            kl_beta=args.kl_beta,
            kl_warmup=args.kl_warmup,
            lr_schedule=args.lr_schedule,
            lr_min=args.lr_min,
            keep=args.keep,
            patience=args.patience,
            decoder_bias_init=args.decoder_bias_init,
            precision=args.precision,
            tensorboard=args.tensorboard,
            columns=_columns(args.columns),
            standardize=args.standardize,
            progress=not args.quiet,
            **getattr(args, "config_extra", {}),
        )
        if not distributed.is_main():
            return 0  # under torchrun rank 0 alone reports
        f = run.final
        tc = run.config["train"]
        iw = ""
        if "test_iwae_bound" in f:
            iw = f", test IWAE bound {f['test_iwae_bound']:.3f} (K={tc['samples']})"
        what = "bound" if "train_bound" in f else "log_likelihood"  # MCEM has no bound
        label = "bound" if what == "bound" else "log p(x)"
        print(
            f"trained {f.get('samples_seen', 0):,} samples (estimator {tc['estimator']}): "
            f"train {label} {f.get(f'train_{what}', float('nan')):.3f}, test {label} "
            f"{f.get(f'test_{what}', float('nan')):.3f} nats{iw}; run in {run.path}"
        )
        if tc.get("keep") == "best" and "valid_bound" in f:
            best = max(run.metrics, key=lambda r: r.get("valid_bound", float("-inf")))
            print(
                f"best valid bound {best['valid_bound']:.3f} at {best['samples_seen']:,} samples "
                f"(kept as {run.path}/best_model.safetensors)"
            )
    elif args.command == "evaluate":
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
            points=args.points,
            spread=args.spread,
            chunk_size=args.chunk_size,
            hmc_samples=args.hmc_samples,
            hmc_leapfrog=args.leapfrog_steps,
            hmc_warmup=args.hmc_warmup,
            hmc_target_accept=args.target_accept,
            workers=args.workers,
            device=args.device,
            progress=not args.quiet and args.marginal is not None,
            model=args.model,
        )
        if args.json:
            print(json.dumps(res, sort_keys=True))
        else:
            print(
                f"{res['data']} {res['split']} ({res['points']} points, {res['binarize']}): "
                f"bound {res['bound']:.3f} ± {res['bound_se']:.3f} nats "
                f"(estimator {res['estimator']}, L={res['samples']})"
            )
            if "iwae_bound" in res:
                print(
                    f"  IWAE bound {res['iwae_bound']:.3f} ± {res['iwae_bound_se']:.3f} nats "
                    f"(K={res['iwae_samples']})"
                )
            for m in res.get("marginal", {}).values():
                how = (
                    f"importance sampling, K={m['importance_samples']}, "
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
    elif args.command == "decode":
        x = api.decode(args.run_dir, args.latents, args.out)
        print(f"{args.out} ({len(x)} rows)")
    elif args.command == "plot":
        labels = _columns(args.labels)
        print(
            api.plot(
                args.run_dirs,
                args.out,
                labels=labels,
                metric=args.metric,
                title=args.title,
                since=args.since,
            )
        )
    elif args.command == "interpolate":
        print(
            api.interpolate(
                args.run_dir,
                args.out,
                pairs=args.pairs,
                steps=args.steps,
                data=args.data,
                split=args.split,
                data_dir=args.data_dir,
                method=args.method,
                seed=args.seed,
            )
        )
    elif args.command == "sample":
        print(api.sample(args.run_dir, args.n, args.out, seed=args.seed))
    elif args.command == "manifold":
        print(api.manifold(args.run_dir, args.grid, args.out))
    elif args.command == "reconstruct":
        print(
            api.reconstruct(
                args.run_dir,
                args.out,
                n=args.n,
                data=args.data,
                split=args.split,
                data_dir=args.data_dir,
            )
        )
    elif args.command == "encode":
        print(
            api.encode(
                args.run_dir,
                args.out,
                data=args.data,
                split=args.split,
                data_dir=args.data_dir,
                binarize=args.binarize,
            )
        )
    elif args.command == "reproduce":
        res = experiments.reproduce(
            args.figure,
            args.budget,
            args.out,
            mnist=args.mnist,
            data_dir=args.data_dir,
            device=args.device,
            jobs=args.jobs,
            reuse=args.reuse,
            progress=not args.quiet,
        )
        print(f"{res.figure}\n{res.table}\n{res.json}")
    elif args.command == "verify":
        res = runs.verify_run(args.run_dir)
        how = "match their checksums" if res["checksums"] else "parse (format 1: no checksums)"
        n, fmt = len(res["files"]), res["format_version"]
        print(f"{args.run_dir}: run format {fmt}, {n} files {how}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aevb`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train" and args.config is not None:
            args = _with_config(parser, argv, args)
        return _run(args)
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
