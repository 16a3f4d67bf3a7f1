"""Callbacks: what the Trainer tells the rest of a run, and how user code joins in.

The :class:`~aevb.training.Trainer` owns the loop: minibatches, steps, the evaluation schedule,
checkpoints. Everything else a run does at its events (append to ``metrics.jsonl``, keep the best
model, stop early, write TensorBoard files, draw the progress bar) is a :class:`Callback`. The
Trainer builds the default ones from its config and runs user callbacks (``callbacks=``) after
them, in order, at these events:

- ``on_train_start(trainer)``: once per :meth:`Trainer.run` call, before anything else it does
  (the evaluation at 0 samples of a fresh run comes after it);
- ``on_step_group(trainer, mean_bound, samples)``: at the periodic sync every 20 steps (and at the
  last step), with the mean training bound of those steps and the number of training samples they
  took; never per step, so callbacks add nothing to the step's cost;
- ``on_evaluation(trainer, record)``: at every evaluation point, with the record just appended to
  ``metrics.jsonl`` (train, test and valid bounds, ``samples_seen``, ``seconds``, ...);
- ``on_checkpoint(trainer)``: after every checkpoint is written (runs with a run directory);
- ``on_train_end(trainer)``: once at the end of every run call that started, also when training
  stops on an error (the error propagates after it);
- ``on_run_end(trainer)``: once :func:`aevb.train` has written the run's last checkpoint and its
  figures, after ``on_train_end`` (not at a bare :meth:`Trainer.run`, nor after an error).

A callback stops training by setting ``trainer.should_stop = True``: the Trainer stops after the
current evaluation's checkpoint (or at the next evaluation, when set elsewhere). An exception
raised by a callback propagates like any other error: what was written before it stays, and the
run resumes from its last checkpoint. A stop set by a user callback is not saved in the
checkpoint (``--patience``'s is): a resumed run asks its callbacks again. In a distributed run
(:mod:`aevb.distributed`) callbacks run on every process (``trainer.rank``; ``on_checkpoint`` on
rank 0, which writes); the records are the same on all of them, so a stop decided from records is
too, as it must be.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from . import runs
from .data.mapped import first_rows
from .mlflow_tracking import MlflowTracker, current_error
from .selection import METRIC, Selection
from .tracking import RunTracker

if TYPE_CHECKING:
    from .training import Trainer


class Callback:
    """Hooks at the Trainer's events; each does nothing unless overridden."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before a :meth:`Trainer.run` call trains (and before its evaluation at 0 samples)."""

    def on_step_group(self, trainer: Trainer, mean_bound: float, samples: int) -> None:
        """At the sync every 20 steps: their mean training bound and training samples."""

    def on_evaluation(self, trainer: Trainer, record: dict) -> None:
        """At an evaluation point, with its metrics record."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        """After a checkpoint was written."""

    def on_train_end(self, trainer: Trainer) -> None:
        """At the end of a :meth:`Trainer.run` call (also when it ends on an error)."""

    def on_run_end(self, trainer: Trainer) -> None:
        """After :func:`aevb.train` wrote the run's last checkpoint and figures."""


class MetricsFile(Callback):
    """Appends each evaluation record to the run's ``metrics.jsonl``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_evaluation(self, trainer: Trainer, record: dict) -> None:
        runs.append_metrics(self.run_dir, record)


class ModelSelection(Selection, Callback):
    """:class:`~aevb.selection.Selection` at every evaluation: ``--keep best`` and ``--patience``.

    It writes ``best_model.safetensors`` and, once the patience is spent, sets
    ``trainer.should_stop``. Its state (:meth:`state`) travels in the training checkpoint.
    """

    def on_evaluation(self, trainer: Trainer, record: dict) -> None:
        self.update(record, trainer.model)
        if self.stop:
            trainer.should_stop = True


class StepSizeOnPlateau(Callback):
    """``--lr-schedule plateau``: the step size times ``factor`` each time the validation bound
    has not improved for ``patience`` evaluations in a row (counted after the first epoch, as
    ``--patience`` counts), never below ``floor``. The count is a
    :class:`~aevb.selection.Selection`'s; the state travels in the training checkpoint."""

    def __init__(
        self, factor: float, patience: int, floor: float, grace: int, metric: str = METRIC
    ) -> None:
        self.factor, self.floor = factor, floor
        self.watch = Selection(None, "last", patience, grace, metric)
        self.scale = 1.0  # the product of the cuts so far

    def on_evaluation(self, trainer: Trainer, record: dict) -> None:
        self.watch.update(record, trainer.model)
        if self.watch.stop:  # the patience is spent: cut the step size and count again
            self.watch.stop, self.watch.since_best = False, 0
            self.scale *= self.factor
            self.apply(trainer.alg.optimizer)

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        """Set each parameter group's step size: its initial one times the cuts, floored."""
        for g in optimizer.param_groups:
            g["lr"] = max(min(self.floor, g["initial_lr"]), g["initial_lr"] * self.scale)

    def state(self) -> dict:
        return {"scale": self.scale, **self.watch.state()}

    def load_state(self, state: dict | None, optimizer: torch.optim.Optimizer) -> None:
        if state:
            self.scale = float(state["scale"])
            self.watch.load_state(state)
            self.apply(optimizer)


