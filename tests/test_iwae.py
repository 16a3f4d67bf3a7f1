"""The importance-weighted bound (Burda et al. 2015) as estimator and training objective.

IWAE with K = 1 is estimator A on the same noise; on a trained model the K = 50 bound lies above
the ELBO and below the K = 5 000 importance-sampled log p(x) (paired over test points, in
standard errors); IWAE training logs the ELBO as ``*_bound`` and the IWAE bound as
``*_iwae_bound``, on the autograd step; bad combinations are one-line errors.
"""

from __future__ import annotations

import math

import pytest
import torch

import aevb
from aevb.algorithms import AEVB
from aevb.cli import main
from aevb.data import binarize_tensor, load_dataset
from aevb.estimators import iwae_bound, sgvb_a
from aevb.marginal import importance_sampling
from aevb.model import VAE, ModelConfig
from aevb.training import TrainConfig


@pytest.mark.parametrize("posterior", ["normal", "gumbel", "exponential"])
def test_iwae_with_one_sample_is_estimator_a(posterior):
    torch.manual_seed(0)
    model = VAE(ModelConfig(x_dim=10, latent_dim=3, hidden=7, posterior=posterior)).double()
    x = torch.rand(5, 10, dtype=torch.float64)
    a = sgvb_a(model.encoder, model.decoder, model.prior, x, 1, torch.Generator().manual_seed(4))
    w = model.iwae_bound(x, 1, torch.Generator().manual_seed(4))
    torch.testing.assert_close(w, a, rtol=0, atol=1e-12)
    # and K > 1 is the log-mean-exp of the K log-weights that estimator A averages
    k = 6
    q = model.encoder.posterior(x)
    z = q.rsample(k, torch.Generator().manual_seed(9))
    log_w = model.decoder.log_prob(x, z) + model.prior.log_prob(z) - q.log_prob(z)
    ref = torch.log(torch.exp(log_w).mean(0))
    got = iwae_bound(
        model.encoder, model.decoder, model.prior, x, k, torch.Generator().manual_seed(9)
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert (got >= log_w.mean(0) - 1e-12).all()  # Jensen: above the L = K ELBO on those draws


@pytest.fixture(scope="module")
def trained(small_run):
    """A Laplace-posterior VAE (N_z = 8) on binarized digits: a visible posterior gap."""
    torch.manual_seed(0)
    run = small_run(
        None,
        latent_dim=8,
        hidden=64,
        posterior="laplace",
        prior="normal",
        budget=20_000,
        lr=0.02,
        binarize="static",
        eval_per_decade=1,
        eval_size=100,
    )
    x = binarize_tensor(torch.from_numpy(load_dataset("digits").test[:200]), "static", 1)
    return run.model.eval(), x


def _paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a - b).double()
    return float(d.mean()), float(d.std()) / math.sqrt(len(d))


def test_iwae_lies_between_the_elbo_and_log_px(trained):
    """ELBO (mean log-weight of 5 000 draws) <= IWAE K=50 (20 repeats) <= log p(x) (K = 5 000)."""
    model, x = trained
    res = importance_sampling(model, x, 5000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        iwae = torch.stack([model.iwae_bound(x, 50, g) for _ in range(20)]).mean(0)
    up, up_se = _paired(iwae, res.bound)
    gap, gap_se = _paired(res.log_px, iwae)
    assert up > 4 * up_se, (up, up_se)  # clearly above the ELBO
    assert gap > -3 * gap_se, (gap, gap_se)  # not above log p(x)
    assert gap < up / 4  # K = 50 closes most of the gap


def test_iwae_training_logs_both_bounds_under_their_names(tmp_path, small_run):
    run = small_run(
        tmp_path / "run",
        posterior="laplace",
        latent_dim=2,
        hidden=32,
        estimator="iwae",
        samples=5,
        budget=6_000,
        lr=0.05,
        eval_per_decade=1,
        eval_size=300,
    )
    first, last = run.metrics[0], run.metrics[-1]
    for rec in (first, last):
        assert {"train_bound", "test_bound", "train_iwae_bound", "test_iwae_bound"} <= set(rec)
    assert last["test_iwae_bound"] > first["test_iwae_bound"] + 5  # training raised it
    assert last["test_iwae_bound"] > last["test_bound"]  # K = 5 vs the ELBO, same points
    assert run.config["train"]["estimator"] == "iwae" and run.config["train"]["samples"] == 5
    res = aevb.evaluate(tmp_path / "run", points=100)
    assert res["estimator"] == "B" and res["iwae_samples"] == 5  # ELBO + the run's K
    assert res["iwae_bound"] > res["bound"]


def test_iwae_engines():
    """The MLP with a Gaussian posterior trains IWAE on the fast engine (tests/test_fast_iwae.py);
    other posterior families on autograd, with either encoder gradient."""
    model = VAE(ModelConfig(x_dim=10, latent_dim=2, hidden=8))
    assert AEVB(model, TrainConfig(estimator="iwae", samples=3), 100, 0.01).engine == "fast"
    gumbel = VAE(ModelConfig(x_dim=10, latent_dim=2, hidden=8, posterior="gumbel"))
    for grad in ("standard", "dreg"):
        cfg = TrainConfig(estimator="iwae", samples=3, iwae_gradient=grad)
        alg = AEVB(gumbel, cfg, 100, 0.01)
        assert alg.engine == "autograd" and "Gaussian posterior" in alg.engine_note
        before = [p.detach().clone() for p in gumbel.parameters()]
        bound = alg.step(torch.rand(7, 10), torch.Generator().manual_seed(0))
        assert bound.shape == () and torch.isfinite(bound)
        assert all(not torch.equal(a, p) for a, p in zip(before, gumbel.parameters(), strict=True))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--posterior", "logistic", "--estimator", "B"], "needs an analytic KL(logistic"),
        (["--estimator", "iwae", "--algorithm", "wake-sleep"], "estimator iwae trains AEVB only"),
        (["--posterior", "normal", "--prior", "exponential"], "puts mass on z <= 0"),
        (["--posterior", "gamma"], "invalid choice"),
    ],
)
def test_cli_rejects_bad_combinations(tmp_path, capsys, argv, message):
    try:
        rc = main(["train", "--data", "digits", "--out", str(tmp_path / "r"), *argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.startswith("aevb: error:") and err.count("\n") == 1
