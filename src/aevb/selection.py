"""Model selection on a validation split: keep the best model, stop early on a patience.

At every evaluation the Trainer hands the record to :class:`Selection`. With ``keep="best"`` the
model whose validation bound is the highest so far (``valid_bound``; for runs trained on the
IWAE bound, ``valid_iwae_bound``, the bound they maximise: :func:`metric_for`) is written to
``best_model.safetensors`` beside the run's last ``model.safetensors``; with ``patience`` = P the
run stops after P evaluations in a row without a better validation bound. Evaluations are
log-spaced, dense at the start, where the bound of a freshly initialised model often dips before
it climbs; so only evaluations after the first epoch (``grace`` samples) count towards P. The
state (best bound, where, evaluations since) travels in the training checkpoint, so resume
continues it exactly.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from . import runs

BEST_MODEL = "best_model.safetensors"
METRIC = "valid_bound"


def metric_for(estimator: str | None) -> str:
    """The validation bound a run selects on: the IWAE bound for runs trained on it, else the
    ELBO."""
    return "valid_iwae_bound" if estimator == "iwae" else METRIC


class Selection:
    """Tracks the best validation bound of a run; saves the best model; decides early stopping."""

    def __init__(
        self,
        run_dir: Path | None,
        keep: str = "last",
        patience: int | None = None,
        grace: int = 0,
        metric: str = METRIC,
    ) -> None:
        self.run_dir = run_dir
        self.metric = metric
        self.keep = keep
        self.patience = patience
        self.grace = grace
        self.best: float | None = None
        self.best_samples: int | None = None
        self.since_best = 0
        self.stop = False

    def update(self, record: dict, model: nn.Module) -> bool:
        """Account for one evaluation record; True when it is the best so far."""
        value = record.get(self.metric)
        if value is None:
            return False
        if self.best is None or value > self.best:
            self.best, self.best_samples, self.since_best = float(value), record["samples_seen"], 0
            if self.keep == "best" and self.run_dir is not None:
                runs.save_tensors(
                    self.run_dir / BEST_MODEL,
                    {k: v.detach().clone() for k, v in model.state_dict().items()},
                    {"samples_seen": self.best_samples, self.metric: self.best},
                )
            return True
        if record["samples_seen"] < self.grace:
            return False
        self.since_best += 1
        if self.patience is not None and self.since_best >= self.patience:
            self.stop = True
        return False

    def state(self) -> dict:
        return {
            "best": self.best,
            "best_samples": self.best_samples,
            "since_best": self.since_best,
            "stop": self.stop,
            "metric": self.metric,
        }

    def load_state(self, state: dict | None) -> None:
        if state and state.get("metric", METRIC) == self.metric:
            self.best = state.get("best")
            self.best_samples = state.get("best_samples")
            self.since_best = int(state.get("since_best", 0))
            self.stop = bool(state.get("stop", False))
