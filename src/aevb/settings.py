"""The settings of a training run, declared once, grouped by concern.

Each group is a dataclass of :func:`aevb.options.option` fields (type, default, help). From them:

- ``aevb train``'s flags (:func:`add_train_arguments`), choices and help included;
- the checks of ``aevb.train(**options)`` keywords and ``--config`` files (:func:`settings_from`);
- :class:`TrainConfig`, what the Trainer and the algorithms read, and the ``train`` section of a
  run's config.json: it *is* the objective, optimizer, evaluation, checkpoint and algorithm
  groups (it inherits their fields), plus the few values the run derives (the chosen step size).

The model group is :class:`aevb.model.ModelOptions` (the math layer owns what a model is); each
algorithm's own options are its ``Options`` dataclass (:mod:`aevb.algorithms`). Adding an option
is one field in one of these groups plus the code that uses it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .algorithms import ALGORITHMS, Algorithm
from .data import BINARIZE_MODES
from .errors import ConfigError
from .model import ModelOptions
from .options import (
    above,
    add_arguments,
    at_least,
    between,
    bounded_int,
    check_value,
    declared,
    hints,
    option,
    positive,
    positive_int,
    unknown_key,
    validate,
)

LR_SCHEDULES = ("constant", "cosine", "linear", "plateau")
LR_CANDIDATES = {"adagrad": (0.01, 0.02, 0.1), "adam": (3e-4, 1e-3, 3e-3)}
"""`--lr auto` tries these; the Adagrad set is the paper's (section 6)."""
ENGINES = ("auto", "fast", "autograd")
KL_WEIGHTED = ("A", "B", "iwae")  # estimators whose KL term --kl-beta / --kl-warmup weight

if TYPE_CHECKING:  # statically str; at run time the Literal of the names, which aevb.options checks
    AlgorithmName = str
    Binarize = str
    Optimizer = str
    Schedule = str
else:
    AlgorithmName = Literal[tuple(ALGORITHMS)]
    Binarize = Literal[BINARIZE_MODES]
    Optimizer = Literal[tuple(LR_CANDIDATES)]
    Schedule = Literal[LR_SCHEDULES]


def _sample_counts(text: str) -> list[int]:
    """'3e6,1e7' -> [3000000, 10000000], sorted, each checked as a count."""
    return sorted({positive_int(c.strip()) for c in text.split(",") if c.strip()})


def _lr(text: str) -> float | str:
    """A step size from the command line: a positive number, or 'auto'."""
    import argparse

    if text == "auto":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive step size, got {text!r}")
    return v


def _trials() -> str:
    return "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in LR_CANDIDATES.items())


def _image_shape_check(v: Any) -> str | None:
    """H W (grey) or H W C with C = 1 or 3 (colour rows, channel-last), positive sizes."""
    if min(v) >= 1 and tuple(v[2:]) in ((), (1,), (3,)):
        return None
    return "H W, or H W C with C 1 (grey) or 3 (RGB)"


