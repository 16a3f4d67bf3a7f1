"""Training on the embedded digits data: learning, determinism, save/load and exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import Crash, assert_same_run, crash_after_checkpoint

import aevb
from aevb import algorithms, runs, training
from aevb.training import eval_schedule

SMALL = dict(latent_dim=5, hidden=50, lr=0.02, progress=False, draw_figures=False)


def test_training_raises_the_test_bound_far_above_initialisation(tmp_path):
    run = aevb.train("digits", tmp_path / "r", budget=60_000, **SMALL)
    first, last = run.metrics[0], run.metrics[-1]
    assert first["samples_seen"] == 0 and last["samples_seen"] == 60_000
    # At N(0, 0.01^2) init every pixel is predicted at 0.5: 64 log 2 = 44.4 nats plus a small KL.
    assert first["test_bound"] == pytest.approx(-64 * torch.log(torch.tensor(2.0)).item(), abs=0.5)
    assert last["test_bound"] > first["test_bound"] + 12.0
    lines = (tmp_path / "r" / runs.METRICS).read_text().splitlines()
    rec = json.loads(lines[-1])
    for key in ("samples_seen", "seconds", "train_bound", "test_bound", "test_bound_se"):
        assert key in rec


def test_same_seed_gives_identical_parameters():
    a = aevb.train("digits", budget=3_000, seed=3, **SMALL).model.state_dict()
    b = aevb.train("digits", budget=3_000, seed=3, **SMALL).model.state_dict()
    c = aevb.train("digits", budget=3_000, seed=4, **SMALL).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_save_load_gives_identical_outputs(tmp_path):
    run = aevb.train("digits", tmp_path / "r", budget=5_000, **SMALL)
    loaded = aevb.load(tmp_path / "r")
    x = torch.rand(7, 64)
    for a, b in zip(run.model.encode(x), loaded.encode(x), strict=True):
        assert torch.equal(a, b)
    z = torch.randn(4, 5)
    assert torch.equal(run.model.decode(z)[0], loaded.decode(z)[0])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(run.model.elbo(x, generator=g1), loaded.elbo(x, generator=g2))


@pytest.mark.parametrize("binarize", ["grey", "dynamic"])
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch, binarize):
    kw = dict(SMALL, budget=12_000, seed=1, binarize=binarize, eval_per_decade=8)
    aevb.train("digits", tmp_path / "full", **kw)

    with crash_after_checkpoint(4), pytest.raises(Crash):  # right after the 4th, mid-run
        aevb.train("digits", tmp_path / "cut", **kw)
    state = runs.load_tensors(tmp_path / "cut" / runs.STATE)[1]
    assert 0 < state["samples_seen"] < 12_000

    aevb.train(resume=tmp_path / "cut", progress=False, draw_figures=False)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_resume_can_extend_the_budget(tmp_path):
    aevb.train("digits", tmp_path / "r", budget=3_000, **SMALL)
    run = aevb.train(resume=tmp_path / "r", budget=6_000, progress=False, draw_figures=False)
    assert run.metrics[-1]["samples_seen"] == 6_000
    assert json.loads((tmp_path / "r" / runs.CONFIG).read_text())["train"]["budget"] == 6_000


def test_lr_auto_tries_the_paper_candidates():
    kw = {k: v for k, v in SMALL.items() if k != "lr"}
    run = aevb.train("digits", budget=2_000, lr="auto", **kw)
    search = run.config["train"]["lr_search"]
    assert set(search["training_bound"]) == {"0.01", "0.02", "0.1"}
    best = max(search["training_bound"], key=search["training_bound"].get)
    assert run.config["train"]["lr"] == float(best) == search["chosen"]


def test_eval_schedule_is_log_spaced_whole_minibatches():
    s = eval_schedule(1_000_000, 100, 4)
    assert s[0] == 0 and s[-1] == 1_000_000
    assert all(v % 100 == 0 for v in s)
    assert all(b > a for a, b in zip(s, s[1:], strict=False))
    ratios = [b / a for a, b in zip(s[3:], s[4:], strict=False)]
    assert max(ratios) < 2.0 and len(s) < 25


def test_epochs_and_weight_prior_options(tmp_path):
    run = aevb.train("digits", epochs=2, **SMALL)
    assert run.metrics[-1]["samples_seen"] == 2 * (1500 // 100) * 100
    with pytest.raises(aevb.ConfigError, match="not both"):
        aevb.train("digits", epochs=2, budget=100, **SMALL)


def test_weight_prior_is_weight_decay_of_one_over_n():
    model = aevb.VAE(aevb.ModelConfig(x_dim=4, latent_dim=2, hidden=3))
    cfg = training.TrainConfig(lr=0.1)
    alg = algorithms.AEVB(model, cfg, n_train=250, lr=0.1)
    assert alg.optimizer.param_groups[0]["weight_decay"] == pytest.approx(1 / 250)
    off = algorithms.AEVB(model, training.TrainConfig(lr=0.1, weight_prior=False), 250, 0.1)
    assert off.optimizer.param_groups[0]["weight_decay"] == 0.0
