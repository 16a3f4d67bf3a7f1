"""The one training engine (Algorithm 1 and the protocol of PAPER.md section 6).

An *algorithm* is only the step it takes on a minibatch (:class:`Algorithm`); the :class:`Trainer`
owns everything else: minibatch order, binarization, the evaluation schedule, metrics,
checkpoints and resume. AEVB is :class:`AEVB`; later baselines plug into the same loop.

Objective and weight prior. For N training points and a minibatch of M, the paper maximises
(N/M) sum_i L(x_i) + log p(theta) with p(theta) = N(0, I). We divide the whole objective by N so the
reported number is a per-datapoint bound in nats:

    J(theta) = (1/M) sum_i L(x_i) - ||theta||^2 / (2 N)

so the N(0, I) prior is a weight decay of exactly 1/N on the per-datapoint loss (applied through the
optimizer's ``weight_decay``). Dividing by N changes no optimum, and Adagrad is invariant to the
scale of the gradient (up to its epsilon).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import distributed, runs
from .data.base import binarize_tensor
from .errors import ConfigError, NumericalError
from .fast import FastStep, tune_allocator, unsupported_optimizer, unsupported_reason
from .model import VAE
from .selection import Selection
from .tracking import RunTracker

OPTIMIZERS = ("adagrad", "adam")
ENGINES = ("auto", "fast", "autograd")
LR_SCHEDULES = ("constant", "cosine", "linear")
LR_CANDIDATES = {"adagrad": (0.01, 0.02, 0.1), "adam": (3e-4, 1e-3, 3e-3)}
"""`--lr auto` tries these; the Adagrad set is the paper's (section 6)."""


