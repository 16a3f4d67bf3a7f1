"""The Python API. Every command-line command is a thin wrapper over one function here."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__, distributed, figures, runs
from .algorithms import ALGORITHMS
from .data import BINARIZE_MODES, DATASETS, Dataset, check_support, load_dataset
from .errors import ConfigError, DataError, NumericalError, RunError
from .model import VAE, ModelConfig, default_estimator
from .selection import BEST_MODEL
from .training import LR_CANDIDATES, TrainConfig, Trainer, _split_seed


@dataclass
class Run:
    """A training run on disk: its directory, trained model, configuration and metrics."""

    path: Path | None
    model: VAE
    config: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        """The last metrics record (bounds at the end of training)."""
        return self.metrics[-1] if self.metrics else {}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks CUDA when available; asking for CUDA without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but this PyTorch sees no CUDA GPU; use --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def _build_model(
    mcfg: ModelConfig, tcfg: TrainConfig, device: torch.device, train_x: torch.Tensor | None = None
) -> VAE:
    torch.manual_seed(tcfg.seed)  # PyTorch's own init, used with --init torch
    model = VAE(mcfg)
    if tcfg.init == "paper":
        model.init_parameters(
            tcfg.init_std, torch.Generator().manual_seed(_split_seed(tcfg.seed, 0))
        )
    if getattr(tcfg, "decoder_bias_init", False) and train_x is not None:
        model.init_decoder_bias(train_x.double().mean(0).cpu())  # Burda et al.'s trick
    return model.to(device)


def _check_precision(tcfg: TrainConfig, dev: torch.device) -> None:
    """bf16 autocast is a CUDA option: on CPU it is an error rather than a silent no-op."""
    if tcfg.precision == "bf16" and dev.type != "cuda":
        raise ConfigError(
            f"--precision bf16 autocasts on CUDA GPUs only and this run is on {dev.type}; "
            "drop --precision or use --device cuda"
        )


def _standard_stats(ds: Dataset) -> dict:
    """Per-column mean and standard deviation of the training set (std 1 for constant columns)."""
    x = ds.train.astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    return {"mean": mean.tolist(), "std": std.tolist()}


def _standardize(ds: Dataset, stats: dict | None) -> dict | None:
    """z-score every split of ds in place with ``stats`` (from the training set); return them."""
    if stats is None:
        return None
    if len(stats["mean"]) != ds.x_dim:
        raise DataError(
            f"{ds.name} has {ds.x_dim} columns but the run standardised {len(stats['mean'])}"
        )
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.asarray(stats["std"], dtype=np.float64)

    def z(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    ds.train = z(ds.train)
    if ds.test is not None:
        ds.test = z(ds.test)
    ds.extra_splits = {k: z(v) for k, v in ds.extra_splits.items()}
    return stats


def _unstandardize(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Data-space values of model-space x (undoes --standardize; x itself otherwise)."""
    stats = cfg["data"].get("standardize")
    if not stats:
        return x
    mean = torch.tensor(stats["mean"], dtype=x.dtype, device=x.device)
    std = torch.tensor(stats["std"], dtype=x.dtype, device=x.device)
    return x * std + mean


def _valid_tensor(ds: Dataset, validation: bool, likelihood: str, binarize: str, dev):
    """The validation split as a tensor when asked for (model selection and its curves)."""
    if not validation:
        return None
    v = ds.split("valid")
    check_support(v, likelihood, binarize, f"{ds.name} (valid)")
    return torch.from_numpy(v).to(dev)


def _data_tensors(ds: Dataset, likelihood: str, binarize: str, device: torch.device):
    ds.split("train")  # a dataset without its training files says which file to get
    check_support(ds.train, likelihood, binarize, f"{ds.name} (train)")
    if ds.test is not None:
        check_support(ds.test, likelihood, binarize, f"{ds.name} (test)")
    tr = torch.from_numpy(ds.train).to(device)
    te = torch.from_numpy(ds.test).to(device) if ds.test is not None else None
    return tr, te