class TensorBoard(Callback):
    """TensorBoard event files in ``RUNDIR/tensorboard`` (:class:`~aevb.tracking.RunTracker`)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.tracker = RunTracker(run_dir)

    def on_evaluation(self, trainer: Trainer, record: dict) -> None:
        lr = trainer.alg.optimizer.param_groups[0]["lr"]
        shown = trainer.valid_x if trainer.valid_x is not None else trainer.test_x
        if shown is not None and not isinstance(shown, torch.Tensor):  # rows read from disk
            shown = torch.from_numpy(first_rows(shown, 64)).to(trainer.device)
        self.tracker.log(record, lr, trainer.model, shown)


class MLflow(Callback):
    """Logs the run to MLflow (:mod:`aevb.mlflow_tracking`), from rank 0: its parameters at the
    start, every evaluation's metrics with ``samples_seen`` as the step, its model files and
    figures at the end. ``tracking_uri``: default ``$MLFLOW_TRACKING_URI``, else
    ``file:./mlruns``. Needs MLflow (``pip install 'aevb[mlflow]'``): ConfigError at once if not.
    """

    def __init__(
        self, tracking_uri: str | None = None, experiment: str = "aevb", run_name: str | None = None
    ) -> None:
        self.tracker = MlflowTracker(tracking_uri, experiment, run_name)

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.rank == 0:
            config = (
                runs.read_config(trainer.run_dir)
                if trainer.run_dir is not None
                else {"model": trainer.model.config.to_dict(), "train": trainer.config.to_dict()}
            )
            self.tracker.start(trainer.run_dir, config)

    def on_evaluation(self, trainer: Trainer, record: dict) -> None:
        if trainer.rank == 0:
            self.tracker.log_metrics(record)

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.rank == 0:
            self.tracker.finish(trainer.run_dir, current_error())

    def on_run_end(self, trainer: Trainer) -> None:
        if trainer.rank == 0 and trainer.run_dir is not None and self.tracker.run_id:
            self.tracker.log_figures(trainer.run_dir)  # the model files: at on_train_end


class OnEvaluation(Callback):
    """Calls ``fn(record)`` at every evaluation (the Trainer's ``on_eval=``)."""

    def __init__(self, fn: Callable[[dict], None]) -> None:
        self.fn = fn

    def on_evaluation(self, trainer: Trainer, record: dict) -> None:
        self.fn(record)


class ProgressBar(Callback):
    """The tqdm bar (samples, with the running training bound) and a line per evaluation.

    ``lines=False`` keeps the bar but prints no evaluation lines (an ``on_eval`` takes them over).
    The line saying that ``--patience`` stopped the run is printed either way.
    """

    def __init__(self, lines: bool = True) -> None:
        self.lines = lines
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(
            total=trainer.total,
            initial=trainer.samples_seen,
            unit="samples",
            unit_scale=True,
            dynamic_ncols=True,
            leave=False,
        )

    def on_step_group(self, trainer: Trainer, mean_bound: float, samples: int) -> None:
        if self.bar is not None:
            self.bar.update(samples)
            key = trainer.alg.reports or "bound"  # the auto-encoder's step value: reconstruction
            self.bar.set_postfix({key: f"{mean_bound:.2f}"}, refresh=False)

    def on_evaluation(self, trainer: Trainer, record: dict) -> None:
        if self.lines:
            tqdm.write(evaluation_line(record))
        if trainer.selection.stop:
            patience = trainer.config.patience
            tqdm.write(f"early stop: no better valid bound in {patience} evals")

    def on_train_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def evaluation_line(rec: dict) -> str:
    """The progress line of an evaluation record: samples, then each split's bounds.

    The held-out splits shown are those the record has (valid, test or both), so a run with
    ``--no-eval-test`` shows its validation numbers rather than a blank test column.
    """
    line = f"{rec['samples_seen']:>12,d} samples"
    labels: tuple[tuple[str, str], ...] = (
        ("bound", "bound"),
        ("iwae_bound", "IWAE"),
        ("log_likelihood", "log p(x)"),
    )
    if "train_bound" not in rec:  # an auto-encoder: its reconstruction log p(x|z=mu(x))
        labels = (("reconstruction", "log p(x|mu)"), *labels)
    for key, label in labels:
        if f"train_{key}" in rec:
            line += f"  {label}: train {rec[f'train_{key}']:9.3f}"
            for split in ("valid", "test"):
                if f"{split}_{key}" in rec:
                    line += f" {split} {rec[f'{split}_{key}']:9.3f}"
    return line