class _Group:
    """A settings group: its fields are checked when it is made."""

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class DataOptions(_Group):
    """Where the data comes from and how it is split (the run records them)."""

    data: str = option(
        "digits",
        "dataset name (digits, mnist, binarized-mnist, frey), a .npy/.npz/.csv file (rows are "
        "datapoints) or a folder of images (DIR/*.png or DIR/<class>/*.png) (default digits)",
    )
    data_dir: str | Path | None = option(
        None,
        "folder holding mnist/, binarized_mnist/, frey/ (else $AEVB_DATA_DIR, else "
        "~/.cache/aevb; missing files are downloaded there)",
    )
    image_shape: tuple[int, int] | tuple[int, int, int] | None = option(
        None,
        "height and width of the images a file's rows hold; H W 3 for colour rows (channel-last)",
        metavar=("H W", "C"),
        check=_image_shape_check,
    )
    image_size: tuple[int, int] | None = option(
        None,
        "resize every image of a --data folder to H x W pixels (else they must share one size)",
        metavar=("H", "W"),
        check=lambda v: None if min(v) >= 1 else "two positive sizes",
    )
    validation: bool = option(
        False,
        "hold out a validation split: MNIST's last 10 000 training images, 10 %% of a file",
    )
    train_size: int | None = option(None, "use the first N training points", check=positive)
    columns: list[str | int] | None = option(
        None, "CSV columns to use, comma-separated header names or 0-based indices"
    )
    standardize: bool = option(
        False,
        "z-score each column (training-set statistics, kept in the run); real-valued data",
    )
    memory_map: bool = option(
        False,
        "read a .npy file's rows from disk as each minibatch needs them instead of loading it: "
        "data larger than memory (docs/DATA.md)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_shape is not None:
            shape = tuple(self.image_shape)
            self.image_shape = shape[:2] if shape[2:] == (1,) else shape  # type: ignore[assignment]
        if self.image_size is not None:
            self.image_size = tuple(self.image_size)  # type: ignore[assignment]


@dataclass
class ObjectiveOptions(_Group):
    """What is maximised: the algorithm, its estimator, the targets and the weighting."""

    algorithm: AlgorithmName = option(
        "aevb", "AEVB (Algorithm 1), or the paper's comparisons (docs/ALGORITHMS.md)"
    )
    estimator: Literal["A", "B", "iwae", "score-function"] | None = option(
        None,
        "SGVB estimator A or B, iwae (importance-weighted bound, K = --samples), or "
        "score-function (REINFORCE gradient of the same bound: the paper's high-variance "
        "baseline); default: B where KL(posterior || prior) is analytic, else A",
    )
    score_baseline: bool = option(
        False,
        "score-function estimator: subtract a running mean of the bound (decay 0.9) from f",
    )
    samples: int = option(1, "L (K for iwae), samples per datapoint", check=positive)
    iwae_gradient: Literal["standard", "dreg"] = option(
        "standard",
        "--estimator iwae: the encoder's gradient, standard (Burda et al.) or dreg (doubly "
        "reparameterized, Tucker et al. 2018: same expectation, its signal-to-noise ratio "
        "does not fall as K grows)",
    )
    binarize: Binarize = option(
        "grey",
        "Bernoulli targets: grey (intensities), dynamic (a fresh draw per epoch), static "
        "(one draw), none (data must be 0/1)",
    )
    weight_prior: bool = option(
        True, "drop the N(0, I) parameter prior (plain ML instead of approximate MAP)"
    )
    weight_decay: float = option(
        0.0,
        "an L2 penalty (lambda/2) |theta|^2 per datapoint on every parameter, on top of the "
        "weight prior's 1/N: a narrower Gaussian prior, against overfitting (default 0)",
        check=at_least(0),
    )
    kl_beta: float = option(
        1.0,
        "weight of the KL term in the training objective (iwae: of log p(z) - log q(z|x) in "
        "the log-weights; default 1: the bound itself)",
        check=at_least(0),
    )
    kl_warmup: int | None = option(
        None,
        "raise the KL weight linearly from 0 over this many training samples",
        metavar="SAMPLES",
        check=positive,
    )


@dataclass
class OptimOptions(_Group):
    """The optimizer, its step size and schedule, the run's length, initialisation and seed."""

    optimizer: Optimizer = option("adagrad", "Adagrad (the paper's) or Adam")
    lr: float | Literal["auto"] = option(
        "auto",
        f"step size, or auto: the paper's short trial of three ({_trials()}); default auto",
        parse=_lr,
        check=lambda v: None if v == "auto" or v > 0 else "positive",
    )
    batch_size: int = option(
        100,
        "M, datapoints per minibatch; per process under torchrun (docs/DISTRIBUTED.md)",
        check=positive,
    )
    budget: int | None = option(
        None, "training samples evaluated (default 1e6)", metavar="SAMPLES", check=positive
    )
    epochs: int | None = option(
        None, "passes over the training set (instead of --budget)", check=positive
    )
    lr_schedule: Schedule = option(
        "constant",
        "decay the step size from --lr to --lr-min over the budget (cosine, linear), or cut it "
        "by --lr-factor when the validation bound stops improving (plateau; needs "
        "--validation); default: constant, the paper's",
    )
    lr_min: float = option(
        0.0,
        "the step size a cosine or linear schedule ends at, and a plateau schedule's floor "
        "(default 0)",
        check=at_least(0),
    )
    lr_factor: float = option(
        0.5,
        "plateau schedule: multiply the step size by this when the validation bound has not "
        "improved for --lr-patience evaluations",
        check=lambda v: None if 0 < v < 1 else "between 0 and 1",
    )
    lr_patience: int = option(
        5,
        "plateau schedule: evaluations without a better validation bound (after the first "
        "epoch) before the step size is cut",
        check=positive,
    )
    init: Literal["paper", "torch"] = option(
        "paper", "initial parameters: N(0, 0.01^2) (the paper's) or PyTorch's own"
    )
    decoder_bias_init: bool = option(
        False, "start the decoder's bias at the logit of the training-set mean"
    )
    seed: int = option(
        0,
        "seed of every random stream (initialisation, minibatch order, noise); CPU runs repeat "
        "bit for bit under it (default 0)",
        parse=bounded_int(0, 2**63 - 1, "a seed from 0 to 2^63-1"),
        check=between(0, 2**63 - 1),
    )
    precision: Literal["float32", "bf16"] = option(
        "float32",
        "bf16: the step's matrix products in bfloat16 with float32 master weights (aevb and "
        "autoencoder; CUDA, or a CPU with AMX/AVX-512 BF16/ARM BF16, else an error)",
    )


@dataclass
class EvalOptions(_Group):
    """When and how the bound (and log p(x)) is evaluated during training."""

    eval_per_decade: int = option(
        4,
        "evaluations per decade of training samples, log-spaced as in Figure 2",
        check=between(1, 1000),
    )
    eval_size: int = option(10_000, "points per split at each evaluation", check=positive)
    eval_test: bool = option(
        True,
        "leave the test split out of the evaluations during training (train and validation "
        "only): the test set is then looked at once, by aevb evaluate, for the model kept",
    )
    eval_marginal: Literal["is", "hmc"] | None = option(
        None,
        "also log log p(x) at each evaluation: importance sampling or Appendix D (HMC)",
    )
    eval_marginal_points: int = option(
        1000, "points per split for --eval-marginal (the paper's 1 000)", check=positive
    )
    eval_hmc_samples: int = option(
        50, "posterior draws per point for --eval-marginal hmc (the paper's 50)", check=positive
    )
    eval_hmc_warmup: int = option(
        200, "step-size adaptation transitions per point for --eval-marginal hmc", check=positive
    )


@dataclass
class CheckpointOptions(_Group):
    """Checkpoints, model selection on the validation split, and logging."""

    checkpoint_seconds: float = option(
        300.0, "write a checkpoint at least this often (seconds)", check=above(0)
    )
    checkpoint_samples: int | None = option(
        None, "also write a checkpoint after every N training samples", check=positive
    )
    snapshots: list[int] | None = option(
        None,
        "also keep the model as it was after each of these training-sample counts, e.g. "
        "3e6,1e7 (RUNDIR/snapshots/model-N.safetensors; load one with which=N)",
        parse=_sample_counts,
        metavar="N,N,...",
        check=lambda v: None if v and all(n >= 1 for n in v) else "positive sample counts",
    )
    keep: Literal["last", "best"] = option(
        "last", "best: also keep the model with the best validation bound (needs --validation)"
    )
    patience: int | None = option(
        None,
        "stop after this many evaluations without a better validation bound",
        check=positive,
    )
    tensorboard: bool = option(False, "also write TensorBoard files to RUNDIR/tensorboard")
    mlflow: str | None = option(
        None,
        "also log the run to the MLflow tracking store at URI: parameters, every evaluation's "
        "metrics, figures and model files; alone: file:./mlruns, a local file store "
        "(pip install 'aevb[mlflow]')",
        const="file:./mlruns",
        metavar="URI",
        check=lambda v: None if v.strip() else "a tracking URI",
    )


@dataclass
class RunOptions(_Group):
    """This invocation: where it runs (not recorded with the run)."""

    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    time_limit: float | None = option(
        None,
        "stop this call's training after this many seconds of wall time (steps, evaluations "
        "and checkpoints; data loading not counted), with an evaluation and a checkpoint "
        "where it stops; --resume RUNDIR continues it",
        check=above(0),
        metavar="SECONDS",
    )


def _algorithm_fields() -> list[tuple[str, Any, Any]]:
    """Every algorithm's own options as flat fields (``mcem_leapfrog``), for the settings."""
    out = []
    for alg in ALGORITHMS.values():
        if alg.Options is None:
            continue
        for f in dataclasses.fields(alg.Options):
            meta = {**f.metadata, "help": f.metadata["help"]}
            out.append(
                (
                    alg.Options.prefix + f.name,
                    hints(alg.Options)[f.name],
                    field(default=f.default, metadata=meta),
                )
            )
    return out


AlgorithmOptions = dataclasses.make_dataclass(
    "AlgorithmOptions", _algorithm_fields(), bases=(_Group,)
)
AlgorithmOptions.__module__ = __name__
AlgorithmOptions.__doc__ = "Each algorithm's own options, spelled with its prefix (mcem_...)."


@dataclass
class TrainConfig(ObjectiveOptions, OptimOptions, EvalOptions, CheckpointOptions, AlgorithmOptions):  # type: ignore[valid-type, misc]
    """What the Trainer and the algorithms read (the ``train`` section of config.json): the
    objective, optimizer, evaluation, checkpoint and algorithm options, and what a run derives."""

    init_std: float = 0.01  # the paper's N(0, 0.01^2) initialisation
    lr_trial_samples: int | None = None  # length of each `--lr auto` trial (default: by budget)
    lr_search: dict | None = None  # the `--lr auto` trial's scores and choice
    engine: str = "auto"  # the step: "fast" (aevb.fast), "autograd", or "auto" (fast if covered)
    eval_importance_samples: int = 5000  # K of the importance-sampling evaluations

    def __post_init__(self) -> None:
        validate(self)
        if self.estimator is None:
            self.estimator = "B"
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose one of {ENGINES}")
        if self.algorithm == "autoencoder":
            self._check_autoencoder()
        if self.estimator in ("iwae", "score-function") and self.algorithm != "aevb":
            raise ConfigError(
                f"estimator {self.estimator} trains AEVB only, not {self.algorithm}; use A or B"
            )
        if self.iwae_gradient != "standard" and self.estimator != "iwae":
            raise ConfigError("--iwae-gradient is for --estimator iwae; drop it")
        if self.score_baseline and self.estimator != "score-function":
            raise ConfigError("--score-baseline is for --estimator score-function; drop it")
        if self.algorithm == "mcem" and self.eval_marginal is None:
            self.eval_marginal = "hmc"  # MCEM has no bound: report log p(x) instead
        if self.algorithm == "mcem" and self.eval_marginal == "is":
            raise ConfigError("MCEM trains no encoder to propose from; use eval_marginal='hmc'")
        if self.budget is not None and self.epochs is not None:
            raise ConfigError("give either --budget (training samples) or --epochs, not both")
        if self.kl_weighted and (self.algorithm != "aevb" or self.estimator not in KL_WEIGHTED):
            raise ConfigError(
                "--kl-beta and --kl-warmup weight the KL term of AEVB's estimators A, B and "
                "iwae; "
                f"drop them for algorithm {self.algorithm!r}, estimator {self.estimator!r}"
            )
        if self.lr_min and self.lr_schedule == "constant":
            raise ConfigError(
                "--lr-min is where a decaying step size ends; add --lr-schedule cosine"
            )
        plateau = ("lr_factor", "lr_patience")  # changed from their declared defaults
        fields = {f.name: f for f in dataclasses.fields(self)}
        changed = [k for k in plateau if getattr(self, k) != fields[k].default]
        if changed and self.lr_schedule != "plateau":
            flags = " and ".join("--" + k.replace("_", "-") for k in changed)
            raise ConfigError(f"{flags} set the plateau schedule; add --lr-schedule plateau")
        if self.lr_min and self.lr != "auto" and self.lr_min >= self.lr:
            raise ConfigError(f"--lr-min ({self.lr_min:g}) must be below --lr ({self.lr:g})")
        for alg in ALGORITHMS.values():
            self.options_for(alg)  # each algorithm checks its own options

    def _check_autoencoder(self) -> None:
        """The options a deterministic auto-encoder has no use for, refused in one line each."""
        no = "the auto-encoder trains on log p(x|z=mu(x)) alone (no bound, no noise, no KL)"
        if self.estimator == "iwae":
            raise ConfigError(f"{no}; drop --estimator")
        if self.samples != 1:
            raise ConfigError(f"{no}; drop --samples")
        if self.kl_weighted:
            raise ConfigError(f"{no}; drop --kl-beta and --kl-warmup")
        if self.keep != "last" or self.patience is not None:
            raise ConfigError(
                f"{no}: it has no validation bound to select on; drop --keep best and --patience"
            )
        if self.eval_marginal == "is":
            raise ConfigError(
                f"{no}: its encoder has no trained variance to propose from; use "
                "--eval-marginal hmc"
            )

    @property
    def lr_by_samples(self) -> bool:
        """Whether the step size follows the samples seen (cosine, linear: set every step)."""
        return self.lr_schedule in ("cosine", "linear")

    @property
    def kl_weighted(self) -> bool:
        """Whether the training objective weights the KL term (KL warm-up or beta != 1)."""
        return self.kl_beta != 1.0 or self.kl_warmup is not None

    def kl_weight(self, samples_seen: int) -> float:
        """The KL weight after ``samples_seen`` training samples (beta, ramped by warm-up)."""
        w = float(self.kl_beta)
        if self.kl_warmup is not None:
            w *= min(1.0, samples_seen / self.kl_warmup)
        return w

    def lr_at(self, initial_lr: float, samples_seen: int, total: int) -> float:
        """The step size after ``samples_seen`` of ``total`` training samples (``lr_schedule``).

        cosine: lr_min + (lr - lr_min) (1 + cos(pi t)) / 2; linear: lr - (lr - lr_min) t, with
        t = samples_seen / total; a parameter group whose own step size is below lr_min keeps it.
        constant and plateau: lr (the plateau schedule cuts it at evaluations, not by samples).
        """
        if self.lr_schedule in ("constant", "plateau"):  # plateau: see aevb.callbacks
            return initial_lr
        t = min(1.0, max(0.0, samples_seen / max(1, total)))
        shape = 0.5 * (1.0 + math.cos(math.pi * t)) if self.lr_schedule == "cosine" else 1.0 - t
        low = min(float(self.lr_min), initial_lr)
        return low + (initial_lr - low) * shape

    def with_constant_lr(self, **changes: Any) -> TrainConfig:
        """This config with a constant step size (the schedule's options at their defaults),
        and ``changes``: the ``--lr auto`` trial's config."""
        schedule = ("lr_min", "lr_factor", "lr_patience")
        fields = {f.name: f.default for f in dataclasses.fields(self) if f.name in schedule}
        return dataclasses.replace(self, lr_schedule="constant", **{**fields, **changes})

    def options_for(self, algorithm: type[Algorithm]) -> Any:
        """An algorithm's own options (its ``Options`` dataclass), from the flat fields."""
        cls = algorithm.Options
        if cls is None:
            return None
        return cls(**{f.name: getattr(self, cls.prefix + f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LATENT_USAGE_HINT = "try a KL warm-up (--kl-warmup SAMPLES) or a smaller --latent-dim"
"""What to try when few latent dimensions are active (``aevb train``'s note at the end)."""


def latent_usage_hint(train: dict[str, Any] | None = None) -> str:
    """:data:`LATENT_USAGE_HINT` for a run's ``train`` configuration: a run that already had a
    KL warm-up is told to lengthen it (naming its length) rather than to add one."""
    warmup = (train or {}).get("kl_warmup")
    if not warmup:
        return LATENT_USAGE_HINT
    return (
        f"try a longer KL warm-up (this run's --kl-warmup: {warmup:,} samples) "
        "or a smaller --latent-dim"
    )


# --------------------------------------------------------------------------- all the settings


@dataclass
class TrainSettings:
    """Every setting of ``aevb train``, by group; ``aevb.train(settings=...)`` takes one."""

    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    objective: ObjectiveOptions = field(default_factory=ObjectiveOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    checkpoints: CheckpointOptions = field(default_factory=CheckpointOptions)
    algorithms: AlgorithmOptions = field(default_factory=AlgorithmOptions)  # type: ignore[valid-type]
    run: RunOptions = field(default_factory=RunOptions)

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name (``latent_dim``, ``mcem_leapfrog``, ...)."""
        return {
            f.name: getattr(group, f.name)
            for group in (getattr(self, g) for g in GROUPS)
            for f in declared(type(group))
        }

    def train_config(self, **derived: Any) -> TrainConfig:
        """The engine's configuration: the training groups' fields, and derived values."""
        names = {f.name for f in declared(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.flat().items() if k in names} | derived)


GROUPS: dict[str, type] = {name: type(group) for name, group in vars(TrainSettings()).items()}
"""The settings groups by their name in :class:`TrainSettings` (and as ``aevb.train`` keywords)."""

OWNER: dict[str, str] = {}
"""The group of every flat option name."""
for _group, _cls in GROUPS.items():
    for _f in declared(_cls):
        if _f.name in OWNER:  # pragma: no cover - a declaration error, caught by the tests
            raise TypeError(f"option {_f.name!r} declared in {OWNER[_f.name]} and {_group}")
        OWNER[_f.name] = _group


def settings_from(
    options: dict[str, Any], base: TrainSettings | None = None, where: str = "aevb.train"
) -> TrainSettings:
    """Settings from flat options and group objects (``model=ModelOptions(...)``), checked.

    Unknown keys name the closest valid one; values of the wrong type or outside their choices
    are one-line :class:`~aevb.errors.ConfigError` s. Flat options override a group given in the
    same call. ``algorithm_options={...}``, the spelling of earlier releases, is still taken.
    Nothing is created or loaded here.
    """
    options = dict(options)
    options.update(options.pop("algorithm_options", None) or {})  # the old spelling
    settings = dataclasses.replace(base) if base is not None else TrainSettings()
    changes: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        if key in GROUPS and isinstance(value, GROUPS[key]):
            setattr(settings, key, value)
        elif key in GROUPS and key not in OWNER:  # ("data" is a group and an option)
            raise ConfigError(f"{where}: {key} must be a {GROUPS[key].__name__}")
        elif key in OWNER:
            changes.setdefault(OWNER[key], {})[key] = value
        else:
            raise unknown_key(key, [*OWNER, *GROUPS], where)
    for group, values in changes.items():
        cls = GROUPS[group]
        for key, value in values.items():
            check_value(cls, key, value, where)
        setattr(settings, group, dataclasses.replace(getattr(settings, group), **values))
    return settings


GROUP_TITLES = {
    "data": "data",
    "model": "model (docs/FAMILIES.md for the latent families)",
    "objective": "objective",
    "optim": "optimizer, step size and run length",
    "evaluation": "evaluation during training",
    "checkpoints": "checkpoints, model selection and logging",
    "run": "where it runs",
}


def add_train_arguments(parser: Any) -> None:
    """The flags of ``aevb train``, one per declared option, in titled groups."""
    for name, cls in GROUPS.items():
        if name == "algorithms":
            for alg in ALGORITHMS.values():
                if alg.Options is not None:
                    group = parser.add_argument_group(f"{alg.name} options")
                    add_arguments(group, alg.Options, prefix=alg.Options.prefix)
            continue
        add_arguments(parser.add_argument_group(GROUP_TITLES[name]), cls)