def _prepare_out(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose another path")
    # only what an 'aevb train' killed at its start leaves behind (temporary files): empty
    if out.is_dir() and any(not runs.is_leftover(p) for p in out.iterdir()):
        if (out / runs.CONFIG).exists() or (out / runs.MANIFEST).exists():
            raise ConfigError(
                f"--out {out} already holds a run; continue it with --resume {out} "
                "or choose a new directory"
            )
        raise ConfigError(f"--out {out} is not empty; choose a new or empty directory")
    runs.make_dir(out)
    runs.check_writable(out)
    for p in out.iterdir():  # leftovers only, by the test above
        if p.is_file():
            p.unlink(missing_ok=True)
    return out


def _space_needed(model: torch.nn.Module, tcfg: TrainConfig, alg_bytes: int = 0) -> int:
    """Bytes a run's files need at most: two checkpoints (a commit writes the new beside the old)
    of weights, optimizer state and algorithm state, plus room for figures and metrics."""
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    per_param = {"adagrad": 1, "adam": 2}.get(tcfg.optimizer, 2)
    checkpoint = param_bytes * (2 + per_param) + alg_bytes + (1 << 16)
    return 2 * checkpoint + (4 << 20)


def _check_space(out_dir: Path, mcfg: ModelConfig, tcfg: TrainConfig) -> None:
    """Refuse, before any training, an output location without room for the run's files."""
    try:
        with torch.device("meta"):  # the parameters' sizes without allocating them
            model = VAE(mcfg)
    except Exception:
        return
    runs.check_space(out_dir, _space_needed(model, tcfg))


def choose_lr(
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    train_x: torch.Tensor,
    device: torch.device,
    progress: bool = True,
) -> tuple[float, dict]:
    """The paper's step-size selection: a short trial per candidate, best training bound wins."""
    n_trial = tcfg.lr_trial_samples or max(
        10 * tcfg.batch_size, min(30_000, (tcfg.budget or 10**6) // 10)
    )
    scores: dict[str, float] = {}
    for lr in LR_CANDIDATES[tcfg.optimizer]:
        trial = dataclasses.replace(  # the trial compares constant starting step sizes
            tcfg, lr=lr, budget=n_trial, epochs=None, lr_schedule="constant", lr_min=0.0
        )
        model = _build_model(mcfg, trial, device, train_x)
        alg = ALGORITHMS[trial.algorithm](model, trial, len(train_x), lr)
        t = Trainer(alg, train_x, None, trial, progress=progress, evaluate_points=False)
        try:
            t.run()
            tail = t.trace[len(t.trace) // 2 :] or t.trace
            score = float(np.mean(tail))
        except NumericalError:  # this step size diverged: never the choice
            score = float("-inf")
        scores[repr(lr)] = score if math.isfinite(score) else float("-inf")
        if progress:
            tqdm.write(f"lr trial {lr:g}: training bound {score:.3f}")
    best = max(scores, key=scores.get)
    return float(best), {"trial_samples": n_trial, "training_bound": scores, "chosen": float(best)}


def train(
    data: str = "digits",
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    latent_dim: int = 20,
    hidden: int | None = None,
    depth: int = 1,
    activation: str = "tanh",
    likelihood: str | None = None,
    posterior: str = "normal",
    prior: str | None = None,
    architecture: str = "mlp",
    algorithm: str = "aevb",
    estimator: str | None = None,
    samples: int = 1,
    batch_size: int = 100,
    optimizer: str = "adagrad",
    lr: float | str = "auto",
    budget: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    binarize: str = "grey",
    data_dir: str | Path | None = None,
    image_shape: tuple[int, int] | None = None,
    validation: bool = False,
    full_vb_eval: str = "mean",
    train_size: int | None = None,
    eval_marginal: str | None = None,
    eval_marginal_points: int = 1000,
    algorithm_options: dict | None = None,
    init: str = "paper",
    weight_prior: bool = True,
    eval_per_decade: int = 4,
    eval_size: int = 10_000,
    checkpoint_seconds: float = 300.0,
    checkpoint_samples: int | None = None,
    kl_beta: float = 1.0,
    kl_warmup: int | None = None,
    lr_schedule: str = "constant",
    lr_min: float = 0.0,
    keep: str = "last",
    patience: int | None = None,
    decoder_bias_init: bool = False,
    precision: str = "float32",
    tensorboard: bool = False,
    columns: list[str | int] | None = None,
    standardize: bool = False,
    progress: bool = True,
    draw_figures: bool = True,
) -> Run:
    """Train a VAE with AEVB (Algorithm 1) and return the run.

    With ``out`` the run is written to that directory (config.json, model.safetensors,
    training_state.safetensors, metrics.jsonl, figures/); ``resume`` continues such a run where it
    stopped (``budget`` or ``epochs`` may extend it). ``hidden`` defaults to the dataset's
    recommendation (500 for MNIST, 200 for Frey Face and digits), ``likelihood`` to the dataset's.
    ``validation`` trains MNIST on its first 50 000 images, holding out the last 10 000 as "valid".
    ``train_size`` keeps only the first N training points (Figure 3 uses 1 000).
    ``algorithm`` is "aevb" (Algorithm 1), "wake-sleep" or "full-vb" (Appendix F; ``full_vb_eval``
    says whether its bound is taken at the posterior mean of the decoder's weights or averaged
    over draws of them) or "mcem" (Appendix E). ``algorithm_options`` sets the algorithms'
    hyper-parameters by their TrainConfig names (``mcem_leapfrog``, ``mcem_updates``, ...).
    ``eval_marginal`` ("is" or "hmc") also logs log p(x) on the first ``eval_marginal_points``
    points of each split at every evaluation (Figure 3); MCEM, which has no bound, always does.
    ``posterior`` and ``prior`` name latent families (docs/FAMILIES.md; the prior defaults to the
    posterior's own standard member). ``estimator`` is "A", "B" or "iwae" (the importance-weighted
    bound with K = ``samples``, logged as ``*_iwae_bound`` beside the ELBO); by default B where
    KL(posterior || prior) is analytic, else A, and the run says which. ``architecture`` "conv"
    uses the convolutional encoder and decoder of :mod:`aevb.conv` (image data only).
    Started by torchrun as several processes (docs/DISTRIBUTED.md), each trains on its part of
    every minibatch: ``batch_size`` is per process, the global minibatch is ``batch_size`` times
    the number of processes (what config.json records), and rank 0 alone writes the run.

    Day-to-day options (docs/GUIDE.md): ``kl_beta`` weights the KL term of the training objective
    and ``kl_warmup`` ramps that weight linearly from 0 over so many samples (the run is marked,
    and the bounds it reports stay the true beta = 1 bounds); ``lr_schedule`` "cosine" or
    "linear" decays the step size from ``lr`` to ``lr_min`` over the budget (the evaluations log
    it as ``lr``; the "auto" step-size trial runs at constant step sizes); ``keep="best"`` also
    keeps the model with the best validation bound as best_model.safetensors, ``patience`` = P
    stops after P evaluations without a better one (both need ``validation``);
    ``decoder_bias_init`` starts the decoder's bias at the logit of the training-set mean;
    ``precision="bf16"`` autocasts the step to bfloat16 on CUDA (an error on CPU); ``tensorboard``
    writes event files to RUNDIR/tensorboard.
    ``columns`` keeps those columns of a CSV (header names or 0-based indices); ``standardize``
    z-scores each column with the training set's mean and standard deviation (stored in the run
    and undone by decode and sample), with a ``gaussian-linear`` likelihood by default.
    """
    dev = resolve_device(device)
    dev = distributed.setup_from_env(dev)  # under torchrun: join the ranks' process group
    progress = progress and distributed.is_main()  # rank 0 alone prints and writes
    if resume is not None:
        return _resume(Path(resume), budget, epochs, dev, progress, draw_figures)
    prior = prior or posterior
    if standardize and likelihood is None:
        likelihood = "gaussian-linear"
    if (keep == "best" or patience is not None) and not validation:
        raise ConfigError(
            "--keep best and --patience select on the validation bound; add --validation"
        )
    if estimator is None:
        estimator = default_estimator(posterior, prior)
        if progress:
            why = "analytic" if estimator == "B" else "no analytic"
            tqdm.write(f"estimator {estimator} ({why} KL({posterior} || {prior}))")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}; choose one of {sorted(ALGORITHMS)}")
    if binarize not in BINARIZE_MODES:
        raise ConfigError(f"unknown --binarize {binarize!r}; choose one of {list(BINARIZE_MODES)}")
    if distributed.world_size() > 1 and ALGORITHMS[algorithm].needs_index:
        raise ConfigError(f"{algorithm} keeps per-datapoint state; train it in one process")
    out_dir = None
    if out is not None:  # made by rank 0; its error, if any, is raised on every rank
        out_dir = distributed.on_main(lambda: _prepare_out(out)) or Path(out)
    tcfg = TrainConfig(
        algorithm=algorithm,
        estimator=estimator,
        samples=samples,
        batch_size=batch_size * distributed.world_size(),  # the global minibatch
        optimizer=optimizer,
        lr=lr,
        weight_prior=weight_prior,
        init=init,
        budget=budget,
        epochs=epochs,
        seed=seed,
        binarize=binarize,
        eval_per_decade=eval_per_decade,
        eval_size=eval_size,
        checkpoint_seconds=checkpoint_seconds,
        checkpoint_samples=checkpoint_samples,
        full_vb_eval=full_vb_eval,
        eval_marginal=eval_marginal,
        eval_marginal_points=eval_marginal_points,
        kl_beta=kl_beta,
        kl_warmup=kl_warmup,
        lr_schedule=lr_schedule,
        lr_min=lr_min,
        keep=keep,
        patience=patience,
        decoder_bias_init=decoder_bias_init,
        precision=precision,
        tensorboard=tensorboard,
        **_algorithm_options(algorithm_options),
    )
    _check_precision(tcfg, dev)
    ds = distributed.main_first(  # rank 0 first: it alone downloads missing files
        lambda: load_dataset(
            data,
            data_dir=data_dir,
            image_shape=image_shape,
            validation=validation,
            progress=progress,
            columns=columns,
        )
    )
    _limit_train(ds, train_size)
    stats = _standardize(ds, _standard_stats(ds) if standardize else None)
    mcfg = ModelConfig(
        x_dim=ds.x_dim,
        latent_dim=latent_dim,
        hidden=hidden or ds.default_hidden,
        depth=depth,
        activation=activation,
        likelihood=likelihood or ds.default_likelihood,
        posterior=posterior,
        prior=prior,
        image_shape=ds.image_shape,
        parameter_posterior=algorithm == "full-vb",
        architecture=architecture,
    )
    if not mcfg.supports_estimator(estimator):
        raise ConfigError(
            f"estimator {estimator} needs an analytic KL({posterior} || {prior}), which has no "
            "closed form; use --estimator A (or leave it out to pick one)"
        )
    train_x, test_x = _data_tensors(ds, mcfg.likelihood, binarize, dev)
    valid_x = _valid_tensor(ds, validation, mcfg.likelihood, binarize, dev)
    if out_dir is not None:  # before the step-size trial and training; rank 0's error on all
        distributed.on_main(lambda: _check_space(out_dir, mcfg, tcfg))
    if tcfg.lr == "auto":
        tcfg.lr, tcfg.lr_search = choose_lr(mcfg, tcfg, train_x, dev, progress)
    cfg = {
        "format_version": runs.FORMAT_VERSION,
        "aevb_version": __version__,
        "model": mcfg.to_dict(),
        "train": tcfg.to_dict(),
        "data": {
            "spec": data,
            "data_dir": str(data_dir) if data_dir else None,
            "image_shape": list(ds.image_shape) if ds.image_shape else None,
            "n_train": len(ds.train),
            "n_test": len(ds.test) if ds.test is not None else 0,
            "validation": validation,
            "train_size": train_size,
            "description": ds.description,
            "columns": list(columns) if columns else None,
            "column_names": ds.column_names,
            "standardize": stats,
        },
        "distributed": _processes(tcfg),
    }
    model = _build_model(mcfg, tcfg, dev, train_x)
    alg = ALGORITHMS[algorithm](model, tcfg, len(train_x), float(tcfg.lr))
    if out_dir is not None and distributed.is_main():
        runs.commit(out_dir, {runs.CONFIG: runs.json_bytes(cfg)})  # the run exists from here
    trainer = Trainer(alg, train_x, test_x, tcfg, out_dir, progress=progress, valid_x=valid_x)
    return _finish(trainer, out_dir, cfg, ds, draw_figures)


def _processes(tcfg: TrainConfig) -> dict:
    """The data-parallel layout of this call (docs/DISTRIBUTED.md): ranks and their minibatch."""
    world = distributed.world_size()
    return {"processes": world, "batch_per_process": tcfg.batch_size // world}


def _limit_train(ds: Dataset, n: int | None) -> None:
    """Keep the first ``n`` training points (in the dataset's fixed order)."""
    if n is None:
        return
    if n < 1 or n > len(ds.train):
        raise ConfigError(f"--train-size must be between 1 and {len(ds.train)}, got {n}")
    ds.train = ds.train[:n]


def _algorithm_options(options: dict | None) -> dict:
    """Validate hyper-parameter overrides against TrainConfig's algorithm fields."""
    allowed = {
        f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith(("mcem_", "full_vb_"))
    }
    for key in options or {}:
        if key not in allowed:
            raise ConfigError(f"unknown algorithm option {key!r}; known: {sorted(allowed)}")
    return dict(options or {})


def _resume(
    run_dir: Path,
    budget: int | None,
    epochs: int | None,
    dev: torch.device,
    progress: bool,
    draw_figures: bool,
) -> Run:
    cfg = runs.read_config(run_dir)

    def prepare() -> None:
        runs.check_writable(run_dir, "--resume")
        runs.recover(run_dir)  # finish a commit that a killed process left half done

    distributed.on_main(prepare)  # on rank 0; its error, if any, on every rank
    tdict = dict(cfg["train"])
    if budget is not None or epochs is not None:
        tdict["budget"], tdict["epochs"] = budget, epochs
    try:
        mcfg = ModelConfig(**cfg["model"])
        tcfg = TrainConfig(**tdict)
    except TypeError as e:
        raise RunError(
            f"{run_dir / runs.CONFIG}: settings this aevb does not know ({e}); was the run "
            "written by a newer aevb?"
        ) from None
    _check_precision(tcfg, dev)
    if tcfg.lr == "auto":
        raise RunError(f"{run_dir / runs.CONFIG}: the step size was never chosen; start a new run")
    ds = distributed.main_first(
        lambda: load_dataset(
            cfg["data"]["spec"],
            data_dir=cfg["data"].get("data_dir"),
            image_shape=mcfg.image_shape,
            validation=bool(cfg["data"].get("validation", False)),
            progress=progress,
            columns=cfg["data"].get("columns"),
        )
    )
    _limit_train(ds, cfg["data"].get("train_size"))
    _standardize(ds, cfg["data"].get("standardize"))
    if ds.x_dim != mcfg.x_dim:
        raise DataError(
            f"{ds.name} has {ds.x_dim} columns but the run's model expects {mcfg.x_dim}"
        )
    train_x, test_x = _data_tensors(ds, mcfg.likelihood, tcfg.binarize, dev)
    valid = bool(cfg["data"].get("validation", False))
    valid_x = _valid_tensor(ds, valid, mcfg.likelihood, tcfg.binarize, dev)
    model = _build_model(mcfg, tcfg, dev, train_x)
    alg = ALGORITHMS[tcfg.algorithm](model, tcfg, len(train_x), float(tcfg.lr))
    trainer = Trainer(alg, train_x, test_x, tcfg, run_dir, progress=progress, valid_x=valid_x)
    if runs.has_file(run_dir, runs.STATE):  # else killed before its first checkpoint: from 0
        tensors, meta = runs.load_run_tensors(run_dir, runs.STATE)
        try:
            trainer.load_state(
                {k: v.to(dev) if k != "rng.noise" else v for k, v in tensors.items()}, meta
            )
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise RunError(f"{run_dir / runs.STATE}: does not match config.json ({e})") from None
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes again
    if distributed.is_main():
        runs.truncate_metrics(run_dir, trainer.samples_seen)
    if budget is not None or epochs is not None or cfg.get("distributed") != _processes(tcfg):
        cfg["train"] = tcfg.to_dict()
        cfg["distributed"] = _processes(tcfg)
        if distributed.is_main() and cfg["format_version"] == runs.FORMAT_VERSION:
            runs.commit(run_dir, {runs.CONFIG: runs.json_bytes(cfg)})
    if distributed.is_main() and cfg["format_version"] != runs.FORMAT_VERSION:
        cfg = runs.convert(run_dir, cfg)  # an older format: rewritten as this one, with manifest
    return _finish(trainer, run_dir, cfg, ds, draw_figures)


def _finish(trainer: Trainer, out_dir: Path | None, cfg: dict, ds: Dataset, draw: bool) -> Run:
    if out_dir is not None:  # before training, not at a checkpoint; rank 0's error on all
        alg_bytes = sum(t.numel() * t.element_size() for t in trainer.alg.state_tensors().values())
        need = _space_needed(trainer.model, trainer.config, alg_bytes)
        distributed.on_main(lambda: runs.check_space(out_dir, need))
    trainer.run()
    trainer.checkpoint()
    main = distributed.is_main()
    metrics = runs.read_metrics(out_dir) if out_dir is not None and main else trainer.records
    run = Run(out_dir, trainer.model, cfg, metrics)
    if out_dir is not None and draw and main:
        draw_run_figures(run, ds)
    return run


def kl_mark(train_cfg: dict) -> str:
    """A label suffix marking a run trained with a weighted KL term ('' for the plain bound)."""
    beta, warm = train_cfg.get("kl_beta", 1.0), train_cfg.get("kl_warmup")
    if beta == 1.0 and warm is None:
        return ""
    parts = [f"beta={beta:g}"] if beta != 1.0 else []
    if warm is not None:
        parts.append(f"KL warm-up {warm:,} samples")
    return f" [trained with {', '.join(parts)}; bounds at beta=1]"


def draw_run_figures(run: Run, ds: Dataset | None = None) -> list[Path]:
    """Write figures/curves.png, samples.png, reconstructions.png (and manifold.png for 2-D z).

    They are drawn aside and written into the run as one change recorded in its manifest.
    """
    assert run.path is not None
    with tempfile.TemporaryDirectory(prefix="aevb-figures-") as tmp:
        drawn = _draw_figures(run, ds, Path(tmp))
        files = {f"{runs.FIGURES}/{p.name}": p.read_bytes() for p in drawn}
    runs.write_files(run.path, files)
    return [run.path / name for name in files]


def _draw_figures(run: Run, ds: Dataset | None, fig_dir: Path) -> list[Path]:
    model = run.model
    shape = model.config.image_shape
    written = []
    label = f"{run.config['data']['spec']}, N_z={model.config.latent_dim}"
    title = f"AEVB on {label}{kl_mark(run.config['train'])}"
    figures.plot_curves([(label, run.metrics)], fig_dir / "curves.png", title=title)
    written.append(fig_dir / "curves.png")
    g = torch.Generator(device=model.device).manual_seed(0)
    figures.save_grid(
        fig_dir / "samples.png", model.sample(100, g), shape, 10, "samples from p(x|z), z ~ p(z)"
    )
    written.append(fig_dir / "samples.png")
    if ds is not None and run.config["train"]["algorithm"] != "mcem":  # MCEM trains no encoder
        x = torch.from_numpy((ds.test if ds.test is not None else ds.train)[:50]).to(model.device)
        rec = model.reconstruct(x)
        pairs = torch.stack([x, rec], 1).reshape(-1, x.shape[1])
        figures.save_grid(
            fig_dir / "reconstructions.png",
            pairs,
            shape,
            10,
            "test data (odd columns) and reconstructions",
        )
        written.append(fig_dir / "reconstructions.png")
    if model.config.latent_dim == 2:
        with contextlib.suppress(ConfigError):  # a prior without an inverse CDF has no grid
            manifold(run.path, 20, fig_dir / "manifold.png", model=model)
            written.append(fig_dir / "manifold.png")
    return written


# --------------------------------------------------------------------------- using a trained run


def load(run_dir: str | Path, device: str = "cpu", which: str = "last") -> VAE:
    """The trained model of a run directory (weights from model.safetensors; no pickle).

    ``which="best"`` loads best_model.safetensors, the model with the best validation bound of a
    run trained with ``keep="best"``.
    """
    run_dir = Path(run_dir)
    if which not in ("last", "best"):
        raise ConfigError(f"unknown model {which!r}; choose last or best")
    cfg = runs.read_config(run_dir)
    try:
        mcfg = ModelConfig(**cfg["model"])
    except TypeError as e:
        raise RunError(f"{run_dir / runs.CONFIG}: bad model section ({e})") from None
    model = VAE(mcfg)
    weights = run_dir / (runs.MODEL if which == "last" else BEST_MODEL)
    if which == "best" and not runs.has_file(run_dir, BEST_MODEL):
        raise RunError(f"{weights}: missing; the run was not trained with --keep best")
    tensors, _ = runs.load_run_tensors(run_dir, weights.name)  # checked against the manifest
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise RunError(f"{weights}: does not match config.json ({first})") from None
    model.eval()
    return model.to(resolve_device(device))


def _run_data(
    run_dir: Path, data: str | None, split: str, data_dir, binarize: str | None, which="last"
) -> tuple[VAE, np.ndarray, str, dict]:
    cfg = runs.read_config(run_dir)
    model = load(run_dir, which=which)
    spec = data or cfg["data"]["spec"]
    ddir = (
        data_dir
        if data_dir is not None
        else (cfg["data"].get("data_dir") if data is None else None)
    )
    same = spec == cfg["data"]["spec"]
    ds = load_dataset(
        spec,
        data_dir=ddir,
        image_shape=model.config.image_shape if data is None else None,
        splits=(split,),
        validation=(spec == "mnist" or spec not in DATASETS)
        and (split == "valid" or (same and bool(cfg["data"].get("validation", False)))),
        columns=cfg["data"].get("columns") if spec not in DATASETS else None,
    )
    if ds.x_dim != model.config.x_dim:
        raise DataError(
            f"{spec} has {ds.x_dim} columns but the model was trained on {model.config.x_dim}; "
            "use data of the same dimension"
        )
    mode = binarize or cfg["train"].get("binarize", "grey")
    _standardize(ds, cfg["data"].get("standardize"))  # the run's z-scores, from its training set
    x = ds.split(split)
    check_support(x, model.config.likelihood, mode, f"{ds.name} ({split})")
    if mode in ("dynamic", "static"):
        g = torch.Generator().manual_seed(_split_seed(cfg["train"]["seed"], 7))
        x = torch.bernoulli(torch.from_numpy(x), generator=g).numpy()
    return model, x, mode, cfg


def evaluate(
    run_dir: str | Path,
    split: str = "test",
    *,
    data: str | None = None,
    data_dir: str | Path | None = None,
    binarize: str | None = None,
    estimator: str | None = None,
    samples: int = 1,
    iwae_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    marginal: str | None = None,
    importance_samples: int = 5000,
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
    model: str = "last",
) -> dict:
    """The lower bound per datapoint on a split, with its standard error over datapoints.

    ``points`` keeps the first N points of the split (with ``spread``, N points evenly spaced
    through it: the first ones of a file may not be typical, e.g. binarized MNIST's test set).
    ``marginal`` ("is", "hmc" or "both") adds
    estimates of log p(x) on the same points (PAPER.md section 7): importance sampling with the
    encoder as proposal (``importance_samples`` = K draws per point, decoded ``chunk_size`` pairs
    at a time) and/or the Appendix D estimator (``hmc_samples`` posterior draws per point,
    ``hmc_leapfrog`` leapfrog steps, ``hmc_warmup`` warm-up transitions adapting the step size to
    ``hmc_target_accept``). Each comes with its standard error over points, its paired gap to the
    bound and its settings, under ``result["marginal"][method]``. On CPU both estimators run
    ``workers`` single-threaded workers (default: torch's thread count), see
    :func:`aevb.marginal.importance_sampling`. ``iwae_samples`` = K adds the importance-weighted
    bound (``result["iwae_bound"]``); for runs trained on it, the bound reported is the ELBO (B
    where the KL is analytic, else A) and K defaults to the run's.
    ``model="best"`` evaluates best_model.safetensors of a run trained with ``keep="best"``.
    """
    run_dir = Path(run_dir)
    which = model  # "best": best_model.safetensors of a run trained with keep="best"
    model, x, mode, cfg = _run_data(run_dir, data, split, data_dir, binarize, which)
    if estimator == "iwae":
        raise ConfigError("--estimator names an ELBO estimator (A or B); use --iwae-samples K")
    est = estimator or cfg["train"]["estimator"]
    if est == "iwae":
        est = "B" if model.config.supports_estimator("B") else "A"
        iwae_samples = iwae_samples or int(cfg["train"]["samples"])
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
        ("--leapfrog-steps", hmc_leapfrog),
        ("--workers", workers or 1),
    ):
        if int(v) < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v}")
    if hmc_warmup < 0:
        raise ConfigError(f"--hmc-warmup must be >= 0, got {hmc_warmup}")
    if not 0.0 < hmc_target_accept < 1.0:
        raise ConfigError(f"--target-accept must lie in (0, 1), got {hmc_target_accept}")
    if points is not None:
        if points < 1 or points > len(x):
            raise ConfigError(
                f"--points must be between 1 and the {len(x)} points of the {split} split, "
                f"got {points}"
            )
        x = x[(np.arange(points) * len(x)) // points] if spread else x[:points]
    dev = resolve_device(device)
    model = model.to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
        b = torch.cat(
            [
                model.elbo(xt[i : i + batch_size], est, samples, g)
                for i in range(0, len(xt), batch_size)
            ]
        )
    res = {
        "run": str(run_dir),
        "data": data or cfg["data"]["spec"],
        "split": split,
        "model": which,
        "binarize": mode,
        "estimator": est,
        "samples": samples,
        "points": len(b),
        "points_spread": bool(spread and points is not None),
        "bound": float(b.mean()),
        "bound_se": _se(b),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if iwae_samples is not None:
        step = max(1, 20_000 // iwae_samples)  # at most ~20 000 decoded (z, x) pairs at once
        gi = torch.Generator(device=dev).manual_seed(_split_seed(seed, 9))
        with torch.no_grad():
            w = torch.cat(
                [
                    model.iwae_bound(xt[i : i + step], iwae_samples, gi)
                    for i in range(0, len(xt), step)
                ]
            )
        res.update(iwae_samples=iwae_samples, iwae_bound=float(w.mean()), iwae_bound_se=_se(w))
    if marginal is not None:
        methods = ("is", "hmc") if marginal == "both" else (marginal,)
        res["marginal"] = {}
        for i, method in enumerate(methods):
            gm = torch.Generator(device=dev).manual_seed(_split_seed(seed, 8, i))
            res["marginal"][method] = _marginal_estimate(
                model,
                xt,
                b,
                method,
                gm,
                progress,
                importance_samples=importance_samples,
                chunk_size=chunk_size,
                hmc_samples=hmc_samples,
                hmc_leapfrog=hmc_leapfrog,
                hmc_warmup=hmc_warmup,
                hmc_target_accept=hmc_target_accept,
                workers=workers or torch.get_num_threads(),
            )
    return res


def _se(v: torch.Tensor) -> float:
    return float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0


def _marginal_estimate(
    model: VAE,
    x: torch.Tensor,
    bound: torch.Tensor,
    method: str,
    generator: torch.Generator,
    progress: bool,
    **s,
) -> dict:
    """log p(x) by one method: mean, standard error, paired gap to the bound, settings."""
    from . import marginal as mlik

    label = "importance sampling" if method == "is" else "Appendix D (HMC)"
    t0 = time.perf_counter()
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
    gap = lp - bound.double().cpu()
    out = {
        "method": method,
        "log_likelihood": float(lp.mean()),
        "se": _se(lp),
        "gap": float(gap.mean()),
        "gap_se": _se(gap),
        "seconds": round(seconds, 3),
    }
    if method == "is":
        ess = r.ess.double().cpu()
        out.update(
            importance_samples=r.samples,
            chunk_size=r.chunk_size,
            workers=s["workers"],
            bound_k=float(r.bound.double().mean()),
            bound_k_se=_se(r.bound.double().cpu()),
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


def _write_image_or_array(
    out: Path, images: torch.Tensor, shape, ncol: int, title: str, cfg: dict | None = None
) -> Path:
    """A PNG grid, or the rows as .npy / .csv in data units (--standardize undone via ``cfg``)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".npy", ".csv"):
        rows = (_unstandardize(images, cfg) if cfg else images).detach().cpu().numpy()
        buf = io.BytesIO()
        if suffix == ".npy":
            np.save(buf, rows)
        else:
            names = (cfg or {}).get("data", {}).get("column_names")
            header = ",".join(names) if names and len(names) == rows.shape[1] else ""
            np.savetxt(buf, rows, delimiter=",", header=header, comments="", fmt="%.7g")
        runs.atomic_write_bytes(out, buf.getvalue())
    elif suffix == ".png":
        figures.save_grid(out, images, shape, ncol, title)
    else:
        raise ConfigError(f"--out {out}: use a .png (picture), .npy or .csv (array) file name")
    return out


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
        np.savez(buf, **{n: p.numpy() for n, p in zip(names, params, strict=True)})
    elif out.suffix.lower() == ".npy":
        np.save(buf, torch.cat(params, 1).numpy())
    else:
        raise ConfigError(f"--out {out}: use a .npy or .npz file name")
    runs.atomic_write_bytes(out, buf.getvalue())
    return out


# --------------------------------------------------------------------------- day-to-day tools


def decode(run_dir: str | Path, latents, out: str | Path | None = None) -> np.ndarray:
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
        from .data.arrays import _load_file  # headers checked before anything is allocated

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
    gaussian = model.config.prior == "normal"
    if method == "spherical" and not gaussian:
        raise ConfigError(
            f"spherical paths assume a Gaussian prior, this model's is {model.config.prior!r}; "
            "use --method linear"
        )
    methods = ["linear", "spherical"] if method == "both" else [method]
    if not gaussian:
        methods = ["linear"]
    if 2 * pairs > len(x):
        raise ConfigError(f"--pairs {pairs} needs {2 * pairs} points; {split} has {len(x)}")
    index = np.random.default_rng(seed).choice(len(x), size=2 * pairs, replace=False)
    xs = torch.from_numpy(np.ascontiguousarray(x[index], dtype=np.float32))
    with torch.no_grad():
        centers = model.encoder.posterior(xs).center()
    t = torch.linspace(0.0, 1.0, steps)
    zs = []
    for p in range(pairs):
        z0, z1 = centers[2 * p], centers[2 * p + 1]
        for m in methods:
            if m == "linear":
                zs.append((1 - t)[:, None] * z0 + t[:, None] * z1)
            else:
                zs.append(_slerp(z0, z1, t))
    z = torch.stack(zs).reshape(pairs, len(methods), steps, -1)
    with torch.no_grad():
        dec = model.decode_mean(z.reshape(-1, z.shape[-1])).reshape(pairs, len(methods), steps, -1)
    out = Path(out)
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
    return out


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
