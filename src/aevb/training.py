"""The one training engine (Algorithm 1 and the protocol of PAPER.md section 6).

An *algorithm* is only the step it takes on a minibatch (:mod:`aevb.algorithms`); the
:class:`Trainer` owns everything else: minibatch order, binarization, the evaluation schedule,
checkpoints and resume, and tells its callbacks (:mod:`aevb.callbacks`) of each event.

Objective and weight prior. For N training points and a minibatch of M, the paper maximises
(N/M) sum_i L(x_i) + log p(theta) with p(theta) = N(0, I). We divide the whole objective by N so the
reported number is a per-datapoint bound in nats:

    J(theta) = (1/M) sum_i L(x_i) - ||theta||^2 / (2 N)

so the N(0, I) prior is a weight decay of exactly 1/N on the per-datapoint loss (applied through the
optimizer's ``weight_decay``). Dividing by N changes no optimum, and Adagrad is invariant to the
scale of the gradient (up to its epsilon).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import distributed, runs
from .algorithms.base import Algorithm
from .callbacks import (
    Callback,
    MetricsFile,
    MLflow,
    ModelSelection,
    OnEvaluation,
    ProgressBar,
    StepSizeOnPlateau,
    TensorBoard,
)
from .data.base import binarize_tensor
from .data.mapped import MappedRows
from .diagnostics import BoundTerms, latent_usage
from .errors import ConfigError, NumericalError
from .fast import tune_allocator
from .runs import owned_tensor
from .seeds import split_seed
from .selection import metric_for
from .settings import TrainConfig
from .stats import standard_error

R = TypeVar("R")

# --------------------------------------------------------------------------- optimizer state


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Flatten an optimizer's state into safetensors-ready tensors and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, float] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = owned_tensor(v)
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict
) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


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


# --------------------------------------------------------------------------- evaluation records


def _timed(what: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a Trainer method: add each call's wall time to ``trainer.spent[what]``."""

    def wrap(method: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(method)
        def timed(self: Trainer, *args: Any, **kwargs: Any) -> R:
            t = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                self.spent[what] += time.perf_counter() - t

        return timed

    return wrap


def _due(counts: list[int], samples_seen: int) -> list[int]:
    """Take from the sorted sample ``counts`` those at or below ``samples_seen``."""
    due = []
    while counts and counts[0] <= samples_seen:
        due.append(counts.pop(0))
    return due


def terms_record(split: str, terms: BoundTerms) -> dict:
    """An evaluation's numbers for one split: the bound and its two terms, each with its standard
    error over points; the active units; and two lists, one value per latent dimension to 6
    significant digits: the mean KL (``kl_per_dim``) and Cov_x(E_q[z_d|x]) (``activity``)."""
    rec: dict = {}
    for key in ("bound", "reconstruction", "kl"):
        v = getattr(terms, key)
        rec[f"{split}_{key}"] = float(v.mean())
        rec[f"{split}_{key}_se"] = standard_error(v)
    usage = latent_usage(terms.center, terms.kl_per_dim)
    rec[f"{split}_active_units"] = usage.active_units
    rec[f"{split}_kl_per_dim"] = [float(f"{v:.6g}") for v in usage.kl_per_dim]
    rec[f"{split}_activity"] = [float(f"{v:.6g}") for v in usage.activity]
    return rec


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
    """Runs an algorithm over a dataset for a budget, logging, checkpointing and resuming.

    What a run does at its events (metrics.jsonl, model selection, TensorBoard, the progress bar,
    ``on_eval``) is done by callbacks (:mod:`aevb.callbacks`) built from the config; ``callbacks``
    adds the user's, called after those, in order.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        train_x: Tensor | MappedRows,
        test_x: Tensor | MappedRows | None,
        config: TrainConfig,
        run_dir: str | Path | None = None,
        progress: bool = True,
        on_eval: Callable[[dict], None] | None = None,
        evaluate_points: bool = True,
        valid_x: Tensor | MappedRows | None = None,
        callbacks: list[Callback] | None = None,
        time_limit: float | None = None,
    ) -> None:
        self.alg = algorithm
        self.model = algorithm.model
        self.config = config
        self.train_x = train_x  # a tensor on the device, or rows mapped from disk
        self.test_x = test_x
        self.device = next(algorithm.model.parameters()).device
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
        self.noise = torch.Generator(device=self.device).manual_seed(split_seed(config.seed, 1))
        self.step_count = 0
        self.seconds = 0.0
        #: wall seconds this call spent evaluating and checkpointing (``seconds`` is training's)
        self.spent = {"evaluation": 0.0, "checkpoint": 0.0}
        self.last_good_step: int | None = None  # step of the last checkpoint written or loaded
        self.watch: FiniteWatch | None = None
        self._epoch_x: Tensor | MappedRows | None = None
        self._epoch_perm: Tensor | None = None
        self._epoch = -1
        self._rank_noise()
        self.valid_x = valid_x
        for g in algorithm.optimizer.param_groups:  # the schedule's start (saved with the state)
            g.setdefault("initial_lr", g["lr"])
        self.should_stop = False  # set by a callback (aevb.callbacks): stop after this evaluation
        self.time_limit = time_limit  # wall seconds for run() (--time-limit), or None
        self.out_of_time = False  # run() stopped at its time limit
        self.callbacks: list[Callback] = [*self._default_callbacks(), *(callbacks or ())]

    def _default_callbacks(self) -> list[Callback]:
        """What a run does at its events, from its config (:mod:`aevb.callbacks`).

        metrics.jsonl (with a run directory), model selection on the validation split (always: its
        state travels in the checkpoint), TensorBoard files, MLflow, ``on_eval``, the progress bar.
        """
        c = self.config
        out: list[Callback] = [MetricsFile(self.run_dir)] if self.run_dir is not None else []
        grace = self.steps_per_epoch * c.batch_size  # patience counts from the end of epoch one
        metric = metric_for(c.estimator)
        self.selection = ModelSelection(self.run_dir, c.keep, c.patience, grace, metric)
        out.append(self.selection)
        self.plateau = None
        if c.lr_schedule == "plateau":
            self.plateau = StepSizeOnPlateau(c.lr_factor, c.lr_patience, c.lr_min, grace, metric)
            out.append(self.plateau)
        self.tracker = None
        if c.tensorboard and self.run_dir is not None:
            board = TensorBoard(self.run_dir)
            self.tracker = board.tracker
            out.append(board)
        if c.mlflow is not None and self.run_dir is not None:  # --mlflow: aevb.mlflow_tracking
            out.append(MLflow(c.mlflow))
        if self.on_eval is not None:
            out.append(OnEvaluation(self.on_eval))
        if self.progress:  # the per-evaluation lines are on_eval's when it is given
            out.append(ProgressBar(lines=self.on_eval is None))
        return out

    def _notify(self, event: str, *args: object) -> None:
        """Call ``event`` of every callback, in order (never per step: see aevb.callbacks)."""
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def _rank_noise(self) -> None:
        """Autograd steps on several ranks draw their noise from per-rank streams."""
        if self.world > 1 and not self.alg.noise_sharded:
            self.noise.manual_seed(split_seed(self.config.seed, 1, self.rank, self.step_count))

    def _spread(self, fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int) -> Tensor:
        """fn over x in chunks; on several ranks each does its share and all get the whole."""
        lo, hi = distributed.shard_bounds(len(x))
        x = x[lo:hi]
        parts = [fn(x[i : i + chunk]) for i in range(0, len(x), max(1, chunk))]
        return distributed.gather_cat(torch.cat(parts) if parts else x.new_zeros(0))

    # ---------------------------------------------------------------- data order
    def _epoch_data(self, epoch: int) -> tuple[Tensor | MappedRows, Tensor]:
        """Binarized training data and minibatch order of an epoch, from (seed, epoch) alone
        (mapped rows are binarized a minibatch at a time, by :meth:`_minibatch`)."""
        if epoch != self._epoch:
            c = self.config
            x = self.train_x
            if isinstance(x, MappedRows):
                pass
            elif c.binarize == "dynamic":
                x = binarize_tensor(x, "dynamic", split_seed(c.seed, 2, epoch))
            elif c.binarize == "static":
                x = binarize_tensor(x, "static", split_seed(c.seed, 3))
            g = torch.Generator().manual_seed(split_seed(c.seed, 4, epoch))
            self._epoch_perm = torch.randperm(len(x), generator=g).to(self.device)
            self._epoch_x, self._epoch = x, epoch
        assert self._epoch_x is not None and self._epoch_perm is not None  # set above
        return self._epoch_x, self._epoch_perm

    def _minibatch(self, x: Tensor | MappedRows, idx: Tensor, out: Tensor, step: int) -> None:
        """The minibatch at positions ``idx`` of the epoch's data, into ``out``.

        Mapped rows are read from disk (the same values a loaded file gives), and under dynamic
        binarization drawn with the noise of (seed, step): a fresh draw per minibatch.
        """
        if isinstance(x, Tensor):
            torch.index_select(x, 0, idx, out=out)
            return
        out.copy_(torch.from_numpy(x.read(idx.cpu().numpy())))
        if self.config.binarize == "dynamic":
            g = torch.Generator(device=out.device).manual_seed(
                split_seed(self.config.seed, 8, step)
            )
            out.copy_(torch.bernoulli(out, generator=g))

    def _eval_data(self, x: Tensor | MappedRows, split_id: int) -> Tensor:
        """At most eval_size points, binarized by one fixed draw for the dynamic/static modes."""
        if isinstance(x, MappedRows):
            x = torch.from_numpy(x.head(self.config.eval_size)).to(self.device)
        x = x[: self.config.eval_size]
        mode = self.config.binarize
        if mode in ("dynamic", "static"):
            x = binarize_tensor(x, "static", split_seed(self.config.seed, 5, split_id))
        return x

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    @_timed("evaluation")
    def evaluate(self) -> dict:
        """Train and test bounds (mean and standard error over points) at the current step."""
        rec: dict = {"samples_seen": self.samples_seen, "seconds": round(self.seconds, 3)}
        if self.config.lr_schedule != "constant":  # the step size of the last step taken
            rec["lr"] = float(self.alg.optimizer.param_groups[0]["lr"])
        distributed.check_replicas(self.model.parameters())  # the ranks hold the same model
        ranks = (self.rank,) if self.world > 1 else ()  # each rank its own evaluation noise
        self.model.eval()
        test_x = self.test_x if self.config.eval_test else None  # --no-eval-test
        splits = (("train", self.train_x), ("test", test_x), ("valid", self.valid_x))
        for split_id, (name, x) in enumerate(splits):
            if x is None:
                continue
            # each split its own noise: a split left out changes no other split's numbers
            g = torch.Generator(device=self.device).manual_seed(
                split_seed(self.config.seed, 6, self.samples_seen, split_id, *ranks)
            )
            rec.update(self._evaluate_split(name, self._eval_data(x, split_id), g))
        self.model.train()
        rec.update(self.alg.extra_metrics())
        return rec

    def _evaluate_split(self, name: str, xe: Tensor, g: torch.Generator) -> dict:
        """One split's numbers: the bound and its terms (or the auto-encoder's reconstruction),
        the IWAE bound of an IWAE run, and log p(x) with ``--eval-marginal``."""
        rec: dict = {}
        if self.alg.has_bound:  # the bound, its two terms and the latent usage: one pass
            rec.update(terms_record(name, self._spread_terms(xe, g)))
        if not self.alg.has_bound and self.alg.reports:  # the auto-encoder's reconstruction
            r = self._spread(lambda t: self.alg.evaluate(t, g), xe, 2000)
            rec[f"{name}_{self.alg.reports}"] = float(r.mean())
            rec[f"{name}_{self.alg.reports}_se"] = standard_error(r)
        if self.config.estimator == "iwae":
            k = self.config.samples
            step = max(1, 20_000 // k)  # at most ~20 000 decoded (z, x) pairs at once
            w = self._spread(lambda t: self.model.iwae_bound(t, k, g), xe, step)
            rec[f"{name}_iwae_bound"] = float(w.mean())
            rec[f"{name}_iwae_bound_se"] = standard_error(w)
        if self.config.eval_marginal is not None:
            xm = xe[: self.config.eval_marginal_points]
            ll = self._spread(lambda t: self._log_likelihood(t, g), xm, len(xm))
            rec[f"{name}_log_likelihood"] = float(ll.mean())
            rec[f"{name}_log_likelihood_se"] = standard_error(ll)
            if self.alg.has_bound:  # the bound on the same points, for a like-for-like gap
                sub = self._spread(lambda t: self.alg.evaluate(t, g), xm, len(xm))
                rec[f"{name}_bound_subset"] = float(sub.mean())
        return rec

    def _spread_terms(self, x: Tensor, generator: torch.Generator) -> BoundTerms:
        """:meth:`Algorithm.evaluate_terms` over x, 2000 points at a time, shared over ranks."""
        j = self.model.config.latent_dim
        flat = self._spread(
            lambda t: self.alg.evaluate_terms(t, generator).packed().reshape(-1), x, 2000
        )
        return BoundTerms.unpack(flat, j)

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
        return hmc_marginal(
            self.model,
            x,
            posterior_samples=c.eval_hmc_samples,
            warmup=c.eval_hmc_warmup,
            init=init,
            generator=generator,
        ).log_px

    @property
    def samples_seen(self) -> int:
        return self.step_count * self.config.batch_size

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {f"model.{k}": owned_tensor(v) for k, v in self.model.state_dict().items()}
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
        if self.plateau is not None:
            meta["plateau"] = self.plateau.state()
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
        if self.plateau is not None:
            self.plateau.load_state(meta.get("plateau"), self.alg.optimizer)
        self.should_stop = self.selection.stop  # a run stopped early (--patience) stays stopped
        self._rank_noise()

    @_timed("checkpoint")
    def checkpoint(self, snapshots: Sequence[int] = ()) -> None:
        """Write training state and model as one crash-safe change (:func:`aevb.runs.commit`),
        with the model also as each snapshot of ``snapshots`` (``--snapshots``) now due.

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
        model_sd = {k: owned_tensor(v) for k, v in self.model.state_dict().items()}
        model = runs.tensors_bytes(model_sd, {"samples_seen": self.samples_seen})
        files = {runs.STATE: runs.tensors_bytes(tensors, meta), runs.MODEL: model}
        files.update({runs.snapshot_name(n): model for n in snapshots})
        runs.commit(self.run_dir, files)
        self.last_good_step = self.step_count
        self._notify("on_checkpoint")

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
        if self.model.config.likelihood == "gaussian":
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
        """Train to the budget; return the metrics recorded by this call.

        The callbacks (:mod:`aevb.callbacks`) hear of the start and the end of the call, of the
        sync every 20 steps, and of every evaluation and checkpoint; never of a single step.
        """
        c, m = self.config, self.config.batch_size
        records: list[dict] = []
        total_steps = self.total // m
        deadline = None if self.time_limit is None else time.monotonic() + self.time_limit
        self.out_of_time = False  # this call's limit (a Trainer may run again, e.g. resumed)
        if self.should_stop:
            return records  # stopped early (--patience) before the checkpoint resumed from
        try:
            self._notify("on_train_start")
            pending = self._first_evaluation(records)
            if self.should_stop:  # a callback stopped the run at its first evaluation
                return records
            running = torch.zeros((), device=self.device)
            xb = self._start_steps()
            assert self.watch is not None  # made by _start_steps
            n_running = 0
            scheduled = c.lr_by_samples
            last_ckpt = time.monotonic()
            last_ckpt_samples = self.samples_seen
            snapshots = sorted(n for n in c.snapshots or () if n > self.samples_seen)
            t0 = time.perf_counter()
            while self.step_count < total_steps:
                epoch, pos = divmod(self.step_count, self.steps_per_epoch)
                x, perm = self._epoch_data(epoch)
                lo = pos * m + self.rank * self.local_batch  # this rank's part of the minibatch
                idx = perm[lo : lo + self.local_batch]
                self._minibatch(x, idx, xb, self.step_count)
                if scheduled:
                    self._schedule_lr()
                bound = self.alg.step(xb, self.noise, idx)
                running += bound
                n_running += 1
                self.step_count += 1
                if self.watch.record(self.step_count, bound, self.alg.finite_probe()):
                    self.check_finite()
                if n_running == 20 or self.step_count == total_steps:
                    self._step_group(running, n_running, deadline)
                    n_running = 0
                due = _due(snapshots, self.samples_seen) if snapshots else []
                eval_due = bool(pending) and self.samples_seen >= pending[0]
                if eval_due or self.out_of_time:
                    self.check_finite()  # before evaluating: name the step, not the evaluation
                    self.seconds += time.perf_counter() - t0
                    records.append(self._log(self.evaluate()))
                    if eval_due:
                        pending.pop(0)
                    self.checkpoint(due)
                    last_ckpt, last_ckpt_samples = time.monotonic(), self.samples_seen
                    t0 = time.perf_counter()
                    if self.should_stop or self.out_of_time:  # --patience, a callback, the time
                        break
                elif (
                    due
                    or time.monotonic() - last_ckpt > c.checkpoint_seconds
                    or (
                        c.checkpoint_samples is not None
                        and self.samples_seen - last_ckpt_samples >= c.checkpoint_samples
                    )
                ):
                    self.seconds += time.perf_counter() - t0
                    self.checkpoint(due)
                    last_ckpt, last_ckpt_samples = time.monotonic(), self.samples_seen
                    t0 = time.perf_counter()
        finally:
            self._notify("on_train_end")
        return records

    def _step_group(self, running: Tensor, n: int, deadline: float | None) -> None:
        """Every 20 steps: the finite check, the group's mean bound to the callbacks, and the
        time limit (decided by all ranks together, so that they stop at the same step)."""
        self.check_finite()
        mean_bound = float(distributed.all_reduce_mean_(running)) / n
        self.trace.append(mean_bound)
        self._notify("on_step_group", mean_bound, n * self.config.batch_size)
        running.zero_()
        if deadline is None:
            return
        late = torch.tensor(float(time.monotonic() >= deadline), device=self.device)
        self.out_of_time = float(distributed.all_reduce_mean_(late)) > 0
        if self.out_of_time and self.progress:
            tqdm.write(
                f"time limit: stopped after {self.time_limit:g} s at {self.samples_seen:,} "
                f"samples of {self.total:,}; continue with --resume"
            )

    def _first_evaluation(self, records: list[dict]) -> list[int]:
        """The evaluation points still due; logs the one at 0 samples of a fresh run."""
        pending = [s for s in self.schedule if s >= self.samples_seen]
        if pending and pending[0] == self.samples_seen and self.step_count == 0:
            records.append(self._log(self.evaluate()))
            pending.pop(0)
        elif pending and pending[0] == self.samples_seen:
            pending.pop(0)  # already logged before the checkpoint we resumed from
        return pending

    def _start_steps(self) -> Tensor:
        """Before the first step: the start-of-run notes, the allocator, the FiniteWatch; and the
        run's one minibatch buffer (no large allocation, and page faults, per step)."""
        xb = torch.empty(
            (self.local_batch, *self.train_x.shape[1:]),
            dtype=self.train_x.dtype if isinstance(self.train_x, Tensor) else torch.float32,
            device=self.device,
        )
        if self.device.type == "cpu":
            tune_allocator()  # the autograd steps (baselines, fallbacks) allocate every step
        self._start_notes()
        p0 = next(iter(self.model.parameters()), None)
        self.watch = FiniteWatch(20, self.device, p0.dtype if p0 is not None else torch.float32)
        return xb

    def _start_notes(self) -> None:
        """With progress: why the step runs on autograd, and the step-size schedule."""
        c = self.config
        note = self.alg.engine_note
        if note and self.progress:
            tqdm.write(f"engine: {note}")
        if c.lr_schedule == "plateau" and self.progress:
            tqdm.write(
                f"step size: {self.alg.optimizer.param_groups[0]['initial_lr']:g}, times "
                f"{c.lr_factor:g} after {c.lr_patience} evaluations without a better validation "
                f"bound" + (f" (not below {c.lr_min:g})" if c.lr_min else "")
            )
        if c.lr_by_samples and self.progress:
            lr0 = self.alg.optimizer.param_groups[0]["initial_lr"]
            end = c.lr_at(lr0, self.horizon, self.horizon)
            tqdm.write(
                f"step size: {c.lr_schedule} decay from {lr0:g} to {end:g} "
                f"over {self.horizon:,} samples"
            )

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
        self._notify("on_evaluation", rec)  # metrics.jsonl first, then selection, ..., the user's
        return rec
