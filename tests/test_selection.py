"""Model selection (aevb.selection): keeping the best model by the validation bound, and early
stopping after ``patience`` evaluations without progress (conftest's ``overfit_run``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import OVERFIT_TRAIN

import aevb
from aevb import runs, selection
from aevb.algorithms import AEVB
from aevb.data import load_dataset
from aevb.errors import ConfigError
from aevb.model import VAE
from aevb.training import TrainConfig, Trainer


def _reevaluate(run_dir: Path, samples_seen: int, model: VAE) -> dict:
    """The Trainer's own evaluation of ``model`` as at ``samples_seen``, on the run's data."""
    cfg = runs.read_config(run_dir)
    tcfg = TrainConfig(**cfg["train"])
    ds = load_dataset(cfg["data"]["spec"], validation=True)
    tx, vx, sx = (torch.from_numpy(a) for a in (ds.train, ds.split("valid"), ds.test))
    alg = AEVB(model, tcfg, len(tx), float(tcfg.lr))
    t = Trainer(alg, tx, sx, tcfg, progress=False, evaluate_points=False, valid_x=vx)
    t.step_count = samples_seen // tcfg.batch_size
    return t.evaluate()


def test_best_checkpoint_has_the_best_validation_bound(overfit_run):
    recs = runs.read_metrics(overfit_run)
    valid = [r["valid_bound"] for r in recs]
    best = recs[int(np.argmax(valid))]
    # the run overfits: its validation bound peaks before the end (so "best" is not "last")
    assert best["samples_seen"] < recs[-1]["samples_seen"]
    assert max(valid) > valid[-1] + 0.5
    _, meta = runs.load_tensors(overfit_run / selection.BEST_MODEL)
    assert meta["samples_seen"] == best["samples_seen"]
    model = aevb.load(overfit_run, which="best")
    again = _reevaluate(overfit_run, best["samples_seen"], model)
    assert again["valid_bound"] == best["valid_bound"]  # the very model that scored it
    last = aevb.load(overfit_run)
    assert _reevaluate(overfit_run, best["samples_seen"], last)["valid_bound"] < max(valid)
    res_best = aevb.evaluate(overfit_run, "valid", model="best", samples=10)
    res_last = aevb.evaluate(overfit_run, "valid", samples=10)
    assert res_best["model"] == "best" and res_best["bound"] > res_last["bound"]


def test_keep_best_needs_a_validation_split(small_run, overfit_npz):
    with pytest.raises(ConfigError, match="--validation"):
        small_run(data=str(overfit_npz), keep="best", budget=1000)
    with pytest.raises(ConfigError, match="--validation"):
        small_run(data=str(overfit_npz), patience=3, budget=1000)


def test_early_stopping_stops_after_patience(tmp_path, small_run, overfit_npz, overfit_run):
    full = runs.read_metrics(overfit_run)
    patience = 3
    out = tmp_path / "es"
    run = small_run(out, data=str(overfit_npz), **OVERFIT_TRAIN, patience=patience)
    recs = run.metrics
    valid = [r["valid_bound"] for r in recs]
    assert recs[-1]["samples_seen"] < 60_000  # it stopped early
    i_best = int(np.argmax(valid))
    # exactly `patience` evaluations without progress, counted after the first epoch (60 rows)
    assert sum(r["samples_seen"] >= 60 for r in recs[i_best + 1 :]) == patience
    assert all(v <= valid[i_best] for v in valid[i_best + 1 :])
    # the same trajectory as the run without early stopping, up to the stop
    assert [r["valid_bound"] for r in full[: len(recs)]] == valid
    # resuming a stopped run trains no further
    again = aevb.train(resume=out, progress=False, draw_figures=False)
    assert again.metrics[-1]["samples_seen"] == recs[-1]["samples_seen"]


def test_iwae_runs_select_on_the_validation_iwae_bound(tmp_path, small_run, overfit_npz):
    """A run trained on the IWAE bound keeps the model with the best validation IWAE bound (the
    bound it maximises), not the best ELBO; the selection's state says which it tracked."""
    kw = {**OVERFIT_TRAIN, "budget": 20_000, "estimator": "iwae", "samples": 3}
    small_run(tmp_path / "r", data=str(overfit_npz), **kw, keep="best")
    recs = runs.read_metrics(tmp_path / "r")
    best = max(recs, key=lambda r: r["valid_iwae_bound"])
    _, meta = runs.load_tensors(tmp_path / "r" / selection.BEST_MODEL)
    assert meta["samples_seen"] == best["samples_seen"]
    assert meta["valid_iwae_bound"] == best["valid_iwae_bound"]
    assert selection.metric_for("iwae") == "valid_iwae_bound"
    assert selection.metric_for("B") == "valid_bound"
