"""The KL weight (``kl_beta``, ``kl_warmup``): beta = 1 is the plain run bit for bit, the fast
engine's weighted gradient equals autograd's, and the recorded bounds stay the beta = 1 bound."""

from __future__ import annotations

import pytest
import torch
from fast_checks import make_model

import aevb
from aevb import algorithms, api, runs
from aevb.algorithms import AEVB
from aevb.data import load_dataset
from aevb.errors import ConfigError
from aevb.fast import FastStep
from aevb.training import TrainConfig, Trainer


def test_beta_one_reproduces_the_plain_run_exactly(small_run):
    for engine_kw in ({}, {"depth": 0}):  # the fast engine, and an autograd model (depth 0)
        plain = small_run(budget=3000, seed=2, **engine_kw)
        beta1 = small_run(budget=3000, seed=2, kl_beta=1.0, **engine_kw)
        a, b = plain.model.state_dict(), beta1.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)

        def drop_time(recs):
            return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]

        assert drop_time(plain.metrics) == drop_time(beta1.metrics)
        assert "kl_weight" not in beta1.metrics[-1]


@pytest.mark.parametrize("estimator", ["A", "B"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fast_kl_weight_matches_autograd(estimator, likelihood):
    model = make_model(likelihood)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(12, 30, generator=g, dtype=torch.float64)
    if likelihood == "bernoulli":
        x = (x > 0.6).double()
    beta = 0.3
    rec, kl = model.elbo_terms(x, estimator, 2, torch.Generator().manual_seed(5))
    (beta * kl - rec).mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref_bound = float((rec - kl).mean().detach())
    model.zero_grad(set_to_none=True)
    opt = algorithms.make_optimizer(model.parameters(), "adagrad", 0.01, 0.0)
    fast = FastStep(model, opt, estimator, 2)
    bound = fast.gradients(x, torch.Generator().manual_seed(5), kl_weight=beta)
    assert abs(float(bound) - ref_bound) < 1e-10 * abs(ref_bound)  # the beta = 1 bound
    for name, grad in fast.named_gradients().items():
        err = float((grad - ref[name]).norm() / ref[name].norm())
        assert err < 1e-10, (name, err)
    # and beta = 1 is the plain gradient, bit for bit
    fast.gradients(x, torch.Generator().manual_seed(5))
    plain = {k: v.clone() for k, v in fast.named_gradients().items()}
    fast.gradients(x, torch.Generator().manual_seed(5), kl_weight=1.0)
    assert all(torch.equal(plain[k], v) for k, v in fast.named_gradients().items())


def test_warmup_run_reports_the_true_bound(tmp_path, small_run):
    run = small_run(tmp_path / "w", budget=6000, kl_warmup=10_000, eval_per_decade=2)
    recs = run.metrics
    weights = [r["kl_weight"] for r in recs]
    assert weights[0] == 0.0 and all(0 < w < 1 for w in weights[1:])
    assert weights == sorted(weights)
    assert recs[-1]["kl_weight"] == pytest.approx(6000 / 10_000)
    cfg = runs.read_config(tmp_path / "w")
    assert cfg["train"]["kl_warmup"] == 10_000
    # the recorded bounds are the beta = 1 bound of the model at that point
    tcfg = TrainConfig(**{**cfg["train"], "kl_warmup": None})  # a plain config, same seed
    ds = load_dataset("digits")
    tx, sx = torch.from_numpy(ds.train), torch.from_numpy(ds.test)
    model = aevb.load(tmp_path / "w")
    t = Trainer(AEVB(model, tcfg, len(tx), 0.02), tx, sx, tcfg, progress=False)
    t.step_count = 6000 // tcfg.batch_size
    again = t.evaluate()
    assert again["test_bound"] == recs[-1]["test_bound"]
    assert again["train_bound"] == recs[-1]["train_bound"]
    # the figure is marked
    assert "KL warm-up" in api.kl_mark(cfg["train"])
    # and the value a weighted step returns is the beta = 1 bound of its minibatch
    m = make_model()
    c = TrainConfig(kl_beta=0.0, lr=0.01, estimator="B", engine="autograd")
    alg = AEVB(m, c, 100, 0.01)
    x = torch.rand(8, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) > 0.5
    with torch.no_grad():
        expect = float(m.elbo(x.double(), "B", 1, torch.Generator().manual_seed(9)).mean())
    got = float(alg.step(x.double(), torch.Generator().manual_seed(9)))
    assert got == pytest.approx(expect, rel=1e-12)


def test_kl_weight_is_rejected_where_it_does_not_apply():
    with pytest.raises(ConfigError, match="kl"):
        TrainConfig(algorithm="aevb", estimator="score-function", kl_beta=0.5)
    TrainConfig(algorithm="aevb", estimator="iwae", kl_beta=0.5)  # tests/test_fast_iwae.py
    with pytest.raises(ConfigError, match="kl-beta"):
        TrainConfig(kl_beta=-1.0)