@dataclass
class TrainConfig:
    """Training settings (stored in config.json)."""

    algorithm: str = "aevb"
    estimator: str = "B"
    samples: int = 1
    batch_size: int = 100
    optimizer: str = "adagrad"
    lr: float | str = "auto"
    weight_prior: bool = True
    init: str = "paper"
    init_std: float = 0.01
    budget: int | None = None
    epochs: int | None = None
    seed: int = 0
    binarize: str = "grey"
    eval_per_decade: int = 4
    eval_size: int = 10_000
    checkpoint_seconds: float = 300.0  # a checkpoint at least this often (wall-clock seconds)
    checkpoint_samples: int | None = None  # and after every this many training samples
    lr_trial_samples: int | None = None
    lr_search: dict | None = None
    engine: str = "auto"  # AEVB's step: "fast" (aevb.fast), "autograd", or "auto" (fast if covered)
    full_vb_eval: str = "mean"  # full VB: bound at the posterior mean of theta, or "sample"
    full_vb_eval_samples: int = 10  # full VB, "sample": draws of theta averaged
    mcem_leapfrog: int = 10  # Monte Carlo EM (Appendix E): leapfrog steps per HMC transition
    mcem_updates: int = 5  # parameter updates per sample
    mcem_target_accept: float = 0.9
    mcem_step_size: float = 0.1  # initial leapfrog step size of every chain
    mcem_adapt_rate: float = 1.0  # Robbins-Monro rate of the log step size
    eval_marginal: str | None = None  # also log log p(x) at evaluations: "is" or "hmc" (Appendix D)
    eval_marginal_points: int = 1000  # first points of each split used for it (the paper's 1 000)
    eval_importance_samples: int = 5000
    # ---- day-to-day options (issue 11); the defaults leave training exactly as the paper's
    kl_beta: float = 1.0  # weight of the KL term in the training objective (1: the bound itself)
    kl_warmup: int | None = None  # that weight rises linearly from 0 over this many samples
    lr_schedule: str = "constant"  # "cosine" or "linear": decay the step size over the budget
    lr_min: float = 0.0  # the step size the decay ends at
    keep: str = "last"  # "best": also keep the model with the best validation bound
    patience: int | None = None  # stop after this many evaluations without a better valid bound
    decoder_bias_init: bool = False  # decoder output bias = logit of the training-set mean
    precision: str = "float32"  # "bf16": bf16 autocast of the training step (CUDA only)
    tensorboard: bool = False  # also write TensorBoard event files (runs' tensorboard/)

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
        """
        if self.lr_schedule == "constant":
            return initial_lr
        t = min(1.0, max(0.0, samples_seen / max(1, total)))
        shape = 0.5 * (1.0 + math.cos(math.pi * t)) if self.lr_schedule == "cosine" else 1.0 - t
        low = min(float(self.lr_min), initial_lr)
        return low + (initial_lr - low) * shape

    def __post_init__(self) -> None:
        if self.estimator not in ("A", "B", "iwae"):
            raise ConfigError(f"unknown estimator {self.estimator!r}; choose A, B or iwae")
        if self.estimator == "iwae" and self.algorithm != "aevb":
            raise ConfigError(f"estimator iwae trains AEVB only, not {self.algorithm}; use A or B")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.full_vb_eval not in ("mean", "sample"):
            raise ConfigError(f"unknown full_vb_eval {self.full_vb_eval!r}; choose mean or sample")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose one of {ENGINES}")
        if self.eval_marginal not in (None, "is", "hmc"):
            raise ConfigError(f"unknown eval_marginal {self.eval_marginal!r}; choose is or hmc")
        if self.algorithm == "mcem" and self.eval_marginal is None:
            self.eval_marginal = "hmc"  # MCEM has no bound: report log p(x) instead
        if self.algorithm == "mcem" and self.eval_marginal == "is":
            raise ConfigError("MCEM trains no encoder to propose from; use eval_marginal='hmc'")
        if self.init not in ("paper", "torch"):
            raise ConfigError(f"unknown init {self.init!r}; choose paper or torch")
        if isinstance(self.lr, str) and self.lr != "auto":
            try:
                self.lr = float(self.lr)
            except ValueError:
                raise ConfigError(f"--lr must be a number or 'auto', got {self.lr!r}") from None
        if not isinstance(self.lr, str) and not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        for name in ("samples", "batch_size", "eval_per_decade", "eval_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.budget is not None and self.epochs is not None:
            raise ConfigError("give either --budget (training samples) or --epochs, not both")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"--budget must be positive, got {self.budget}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        if not float(self.checkpoint_seconds) > 0:  # also refuses NaN; inf means never
            raise ConfigError(
                f"--checkpoint-seconds must be positive, got {self.checkpoint_seconds}"
            )
        if int(self.eval_per_decade) > 1000:  # the schedule's loop steps 10^(1/k) at a time
            raise ConfigError(f"--eval-per-decade must be at most 1000, got {self.eval_per_decade}")
        if self.checkpoint_samples is not None and int(self.checkpoint_samples) < 1:
            raise ConfigError(
                f"--checkpoint-samples must be a positive integer, got {self.checkpoint_samples}"
            )
        self._check_daytoday()

    def _check_daytoday(self) -> None:
        if not (math.isfinite(float(self.kl_beta)) and self.kl_beta >= 0):
            raise ConfigError(f"--kl-beta must be a number >= 0, got {self.kl_beta}")
        if self.kl_warmup is not None and int(self.kl_warmup) < 1:
            raise ConfigError(f"--kl-warmup must be a positive sample count, got {self.kl_warmup}")
        if self.kl_weighted and (self.algorithm != "aevb" or self.estimator == "iwae"):
            raise ConfigError(
                "--kl-beta and --kl-warmup weight the KL term of AEVB's estimators A and B; "
                f"drop them for algorithm {self.algorithm!r}, estimator {self.estimator!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown --lr-schedule {self.lr_schedule!r}; choose one of {LR_SCHEDULES}"
            )
        if not (math.isfinite(float(self.lr_min)) and self.lr_min >= 0):
            raise ConfigError(f"--lr-min must be a number >= 0, got {self.lr_min}")
        if self.lr_min and self.lr_schedule == "constant":
            raise ConfigError(
                "--lr-min is where a decaying step size ends; add --lr-schedule cosine"
            )
        if self.lr_min and not isinstance(self.lr, str) and self.lr_min >= self.lr:
            raise ConfigError(f"--lr-min ({self.lr_min:g}) must be below --lr ({self.lr:g})")
        if self.keep not in ("last", "best"):
            raise ConfigError(f"unknown --keep {self.keep!r}; choose last or best")
        if self.patience is not None and int(self.patience) < 1:
            raise ConfigError(
                f"--patience must be a positive number of evaluations, got {self.patience}"
            )
        if self.precision not in ("float32", "bf16"):
            raise ConfigError(f"unknown --precision {self.precision!r}; choose float32 or bf16")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- optimizers


def make_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adagrad (the paper's) or Adam; ``weight_decay`` = 1/N realises the N(0, I) weight prior."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adam":
        # Adam's weight_decay is L2 on the gradient (not AdamW), i.e. the same Gaussian prior.
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def _owned(t: Tensor) -> Tensor:
    """t, or a copy of it when it is a view into a larger buffer.

    safetensors refuses tensors that share memory, and the fast engine keeps the parameters and
    the optimizer state as views into flat buffers.
    """
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.detach().clone()
    return t


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Flatten an optimizer's state into safetensors-ready tensors and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, float] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = _owned(v)
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict):
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------- algorithms


class Algorithm:
    """One training step on a minibatch; subclasses differ only in the step they take."""

    name = ""

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        self.model = model
        self.config = config
        self.n_train = n_train
        wd = 1.0 / n_train if config.weight_prior else 0.0
        self.optimizer = make_optimizer(model.parameters(), config.optimizer, lr, wd)

    def step(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Update the parameters on minibatch x; return the minibatch's mean bound (no sync)."""
        raise NotImplementedError

    #: Whether the algorithm has a lower bound to report (Monte Carlo EM has none).
    has_bound = True
    #: Whether ``step`` needs the minibatch's row indices in the training set (``index=``), e.g.
    #: for persistent per-datapoint state such as Monte Carlo EM's chains.
    needs_index = False

    def extra_metrics(self) -> dict:
        """Algorithm-specific numbers added to each metrics record (none for AEVB)."""
        return {}

    def state_tensors(self) -> dict[str, Tensor]:
        """Algorithm state beyond model and optimizer, saved with every checkpoint."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_tensors` saved."""

    def finite_probe(self) -> Tensor:
        """A 0-d tensor, non-finite when a parameter is (their sum; computed without a sync).

        The Trainer records it after every step: a non-finite or overflowing gradient makes the
        updated parameters non-finite (Adagrad and Adam turn an inf into NaN), so this names the
        step of a gradient fault as the bound names the step of a loss fault.
        """
        params = getattr(self, "_probe_params", None)
        if params is None:
            params = self._probe_params = [p for p in self.model.parameters()]
        return torch.stack([p.detach().sum() for p in params]).sum()

    @torch.no_grad()
    def evaluate(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Per-datapoint lower bound reported for this algorithm's model.

        IWAE runs report the ELBO here (estimator B where the KL is analytic, else A, with L = K);
        the IWAE bound is logged beside it as ``*_iwae_bound``.
        """
        c = self.config
        est = c.estimator
        if est == "iwae":
            est = "B" if self.model.config.supports_estimator("B") else "A"
        return self.model.elbo(x, est, c.samples, generator)


class AEVB(Algorithm):
    """Algorithm 1: a gradient step on the SGVB estimate of the minibatch bound.

    The step runs on the fast engine (:mod:`aevb.fast`: hand-written forward and backward, flat
    buffers, one fused optimizer kernel) when it covers the model, else on autograd; both compute
    the same estimator from the same noise. ``engine`` says which; ``engine_note`` why not fast.
    """

    name = "aevb"

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        super().__init__(model, config, n_train, lr)
        self.fast: FastStep | None = None
        self.engine_note: str | None = None
        choice = getattr(config, "engine", "auto")
        if choice != "autograd":
            reason = unsupported_reason(model, config.estimator) or unsupported_optimizer(
                self.optimizer
            )
            if reason is None and getattr(config, "precision", "float32") == "bf16":
                reason = "bf16 autocast runs on the autograd step"
            if reason is None:
                self.fast = FastStep(model, self.optimizer, config.estimator, config.samples)
            elif choice == "fast":
                raise ConfigError(f"engine 'fast' cannot train this model: {reason}; use auto")
            else:
                self.engine_note = f"autograd step ({reason})"
        self.engine = "fast" if self.fast is not None else "autograd"
        self.kl_samples = 0  # training samples seen, for the KL warm-up (saved in checkpoints)

    def finite_probe(self) -> Tensor:
        if self.fast is not None:
            return self.fast.flat.sum()  # every parameter is a view into this one buffer
        return super().finite_probe()

    def step(self, x: Tensor, generator: torch.Generator) -> Tensor:
        c = self.config
        if c.kl_weighted:
            return self._weighted_step(x, generator)
        if self.fast is not None:
            return self.fast.step(x, generator)
        with _autocast(c, x):
            bound = self.model.objective(x, c.estimator, c.samples, generator)
        bound = _wide(bound).mean()  # the bound is accumulated in float32 under bf16
        self.optimizer.zero_grad(set_to_none=True)
        (-bound).backward()
        self.optimizer.step()
        return bound.detach()

    def _weighted_step(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A step on E[log p(x|z)] - beta KL; the bound returned is still the beta = 1 bound."""
        c = self.config
        beta = c.kl_weight(self.kl_samples)
        self.kl_samples += len(x) * distributed.world_size()  # global samples
        if self.fast is not None:
            return self.fast.step(x, generator, kl_weight=beta)
        with _autocast(c, x):
            rec, kl = self.model.elbo_terms(x, c.estimator, c.samples, generator)
        rec, kl = _wide(rec), _wide(kl)
        self.optimizer.zero_grad(set_to_none=True)
        (beta * kl - rec).mean().backward()
        self.optimizer.step()
        return (rec - kl).mean().detach()

    def extra_metrics(self) -> dict:
        c = self.config
        return {"kl_weight": c.kl_weight(self.kl_samples)} if c.kl_weighted else {}

    def state_tensors(self) -> dict[str, Tensor]:
        if not self.config.kl_weighted:
            return {}
        return {"kl_samples": torch.tensor(self.kl_samples, dtype=torch.int64)}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if "kl_samples" in tensors:
            self.kl_samples = int(tensors["kl_samples"])


def _wide(t: Tensor) -> Tensor:
    """t in float32 where autocast left it in a 16-bit type; else t itself."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _autocast(config: TrainConfig, x: Tensor):
    """bf16 autocast of a training step (``precision="bf16"``, CUDA), else no context."""
    if getattr(config, "precision", "float32") == "bf16" and x.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


ALGORITHMS: dict[str, type[Algorithm]] = {"aevb": AEVB}


# --------------------------------------------------------------------------- schedule


def eval_schedule(total: int, batch: int, per_decade: int) -> list[int]:
    """Log-spaced sample counts (whole minibatches) at which train and test bounds are logged."""
    points = {0, total}
    k = 0
    while True:
        s = int(round(10 ** (k / per_decade)))
        if s > total:
            break
        if s >= batch:
            points.add(min(total, int(math.ceil(s / batch)) * batch))
        k += 1
    return sorted(points)


def _se(values: Tensor) -> float:
    """Standard error of the mean over datapoints."""
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _split_seed(seed: int, *parts: int) -> int:
    """A deterministic 63-bit seed for the (seed, part...) streams: epochs, evaluations, ..."""
    ss = np.random.SeedSequence([seed, *parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- numerical faults


class FiniteWatch:
    """Finds the first step with a non-finite bound or parameters, without a sync per step.

    Each step stores its minibatch bound and :meth:`Algorithm.finite_probe` (taken after the
    update) in one row of a small buffer on the training device; :meth:`check` reads the rows
    since the last check in one synchronisation. The Trainer checks at its periodic progress
    sync (every 20 steps) and before every evaluation and checkpoint, so a fault is reported
    with the exact step it happened at, and no checkpoint is written after it.
    """

    def __init__(self, size: int, device: torch.device, dtype: torch.dtype) -> None:
        self.buf = torch.zeros((size, 2), device=device, dtype=dtype)
        self.rows = self.buf.unbind(0)
        self.n = 0
        self.first_step = 0  # the step number of row 0

    def record(self, step: int, bound: Tensor, probe: Tensor) -> bool:
        """Store one step; True when the buffer is full (check it before the next step)."""
        if self.n == 0:
            self.first_step = step
        dt = self.buf.dtype
        torch.stack((bound.detach().to(dt), probe.detach().to(dt)), out=self.rows[self.n])
        self.n += 1
        return self.n == len(self.rows)

    def check(self) -> tuple[int, str, float] | None:
        """(step, "bound" or "parameters", bound) of the first non-finite row; None if none."""
        n, self.n = self.n, 0
        if n == 0:
            return None
        rows = self.buf[:n]
        if math.isfinite(float(rows.sum())):
            return None
        bad = ~torch.isfinite(rows)
        i = int(torch.nonzero(bad.any(1))[0, 0])
        what = "bound" if bool(bad[i, 0]) else "parameters"
        return self.first_step + i, what, float(rows[i, 0])


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Runs an algorithm over a dataset for a budget, logging, checkpointing and resuming."""

    def __init__(
        self,
        algorithm: Algorithm,
        train_x: Tensor,
        test_x: Tensor | None,
        config: TrainConfig,
        run_dir: str | Path | None = None,
        progress: bool = True,
        on_eval: Callable[[dict], None] | None = None,
        evaluate_points: bool = True,
        valid_x: Tensor | None = None,
    ) -> None:
        self.alg = algorithm
        self.model = algorithm.model
        self.config = config
        self.train_x = train_x
        self.test_x = test_x
        # data parallel (aevb.distributed): config.batch_size is the global minibatch, of which
        # each of the `world` ranks takes `local_batch` points; rank 0 alone writes and prints
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.run_dir = Path(run_dir) if run_dir is not None and self.rank == 0 else None
        self.progress = progress and self.rank == 0
        self.on_eval = on_eval
        n, m = len(train_x), config.batch_size
        if n < m:
            raise ConfigError(
                f"the training set has {n} points, fewer than the minibatch size {m}; "
                f"use --batch-size {n} or less"
            )
        if m % self.world or (self.world > 1 and algorithm.needs_index):
            raise ConfigError(
                f"{algorithm.name} keeps per-datapoint state; train it in one process"
                if m % self.world == 0
                else f"the global minibatch of {m} does not split over {self.world} processes; "
                f"use a number of processes that divides {m}"
            )
        self.local_batch = m // self.world
        distributed.make_data_parallel(algorithm)  # average gradients over the ranks
        distributed.broadcast_([*self.model.parameters(), *self.model.buffers()])
        self.steps_per_epoch = n // m  # the last partial minibatch of an epoch is dropped
        if config.epochs is not None:
            self.total = config.epochs * self.steps_per_epoch * m
        else:
            self.total = int(math.ceil((config.budget or 1_000_000) / m)) * m
        self.horizon = self.total  # the step-size schedule's length (total may be cut short)
        self.schedule = (
            eval_schedule(self.total, m, config.eval_per_decade) if evaluate_points else []
        )
        self.trace: list[float] = []  # mean training bound of every group of logged steps
        self.records: list[dict] = []  # evaluation records of this call
        self.noise = torch.Generator(device=train_x.device).manual_seed(_split_seed(config.seed, 1))
        self.step_count = 0
        self.seconds = 0.0
        self.last_good_step: int | None = None  # step of the last checkpoint written or loaded
        self.watch: FiniteWatch | None = None
        self._epoch_x: Tensor | None = None
        self._epoch_perm: Tensor | None = None
        self._epoch = -1
        self._rank_noise()
        # model selection on the validation split, and TensorBoard files (aevb.selection/tracking)
        self.valid_x = valid_x
        for g in algorithm.optimizer.param_groups:  # the schedule's start (saved with the state)
            g.setdefault("initial_lr", g["lr"])
        grace = self.steps_per_epoch * m  # patience counts from the end of the first epoch
        self.selection = Selection(self.run_dir, config.keep, config.patience, grace)
        self.tracker = RunTracker(self.run_dir) if config.tensorboard and self.run_dir else None

    def _rank_noise(self) -> None:
        """Autograd steps on several ranks draw their noise from per-rank streams."""
        if self.world > 1 and not getattr(self.alg, "noise_sharded", False):
            self.noise.manual_seed(_split_seed(self.config.seed, 1, self.rank, self.step_count))

    def _spread(self, fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int) -> Tensor:
        """fn over x in chunks; on several ranks each does its share and all get the whole."""
        lo, hi = distributed.shard_bounds(len(x))
        x = x[lo:hi]
        parts = [fn(x[i : i + chunk]) for i in range(0, len(x), max(1, chunk))]
        return distributed.gather_cat(torch.cat(parts) if parts else x.new_zeros(0))

    # ---------------------------------------------------------------- data order
    def _epoch_data(self, epoch: int) -> tuple[Tensor, Tensor]:
        """Binarized training data and minibatch order of an epoch, from (seed, epoch) alone."""
        if epoch != self._epoch:
            c = self.config
            x = self.train_x
            if c.binarize == "dynamic":
                x = binarize_tensor(x, "dynamic", _split_seed(c.seed, 2, epoch))
            elif c.binarize == "static":
                x = binarize_tensor(x, "static", _split_seed(c.seed, 3))
            g = torch.Generator().manual_seed(_split_seed(c.seed, 4, epoch))
            self._epoch_perm = torch.randperm(len(x), generator=g).to(x.device)
            self._epoch_x, self._epoch = x, epoch
        return self._epoch_x, self._epoch_perm

    def _eval_data(self, x: Tensor, split_id: int) -> Tensor:
        """At most eval_size points, binarized by one fixed draw for the dynamic/static modes."""
        x = x[: self.config.eval_size]
        mode = self.config.binarize
        if mode in ("dynamic", "static"):
            x = binarize_tensor(x, "static", _split_seed(self.config.seed, 5, split_id))
        return x

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Train and test bounds (mean and standard error over points) at the current step."""
        rec: dict = {"samples_seen": self.samples_seen, "seconds": round(self.seconds, 3)}
        if self.config.lr_schedule != "constant":  # the step size of the last step taken
            rec["lr"] = float(self.alg.optimizer.param_groups[0]["lr"])
        distributed.check_replicas(self.model.parameters())  # the ranks hold the same model
        ranks = (self.rank,) if self.world > 1 else ()  # each rank its own evaluation noise
        g = torch.Generator(device=self.train_x.device).manual_seed(
            _split_seed(self.config.seed, 6, self.samples_seen, *ranks)
        )
        self.model.eval()
        splits = (("train", self.train_x), ("test", self.test_x), ("valid", self.valid_x))
        for split_id, (name, x) in enumerate(splits):
            if x is None:
                continue
            xe = self._eval_data(x, split_id)
            if self.alg.has_bound:
                b = self._spread(lambda t: self.alg.evaluate(t, g), xe, 2000)
                rec[f"{name}_bound"] = float(b.mean())
                rec[f"{name}_bound_se"] = _se(b)
            if self.config.estimator == "iwae":
                k = self.config.samples
                step = max(1, 20_000 // k)  # at most ~20 000 decoded (z, x) pairs at once
                w = self._spread(lambda t, k=k: self.model.iwae_bound(t, k, g), xe, step)
                rec[f"{name}_iwae_bound"] = float(w.mean())
                rec[f"{name}_iwae_bound_se"] = _se(w)
            if self.config.eval_marginal is not None:
                xm = xe[: self.config.eval_marginal_points]
                ll = self._spread(lambda t: self._log_likelihood(t, g), xm, len(xm))
                rec[f"{name}_log_likelihood"] = float(ll.mean())
                rec[f"{name}_log_likelihood_se"] = _se(ll)
                if self.alg.has_bound:  # the bound on the same points, for a like-for-like gap
                    sub = self._spread(lambda t: self.alg.evaluate(t, g), xm, len(xm))
                    rec[f"{name}_bound_subset"] = float(sub.mean())
        self.model.train()
        rec.update(self.alg.extra_metrics())
        return rec

    def _log_likelihood(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Per-point log p(x): importance sampling with the encoder ("is") or Appendix D ("hmc")."""
        from .marginal import hmc_marginal, importance_sampling

        c = self.config
        if c.eval_marginal == "is":  # its values do not depend on the workers (tested)
            workers = torch.get_num_threads() if x.device.type == "cpu" else 1
            res = importance_sampling(
                self.model, x, c.eval_importance_samples, workers=workers, generator=generator
            )
            return res.log_px
        init = "encoder" if self.alg.has_bound else "prior"  # MCEM's encoder is never trained
        return hmc_marginal(self.model, x, init=init, generator=generator).log_px

    @property
    def samples_seen(self) -> int:
        return self.step_count * self.config.batch_size

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {f"model.{k}": _owned(v) for k, v in self.model.state_dict().items()}
        opt_t, opt_meta = optimizer_tensors(self.alg.optimizer)
        tensors.update(opt_t)
        tensors["rng.noise"] = self.noise.get_state()
        tensors.update({f"alg.{k}": v for k, v in self.alg.state_tensors().items()})
        meta = {
            "step": self.step_count,
            "samples_seen": self.samples_seen,
            "seconds": self.seconds,
            "optimizer": opt_meta,
            "selection": self.selection.state(),
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, Tensor], meta: dict) -> None:
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd)
        load_optimizer_tensors(self.alg.optimizer, tensors, meta["optimizer"])
        self.noise.set_state(tensors["rng.noise"])
        self.alg.load_state_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("alg.")})
        self.step_count = int(meta["step"])
        self.seconds = float(meta["seconds"])
        self.last_good_step = self.step_count
        self.selection.load_state(meta.get("selection"))
        self._rank_noise()

    def checkpoint(self) -> None:
        """Write training state and model as one crash-safe change (:func:`aevb.runs.commit`).

        Never from non-finite parameters: the steps since the last check are checked first, and
        the parameters themselves, so a fault leaves the last good checkpoint in place.
        """
        if self.run_dir is None:
            return
        self.check_finite()
        params = list(self.model.parameters())
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise self._diverged(self.step_count, "parameters", float("nan"))
        tensors, meta = self.state()
        model_sd = {k: _owned(v) for k, v in self.model.state_dict().items()}
        runs.commit(
            self.run_dir,
            {
                runs.STATE: runs.tensors_bytes(tensors, meta),
                runs.MODEL: runs.tensors_bytes(model_sd, {"samples_seen": self.samples_seen}),
            },
        )
        self.last_good_step = self.step_count

    def check_finite(self) -> None:
        """Raise NumericalError naming the first step since the last check that went non-finite."""
        bad = self.watch.check() if self.watch is not None else None
        if bad is not None:
            raise self._diverged(*bad)

    def _diverged(self, step: int, what: str, bound: float) -> NumericalError:
        c, m = self.config, self.config.batch_size
        cause = (
            f"the minibatch bound was {bound}"
            if what == "bound"
            else "the update made parameters non-finite (a non-finite or overflowing gradient)"
        )
        if self.run_dir is None:
            kept = "nothing was written"
        elif self.last_good_step is None:
            kept = f"no checkpoint had been written yet in {self.run_dir}"
        else:
            kept = (
                f"the last good checkpoint (step {self.last_good_step:,}, "
                f"{self.last_good_step * m:,} samples) is kept in {self.run_dir}"
            )
        fix = f"a smaller step size (--lr, here {c.lr})"
        if c.init != "paper":
            fix += " or the default --init paper"
        if getattr(self.model.config, "likelihood", "") == "gaussian":
            fix += (
                " (with the Gaussian decoder this is usually its variance collapsing onto "
                "near-constant pixels: its log-variance has no floor)"
            )
        return NumericalError(
            f"training diverged at step {step:,} (samples {(step - 1) * m:,} to {step * m:,}): "
            f"{cause}; the run stopped and {kept}; likely fix: {fix}, in a new run"
        )

    # ---------------------------------------------------------------- the loop
    def run(self) -> list[dict]:
        """Train to the budget; return the metrics recorded by this call."""
        c, m = self.config, self.config.batch_size
        records: list[dict] = []
        total_steps = self.total // m
        if self.selection.stop:
            return records  # stopped early (--patience) before the checkpoint resumed from
        pending = [s for s in self.schedule if s >= self.samples_seen]
        if pending and pending[0] == self.samples_seen and self.step_count == 0:
            records.append(self._log(self.evaluate()))
            pending.pop(0)
        elif pending and pending[0] == self.samples_seen:
            pending.pop(0)  # already logged before the checkpoint we resumed from
        bar = tqdm(
            total=self.total,
            initial=self.samples_seen,
            unit="samples",
            unit_scale=True,
            disable=not self.progress,
            dynamic_ncols=True,
            leave=False,
        )
        running = torch.zeros((), device=self.train_x.device)
        # one minibatch buffer for the whole run: no large allocation (and page faults) per step
        xb = torch.empty(
            (self.local_batch, *self.train_x.shape[1:]),
            dtype=self.train_x.dtype,
            device=self.train_x.device,
        )
        if self.train_x.device.type == "cpu":
            tune_allocator()  # the autograd steps (baselines, fallbacks) allocate every step
        note = getattr(self.alg, "engine_note", None)
        if note and self.progress:
            tqdm.write(f"engine: {note}")
        n_running = 0
        scheduled = c.lr_schedule != "constant"
        if scheduled and self.progress:
            lr0 = self.alg.optimizer.param_groups[0]["initial_lr"]
            end = c.lr_at(lr0, self.horizon, self.horizon)
            tqdm.write(
                f"step size: {c.lr_schedule} decay from {lr0:g} to {end:g} "
                f"over {self.horizon:,} samples"
            )
        last_ckpt = time.monotonic()
        last_ckpt_samples = self.samples_seen
        p0 = next(iter(self.model.parameters()), None)
        self.watch = FiniteWatch(
            20, self.train_x.device, p0.dtype if p0 is not None else torch.float32
        )
        t0 = time.perf_counter()
        try:
            while self.step_count < total_steps:
                epoch, pos = divmod(self.step_count, self.steps_per_epoch)
                x, perm = self._epoch_data(epoch)
                lo = pos * m + self.rank * self.local_batch  # this rank's part of the minibatch
                idx = perm[lo : lo + self.local_batch]
                torch.index_select(x, 0, idx, out=xb)
                if scheduled:
                    self._schedule_lr()
                if self.alg.needs_index:
                    bound = self.alg.step(xb, self.noise, index=idx)
                else:
                    bound = self.alg.step(xb, self.noise)
                running += bound
                n_running += 1
                self.step_count += 1
                if self.watch.record(self.step_count, bound, self.alg.finite_probe()):
                    self.check_finite()
                if n_running == 20 or self.step_count == total_steps:
                    self.check_finite()
                    mean_bound = float(distributed.all_reduce_mean_(running)) / n_running
                    self.trace.append(mean_bound)
                    bar.update(n_running * m)
                    bar.set_postfix(bound=f"{mean_bound:.2f}", refresh=False)
                    running.zero_()
                    n_running = 0
                if pending and self.samples_seen >= pending[0]:
                    self.check_finite()  # before evaluating: name the step, not the evaluation
                    self.seconds += time.perf_counter() - t0
                    records.append(self._log(self.evaluate()))
                    pending.pop(0)
                    self.checkpoint()
                    last_ckpt, last_ckpt_samples = time.monotonic(), self.samples_seen
                    t0 = time.perf_counter()
                    if self.selection.stop:  # early stopping on the validation bound
                        if self.progress:
                            tqdm.write(f"early stop: no better valid bound in {c.patience} evals")
                        break
                elif time.monotonic() - last_ckpt > c.checkpoint_seconds or (
                    c.checkpoint_samples is not None
                    and self.samples_seen - last_ckpt_samples >= c.checkpoint_samples
                ):
                    self.seconds += time.perf_counter() - t0
                    self.checkpoint()
                    last_ckpt, last_ckpt_samples = time.monotonic(), self.samples_seen
                    t0 = time.perf_counter()
        finally:
            bar.close()
        return records

    def _schedule_lr(self) -> None:
        """Set every parameter group's step size for the next step (TrainConfig.lr_at)."""
        for g in self.alg.optimizer.param_groups:
            g["lr"] = self.config.lr_at(g["initial_lr"], self.samples_seen, self.horizon)

    def _log(self, rec: dict) -> dict:
        if not all(math.isfinite(v) for v in rec.values() if isinstance(v, float)):
            bad = sorted(k for k, v in rec.items() if isinstance(v, float) and not math.isfinite(v))
            raise NumericalError(
                f"non-finite evaluation at {rec['samples_seen']:,} samples ({', '.join(bad)}); "
                "the run stopped before logging it; likely fix: a smaller --lr, or the default "
                "--init paper"
            )
        self.records.append(rec)
        if self.run_dir is not None:
            runs.append_metrics(self.run_dir, rec)
        self.selection.update(rec, self.model)
        if self.tracker is not None:
            lr = self.alg.optimizer.param_groups[0]["lr"]
            shown = self.valid_x if self.valid_x is not None else self.test_x
            self.tracker.log(rec, lr, self.model, shown)
        if self.on_eval is not None:
            self.on_eval(rec)
        elif self.progress:
            line = f"{rec['samples_seen']:>12,d} samples"
            labels = (("bound", "bound"), ("iwae_bound", "IWAE"), ("log_likelihood", "log p(x)"))
            for key, label in labels:
                if f"train_{key}" in rec:
                    line += f"  {label}: train {rec[f'train_{key}']:9.3f}"
                    line += f" test {rec.get(f'test_{key}', float('nan')):9.3f}"
            tqdm.write(line)
        return rec
