"""Training: :func:`train`, resuming a run, the step-size trial and a run's figures."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed, figures, hardware, mlflow_tracking, runs
from .._version import __version__
from ..algorithms import ALGORITHMS
from ..data import Dataset, MappedRows, check_support, first_rows, load_dataset
from ..data.memory import (
    IN_MEMORY,
    InMemoryData,
    check_same_data,
    dataset_from_memory,
    fingerprint,
    is_in_memory,
)
from ..diagnostics import ACTIVE_THRESHOLD
from ..errors import ConfigError, DataError, NumericalError, RunError
from ..model import VAE, ModelConfig, default_estimator
from ..options import declared
from ..seeds import split_seed
from ..settings import LR_CANDIDATES, DataOptions, TrainConfig, TrainSettings, settings_from
from ..training import Trainer
from .common import Run, _standard_stats, _standardize, resolve_device
from .tools import manifold

if TYPE_CHECKING:
    from ..callbacks import Callback

#: A split as the Trainer reads it: a tensor on the device, or rows mapped from disk.
Rows = torch.Tensor | MappedRows
#: (train, test, valid) data of a run; test and valid may be absent.
_Tensors = tuple[Rows, Rows | None, Rows | None]


def _build_model(
    mcfg: ModelConfig, tcfg: TrainConfig, device: torch.device, train_x: Rows | None = None
) -> VAE:
    torch.manual_seed(tcfg.seed)  # PyTorch's own init, used with --init torch
    model = VAE(mcfg)
    if tcfg.init == "paper":
        model.init_parameters(
            tcfg.init_std, torch.Generator().manual_seed(split_seed(tcfg.seed, 0))
        )
    if tcfg.decoder_bias_init and train_x is not None:  # Burda et al.'s trick
        mean = train_x.mean() if isinstance(train_x, MappedRows) else train_x.double().mean(0)
        model.init_decoder_bias(torch.as_tensor(mean, dtype=torch.float64).cpu())
    return model.to(device)


def _check_precision(tcfg: TrainConfig, dev: torch.device) -> None:
    """bf16 where it is fast: CUDA, or a CPU with bf16 instructions (else one clear error
    rather than a silent slow path), and only for an algorithm whose step honours it."""
    if tcfg.precision != "bf16":
        return
    if not ALGORITHMS[tcfg.algorithm].has_bf16:
        bf16 = ", ".join(name for name, a in ALGORITHMS.items() if a.has_bf16)
        raise ConfigError(
            f"--precision bf16 covers the algorithms {bf16}, not {tcfg.algorithm}; "
            "drop --precision (float32)"
        )
    hardware.check_bf16(dev.type, "--precision bf16")


def _valid_tensor(
    ds: Dataset, validation: bool, likelihood: str, binarize: str, dev: torch.device
) -> Rows | None:
    """The validation split as a tensor when asked for (model selection and its curves)."""
    if not validation:
        return None
    v = ds.split("valid")
    check_support(v, likelihood, binarize, f"{ds.name} (valid)")
    return _on_device(v, dev)


def _on_device(x: np.ndarray | MappedRows, dev: torch.device) -> Rows:
    """A split as a tensor on the device, or left on disk when it is memory-mapped."""
    return x if isinstance(x, MappedRows) else torch.from_numpy(x).to(dev)


def _data_tensors(
    ds: Dataset, likelihood: str, binarize: str, device: torch.device
) -> tuple[Rows, Rows | None]:
    ds.split("train")  # a dataset without its training files says which file to get
    check_support(ds.train, likelihood, binarize, f"{ds.name} (train)")
    if ds.test is not None:
        check_support(ds.test, likelihood, binarize, f"{ds.name} (test)")
    te = _on_device(ds.test, device) if ds.test is not None else None
    return _on_device(ds.train, device), te


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
    train_x: Rows,
    device: torch.device,
    progress: bool = True,
) -> tuple[float, dict]:
    """The paper's step-size selection: a short trial per candidate, best training bound wins."""
    n_trial = tcfg.lr_trial_samples or max(
        10 * tcfg.batch_size, min(30_000, (tcfg.budget or 10**6) // 10)
    )
    scores: dict[str, float] = {}
    for lr in LR_CANDIDATES[tcfg.optimizer]:
        # the trial compares constant starting step sizes
        trial = tcfg.with_constant_lr(lr=lr, budget=n_trial, epochs=None)
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
    best = max(scores, key=scores.__getitem__)
    return float(best), {"trial_samples": n_trial, "training_bound": scores, "chosen": float(best)}


def train(
    data: str | DataOptions | InMemoryData | None = None,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    settings: TrainSettings | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    draw_figures: bool = True,
    **options: Any,
) -> Run:
    """Train a VAE (AEVB, Algorithm 1, unless ``algorithm`` says otherwise) and return the run.

    ``options`` are the settings of ``aevb train`` by name (``latent_dim=2``, ``budget=10**5``,
    ``seed=...``: each is declared, with its help, on a group of :mod:`aevb.settings`), or
    whole groups (``model=ModelOptions(...)``, ``optim=OptimOptions(...)``); ``settings`` is a
    :class:`~aevb.settings.TrainSettings` to start from, and ``data`` a dataset name, a file, a
    folder of images, a :class:`~aevb.settings.DataOptions`, or data held in Python: a NumPy
    array or torch tensor of datapoints, a pair ``(train, test)`` of them, or a map-style
    ``torch.utils.data.Dataset`` (docs/DATA.md). Every option is checked before anything is
    created.
    With ``out`` the run is written to that directory (config.json, model.safetensors,
    training_state.safetensors, metrics.jsonl, figures/); ``resume`` continues such a run where
    it stopped (``budget`` or ``epochs`` may extend it; a run trained on data held in Python is
    given the same data again, and refuses other data). ``callbacks`` are
    :class:`aevb.callbacks.Callback` s called at the Trainer's events (docs/GUIDE.md).
    Started by torchrun as several processes (docs/DISTRIBUTED.md), each trains on its part of
    every minibatch: ``batch_size`` is per process, and rank 0 alone writes the run.
    """
    given = data if is_in_memory(data) else None  # data held in Python, not a spec
    if isinstance(data, DataOptions):
        options["data"] = data  # the group, by its name in TrainSettings
    elif data is not None and given is None:
        options["data"] = data
    if resume is not None:
        if settings is not None:
            options["settings"] = settings  # refused: a resumed run keeps its own settings
        return _resume(Path(resume), options, callbacks, progress, draw_figures, given)
    if given is not None:
        options["data"] = IN_MEMORY
    s = settings_from(options, settings)
    dev = distributed.setup_from_env(resolve_device(s.run.device))  # under torchrun: join
    progress = progress and distributed.is_main()  # rank 0 alone prints and writes
    tcfg = _train_config(s, progress)
    _check_precision(tcfg, dev)
    distributed.on_main(lambda: mlflow_tracking.check(tcfg.mlflow, out))  # MLflow is there
    out_dir = None
    if out is not None:  # made by rank 0; its error, if any, is raised on every rank
        out_dir = distributed.on_main(lambda: _prepare_out(out)) or Path(out)
    d = s.data
    ds, stats = _dataset(
        d, d.image_shape, progress, _standard_stats if d.standardize else None, given
    )
    mcfg = _model_config(s, tcfg, ds)
    tensors = _tensors(ds, mcfg, tcfg, d.validation, dev)
    if out_dir is not None:  # before the step-size trial and training; rank 0's error on all
        distributed.on_main(lambda: _check_space(out_dir, mcfg, tcfg))
    cfg = _run_record(mcfg, tcfg, d, ds, stats)
    if tcfg.lr == "auto":
        _commit_config(out_dir, cfg)  # a run killed during the trial resumes by running it
        tcfg.lr, tcfg.lr_search = choose_lr(mcfg, tcfg, tensors[0], dev, progress)
        cfg["train"] = tcfg.to_dict()
    _commit_config(out_dir, cfg)  # the run exists from here
    trainer = _trainer(mcfg, tcfg, tensors, dev, out_dir, progress, callbacks, s.run.time_limit)
    return _finish(trainer, out_dir, cfg, ds, draw_figures)


def _train_config(s: TrainSettings, progress: bool) -> TrainConfig:
    """The engine's configuration, with the settings' defaults resolved (estimator, minibatch)."""
    m, obj = s.model, s.objective
    estimator: str | None = obj.estimator
    autoencoder = obj.algorithm == "autoencoder"
    if autoencoder and estimator is not None:
        raise ConfigError(
            "the auto-encoder trains on log p(x|z=mu(x)) alone (no bound, no noise, no KL); "
            "drop --estimator"
        )
    if estimator is None:
        estimator = default_estimator(m.posterior, m.prior or m.posterior)
        if progress and not autoencoder:  # (recorded, unused by the auto-encoder)
            why = "analytic" if estimator == "B" else "no analytic"
            tqdm.write(
                f"estimator {estimator} ({why} KL({m.posterior} || {m.prior or m.posterior}))"
            )
    if m.dropout and obj.algorithm != "aevb":
        raise ConfigError(
            f"--dropout is for AEVB's step (its masks drawn from the run's noise), not "
            f"{obj.algorithm}; drop it"
        )
    c = s.checkpoints
    if (c.keep == "best" or c.patience is not None) and not s.data.validation:
        raise ConfigError(
            "--keep best and --patience select on the validation bound; add --validation"
        )
    if s.optim.lr_schedule == "plateau" and not s.data.validation:
        raise ConfigError(
            "--lr-schedule plateau cuts the step size when the validation bound stops "
            "improving; add --validation"
        )
    if distributed.world_size() > 1 and ALGORITHMS[obj.algorithm].needs_index:
        raise ConfigError(f"{obj.algorithm} keeps per-datapoint state; train it in one process")
    # under torchrun --batch-size is per process; the engine runs on the global minibatch
    return s.train_config(
        estimator=estimator, batch_size=s.optim.batch_size * distributed.world_size()
    )


def _model_config(s: TrainSettings, tcfg: TrainConfig, ds: Dataset) -> ModelConfig:
    """The model options resolved for the dataset (its size, default width and likelihood)."""
    m = s.model
    likelihood = m.likelihood or ("gaussian-linear" if s.data.standardize else None)
    resolved = {
        "hidden": m.hidden or ds.default_hidden,
        "likelihood": likelihood or ds.default_likelihood,
        "prior": m.prior or m.posterior,
    }
    mcfg = ModelConfig(
        **{**vars(m), **resolved},
        x_dim=ds.x_dim,
        image_shape=ds.image_shape,
        parameter_posterior=tcfg.algorithm == "full-vb",
    )
    assert tcfg.estimator is not None  # _train_config resolved it
    if not mcfg.supports_estimator(tcfg.estimator):
        raise ConfigError(
            f"estimator {tcfg.estimator} needs an analytic KL({mcfg.posterior} || {mcfg.prior}), "
            "which has no closed form; use --estimator A (or leave it out to pick one)"
        )
    return mcfg


def _dataset(
    d: DataOptions,
    image_shape: tuple[int, ...] | None,
    progress: bool,
    stats: dict | Callable[[Dataset], dict] | None,
    given: InMemoryData | None = None,
) -> tuple[Dataset, dict | None]:
    """The run's data, loaded (rank 0 first: it alone downloads) or ``given`` from Python,
    fingerprinted, cut and standardised, and the standardisation: ``stats`` is the run's (a
    dict), a function of the data set computing it from the training set (a new run), or None.
    """
    if d.memory_map and (d.standardize or given is not None):
        what = "--standardize" if d.standardize else "data given from Python"
        raise ConfigError(f"--memory-map reads an .npy file as it is; it does not take {what}")
    if given is not None:
        if d.columns:
            raise ConfigError("--columns selects columns of a file; select them in the array")
        ds = dataset_from_memory(given, image_shape=image_shape, validation=d.validation)
    elif d.data == IN_MEMORY:
        raise DataError(
            "this run was trained on data given from Python; give the same data again: "
            "aevb.train(data, resume=RUN_DIR)"
        )
    else:
        ds = distributed.main_first(
            lambda: load_dataset(
                d.data,
                data_dir=d.data_dir,
                image_shape=image_shape,
                validation=d.validation,
                progress=progress,
                columns=d.columns,
                image_size=d.image_size,
                memory_map=d.memory_map,
            )
        )
    ds.fingerprint = fingerprint(ds)
    _limit_train(ds, d.train_size)
    return ds, _standardize(ds, stats(ds) if callable(stats) else stats)


def _tensors(
    ds: Dataset, mcfg: ModelConfig, tcfg: TrainConfig, validation: bool, dev: torch.device
) -> _Tensors:
    """(train, test, valid) tensors, each checked against the likelihood's support."""
    if ds.x_dim != mcfg.x_dim:
        raise DataError(
            f"{ds.name} has {ds.x_dim} columns but the run's model expects {mcfg.x_dim}"
        )
    if isinstance(ds.train, MappedRows) and tcfg.binarize == "static":
        raise ConfigError(
            "--binarize static draws the whole data set once, which --memory-map does not hold; "
            "use --binarize dynamic (a draw per minibatch), or binarize the file"
        )
    train_x, test_x = _data_tensors(ds, mcfg.likelihood, tcfg.binarize, dev)
    return train_x, test_x, _valid_tensor(ds, validation, mcfg.likelihood, tcfg.binarize, dev)


def _trainer(
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    tensors: _Tensors,
    dev: torch.device,
    run_dir: Path | None,
    progress: bool,
    callbacks: Sequence[Callback],
    time_limit: float | None = None,
) -> Trainer:
    """The model (initialised from the seed), its algorithm, and the Trainer around them."""
    train_x, test_x, valid_x = tensors
    model = _build_model(mcfg, tcfg, dev, train_x)
    alg = ALGORITHMS[tcfg.algorithm](model, tcfg, len(train_x), float(tcfg.lr))
    return Trainer(
        alg,
        train_x,
        test_x,
        tcfg,
        run_dir,
        progress=progress,
        valid_x=valid_x,
        callbacks=list(callbacks),
        time_limit=time_limit,
    )


def _run_record(
    mcfg: ModelConfig, tcfg: TrainConfig, d: DataOptions, ds: Dataset, stats: dict | None
) -> dict:
    """config.json: the model, the engine's settings and the data's, and what was derived."""
    data = {f.name: getattr(d, f.name) for f in declared(DataOptions) if f.name != "data"}
    data.update(
        spec=d.data,
        data_dir=str(d.data_dir) if d.data_dir else None,
        image_shape=list(ds.image_shape) if ds.image_shape else None,
        n_train=len(ds.train),
        n_test=len(ds.test) if ds.test is not None else 0,
        description=ds.description,
        columns=list(d.columns) if d.columns else None,
        column_names=ds.column_names,
        standardize=stats,
        fingerprint=ds.fingerprint,
    )
    return {
        "format_version": runs.FORMAT_VERSION,
        "aevb_version": __version__,
        "model": mcfg.to_dict(),
        "train": tcfg.to_dict(),
        "data": data,
        "distributed": _processes(tcfg),
    }


def _commit_config(out_dir: Path | None, cfg: dict) -> None:
    if out_dir is not None and distributed.is_main():
        runs.commit(out_dir, {runs.CONFIG: runs.json_bytes(cfg)})


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


RESUME_OPTIONS = ("budget", "epochs", "device", "data_dir", "time_limit")
"""What ``--resume`` may change: the run's length, where it runs and where its data lies, and
this call's time limit."""


def _resume(
    run_dir: Path,
    options: dict,
    callbacks: Sequence[Callback],
    progress: bool,
    draw: bool,
    given: InMemoryData | None = None,
) -> Run:
    """Continue a run where its last checkpoint left it, with the settings it recorded."""
    extra = sorted(set(options) - set(RESUME_OPTIONS))
    if extra:
        raise ConfigError(
            f"--resume continues {run_dir} with its own settings; only "
            f"{', '.join(RESUME_OPTIONS)} may be given with it, not {', '.join(extra)}"
        )
    s = settings_from(options)
    dev = distributed.setup_from_env(resolve_device(s.run.device))
    progress = progress and distributed.is_main()
    cfg = runs.read_config(run_dir)
    distributed.on_main(lambda: _prepare_resume(run_dir))  # its error, if any, on every rank
    mcfg, tcfg = _recorded_configs(run_dir, cfg, options)
    _check_precision(tcfg, dev)
    distributed.on_main(lambda: mlflow_tracking.check(tcfg.mlflow, run_dir))
    d = _recorded_data(cfg, options)
    if given is not None and d.data != IN_MEMORY:
        raise ConfigError(
            f"{run_dir} was trained on {d.data!r}, which it reloads; resume it without data"
        )
    ds, _ = _dataset(d, mcfg.image_shape, progress, cfg["data"].get("standardize"), given)
    check_same_data(
        cfg["data"].get("fingerprint"),
        ds,
        f"--resume {run_dir}",
        "give the data the run was trained on, or start a new run",
    )
    tensors = _tensors(ds, mcfg, tcfg, d.validation, dev)
    changed = "budget" in options or "epochs" in options or tcfg.lr == "auto"
    if tcfg.lr == "auto":  # killed during the step-size trial: run it, then the run
        tcfg.lr, tcfg.lr_search = choose_lr(mcfg, tcfg, tensors[0], dev, progress)
    trainer = _trainer(mcfg, tcfg, tensors, dev, run_dir, progress, callbacks, s.run.time_limit)
    _load_checkpoint(trainer, run_dir, dev)
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes again
    if distributed.is_main():
        runs.truncate_metrics(run_dir, trainer.samples_seen)
    changed = changed or cfg.get("distributed") != _processes(tcfg)
    if changed:
        cfg["train"], cfg["distributed"] = tcfg.to_dict(), _processes(tcfg)
    if changed and cfg["format_version"] == runs.FORMAT_VERSION:
        _commit_config(run_dir, cfg)
    if distributed.is_main() and cfg["format_version"] != runs.FORMAT_VERSION:
        cfg = runs.convert(run_dir, cfg)  # an older format: rewritten as this one, with manifest
    return _finish(trainer, run_dir, cfg, ds, draw)


def _prepare_resume(run_dir: Path) -> None:
    runs.check_writable(run_dir, "--resume")
    runs.recover(run_dir)  # finish a commit that a killed process left half done


def _recorded_configs(run_dir: Path, cfg: dict, options: dict) -> tuple[ModelConfig, TrainConfig]:
    """The model and engine configurations a run recorded (a new length where one is given)."""
    tdict = dict(cfg["train"])
    if "budget" in options or "epochs" in options:
        tdict["budget"], tdict["epochs"] = options.get("budget"), options.get("epochs")
    try:
        return ModelConfig(**cfg["model"]), TrainConfig(**tdict)
    except TypeError as e:
        raise RunError(
            f"{run_dir / runs.CONFIG}: settings this aevb does not know ({e}); was the run "
            "written by a newer aevb?"
        ) from None


def _recorded_data(cfg: dict, options: dict) -> DataOptions:
    """The data options a run recorded (its data folder replaced where one is given)."""
    data = cfg["data"]
    return DataOptions(
        data=data["spec"],
        data_dir=options.get("data_dir") or data.get("data_dir"),
        validation=bool(data.get("validation", False)),
        train_size=data.get("train_size"),
        columns=data.get("columns"),
        image_size=data.get("image_size"),
        memory_map=bool(data.get("memory_map", False)),
    )


def _load_checkpoint(trainer: Trainer, run_dir: Path, dev: torch.device) -> None:
    """The trainer's state from the run's last checkpoint (none yet: it starts from step 0)."""
    if not runs.has_file(run_dir, runs.STATE):
        return
    tensors, meta = runs.load_run_tensors(run_dir, runs.STATE)
    try:
        trainer.load_state(
            {k: v.to(dev) if k != "rng.noise" else v for k, v in tensors.items()}, meta
        )
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise RunError(f"{run_dir / runs.STATE}: does not match config.json ({e})") from None


def _finish(trainer: Trainer, out_dir: Path | None, cfg: dict, ds: Dataset, draw: bool) -> Run:
    if out_dir is not None:  # before training, not at a checkpoint; rank 0's error on all
        alg_bytes = sum(t.numel() * t.element_size() for t in trainer.alg.state_tensors().values())
        need = _space_needed(trainer.model, trainer.config, alg_bytes)
        distributed.on_main(lambda: runs.check_space(out_dir, need))
    seconds, samples = trainer.seconds, trainer.samples_seen  # before this call (resumed)
    trainer.run()
    trainer.checkpoint()
    main = distributed.is_main()
    metrics = runs.read_metrics(out_dir) if out_dir is not None and main else trainer.records
    run = Run(out_dir, trainer.model, cfg, metrics)
    t = time.perf_counter()
    if out_dir is not None and draw and main:
        draw_run_figures(run, ds)
    run.timing = {
        "samples": trainer.samples_seen - samples,
        "training_s": trainer.seconds - seconds,
        "evaluation_s": trainer.spent["evaluation"],
        "checkpoint_s": trainer.spent["checkpoint"],
        "figures_s": time.perf_counter() - t,
        "time_limit_reached": trainer.out_of_time,
    }
    trainer._notify("on_run_end")  # the run's files are final (aevb.callbacks)
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
    """Write figures/curves.png, samples.png, reconstructions.png, latent_usage.png (runs with an
    encoder-based bound) and manifold.png (2-D z).

    They are drawn aside and written into the run as one change recorded in its manifest.
    """
    assert run.path is not None
    with tempfile.TemporaryDirectory(prefix="aevb-figures-") as tmp:
        drawn = _draw_figures(run, ds, Path(tmp))
        files = {f"{runs.FIGURES}/{p.name}": p.read_bytes() for p in drawn}
    runs.write_files(run.path, files)
    return [run.path / name for name in files]


def _latent_usage_figure(metrics: list[dict], label: str, fig_dir: Path) -> list[Path]:
    """figures/latent_usage.png from the last evaluation's per-dimension KL and activity (test
    split, else validation, else train); nothing for runs that logged none (no encoder-based
    bound)."""
    last = metrics[-1] if metrics else {}
    split = runs.reported_split(last, "kl_per_dim")
    if split is None or f"{split}_activity" not in last:
        return []
    path = fig_dir / "latent_usage.png"
    n, j = last[f"{split}_active_units"], len(last[f"{split}_kl_per_dim"])
    title = (
        f"{label}: {n} of {j} dimensions active ({split} split, "
        f"{last.get('samples_seen', 0):,} samples)"
    )
    figures.plot_latent_usage(
        path, last[f"{split}_kl_per_dim"], last[f"{split}_activity"], ACTIVE_THRESHOLD, title
    )
    return [path]


def _draw_figures(run: Run, ds: Dataset | None, fig_dir: Path) -> list[Path]:
    model = run.model
    shape = model.config.image_shape
    written = []
    label = f"{run.config['data']['spec']}, N_z={model.config.latent_dim}"
    title = f"AEVB on {label}{kl_mark(run.config['train'])}"
    metric = "bound"
    if run.config["train"]["algorithm"] == "autoencoder":  # no bound: its reconstruction
        title, metric = f"Auto-encoder on {label}", "reconstruction"
    figures.plot_curves(
        [(label, run.metrics)], fig_dir / "curves.png", title=title, metric=metric, terms=True
    )
    written.append(fig_dir / "curves.png")
    written += _latent_usage_figure(run.metrics, label, fig_dir)
    g = torch.Generator(device=model.device).manual_seed(0)
    figures.save_grid(
        fig_dir / "samples.png", model.sample(100, g), shape, 10, "samples from p(x|z), z ~ p(z)"
    )
    written.append(fig_dir / "samples.png")
    if ds is not None and run.config["train"]["algorithm"] != "mcem":  # MCEM trains no encoder
        x = torch.from_numpy(first_rows(ds.test if ds.test is not None else ds.train, 50))
        x = x.to(model.device)
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
        assert run.path is not None  # the caller checked
        with contextlib.suppress(ConfigError):  # a prior without an inverse CDF has no grid
            manifold(run.path, 20, out=fig_dir / "manifold.png", model=model)
            written.append(fig_dir / "manifold.png")
    return written
