"""Marginal likelihood (aevb.marginal): importance sampling and Appendix D against quadrature.

Reference: for models with 1-D and 2-D latent spaces, log p(x) = log integral p(z) p(x|z) dz by a
Riemann sum on a uniform grid over [-7, 7]^J (log-sum-exp over the grid), written here from the
decoder's logits with its own Bernoulli and prior formulas. For a smooth integrand that decays
inside the box, the uniform-grid sum converges faster than any power of the spacing; we check that
halving the spacing changes no value by more than 1e-4 nats.

Models are trained in the test (digits, static binarization, 30 000 samples). The Appendix D
tolerance is derived below (:func:`appendix_d_tolerance`).
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import aevb
from aevb import cli, marginal
from aevb.data import binarize_tensor, load_dataset
from aevb.errors import ConfigError

N_POINTS = 100


def quadrature(model, x: torch.Tensor, n_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x), ELBO) per point by a Riemann sum over a uniform grid of z (float64)."""
    j = model.config.latent_dim
    g = torch.linspace(-7.0, 7.0, n_grid, dtype=torch.float64)
    z = torch.cartesian_prod(*[g] * j) if j > 1 else g[:, None]
    log_cell = j * math.log(float(g[1] - g[0]))
    with torch.no_grad():
        logits = model.decoder(z.float())[0].double()
        mu, logvar = (t.double() for t in model.encoder(x))
    log_prior = -0.5 * (j * math.log(2 * math.pi) + (z**2).sum(-1))
    log_norm = F.softplus(logits).sum(-1)
    log_px, elbo = [], []
    for i in range(0, len(x), 10):  # 10 points at a time bounds memory
        # log p(x, z) = sum_d [x_d l_d - log(1 + e^l_d)] + log p(z)
        log_joint = x[i : i + 10].double() @ logits.T - log_norm + log_prior
        log_px.append(torch.logsumexp(log_joint + log_cell, 1))
        # ELBO = E_q[log p(x, z) - log q(z|x)] on the same grid (q is narrower than the prior)
        m, lv = mu[i : i + 10, None], logvar[i : i + 10, None]
        log_q = -0.5 * (math.log(2 * math.pi) + lv + (z - m) ** 2 * torch.exp(-lv)).sum(-1)
        elbo.append((torch.softmax(log_q, 1) * (log_joint - log_q)).sum(1))
    return torch.cat(log_px), torch.cat(elbo)


@pytest.fixture(scope="module", params=[1, 2], ids=["z1", "z2"])
def trained(request, small_run):
    """A VAE with a J-D latent space trained on binarized digits, test points and quadrature."""
    j = request.param
    torch.manual_seed(0)
    run = small_run(
        None,
        latent_dim=j,
        hidden=64,
        budget=30_000,
        lr=0.02,
        binarize="static",
        eval_per_decade=1,
        eval_size=100,
    )
    model = run.model.eval()
    x = binarize_tensor(torch.from_numpy(load_dataset("digits").test[:N_POINTS]), "static", 1)
    n_grid = 6001 if j == 1 else 281
    ref, elbo = quadrature(model, x, n_grid)
    ref_fine, _ = quadrature(model, x, 2 * n_grid - 1)
    assert float((ref - ref_fine).abs().max()) < 1e-4  # the reference has converged
    assert bool((ref >= elbo - 1e-6).all())  # log p(x) >= ELBO, exactly
    return model, x, ref, elbo


def test_importance_sampling_matches_quadrature(trained):
    model, x, ref, elbo = trained
    res = marginal.importance_sampling(model, x, 5000, generator=torch.Generator().manual_seed(1))
    diff = res.log_px.double() - ref
    assert float(diff.abs().mean()) < 0.05
    assert res.log_px.shape == res.ess.shape == res.bound.shape == (N_POINTS,)
    assert bool(((res.ess >= 1.0) & (res.ess <= 5000 * (1 + 1e-4))).all())
    # the mean log-weight is the ELBO on the same draws (its standard error ~ 1e-2 / sqrt(5000))
    assert float((res.bound.double() - elbo).abs().mean()) < 0.01


def test_chunking_does_not_change_the_estimate(trained):
    """A tiny chunk (odd sizes, several point batches) gives the same estimate within noise."""
    model, x, ref, _ = trained
    g = torch.Generator().manual_seed(2)
    res = marginal.importance_sampling(model, x[:10], 1001, chunk_size=37, generator=g)
    assert float((res.log_px.double() - ref[:10]).abs().mean()) < 0.05
    assert res.samples == 1001 and res.chunk_size == 37


def test_worker_threads_give_identical_results(trained):
    model, x, _, _ = trained
    a, b = (
        marginal.importance_sampling(
            model, x[:40], 300, workers=w, generator=torch.Generator().manual_seed(11)
        )
        for w in (1, 3)
    )
    torch.testing.assert_close(a.log_px, b.log_px)
    torch.testing.assert_close(a.ess, b.ess)
    h1, h2 = (
        marginal.hmc_marginal(
            model,
            x[:40],
            warmup=60,
            batch_size=15,
            workers=w,
            generator=torch.Generator().manual_seed(12),
        )
        for w in (1, 2)
    )
    torch.testing.assert_close(h1.log_px, h2.log_px)
    assert torch.get_num_threads() == 1  # restored (this module runs single-threaded)


def test_is_is_above_the_bound_in_expectation_and_converges(trained):
    """E[log p_K] >= ELBO per point, and the gap to quadrature shrinks as K grows.

    The proposal is the trained encoder widened (log-variance + 1.5) and shifted (mean + 0.5 s.d.),
    so that the gaps are large enough to see: with the trained encoder itself they are ~0.01 nats.
    """
    model, x, ref, _ = trained
    x, ref = x[:50], ref[:50]
    bad = copy.deepcopy(model)
    j = model.config.latent_dim
    with torch.no_grad():
        bad.encoder.net.head.bias[j:] += 1.5
    _, elbo_bad = quadrature(bad, x, 6001 if j == 1 else 281)
    g = torch.Generator().manual_seed(3)
    reps = 8
    gaps, gap_se = [], []
    for k in (1, 10, 100, 1000):
        est = torch.stack(
            [marginal.importance_sampling(bad, x, k, generator=g).log_px for _ in range(reps)]
        ).double()  # (reps, N)
        mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
        # per point, the estimate's expectation is at least the bound: no point is 4.5 s.e. below
        assert bool((mean - elbo_bad >= -4.5 * se - 1e-6).all()), k
        gap = ref - est  # (reps, N)
        gaps.append(float(gap.mean()))
        gap_se.append(float(gap.mean(1).std() / math.sqrt(reps)))
    assert gaps[0] > 0.3  # the widened proposal has a clear gap at K = 1
    for i in range(3):  # the gap shrinks with K, beyond noise, until it is within noise of 0
        assert gaps[i + 1] < gaps[i] + 3 * (gap_se[i] + gap_se[i + 1]), gaps
        if gaps[i] > 0.01 + 3 * gap_se[i]:
            assert gaps[i + 1] < gaps[i] - 3 * (gap_se[i] + gap_se[i + 1]), gaps
    assert abs(gaps[-1]) < 0.05, gaps


def appendix_d_tolerance(diff: torch.Tensor) -> float:
    """Tolerance on mean(log p_hat - log p) over points for the Appendix D estimator.

    Per point, log p_hat = -log(Y) with Y the mean of L weights q(z)/p(x, z), z ~ p(z|x), and
    E[Y] = 1/p(x) exactly. The delta method gives E[log p_hat] - log p(x) ~= Var(log p_hat) / 2
    (an upward bias, whatever the autocorrelation of the chain) and a spread Var(log p_hat). Over n
    independent points, the mean error is then within bias + 4 standard errors, with the bias
    bounded by mean(diff^2) / 2 and the standard error by sd(diff) / sqrt(n).
    """
    n = diff.numel()
    return float((diff**2).mean() / 2 + 4 * diff.std() / math.sqrt(n))


def test_appendix_d_estimator_matches_quadrature(trained):
    """The paper's defaults: 50 posterior samples per point, 4 leapfrog steps."""
    model, x, ref, _ = trained
    res = marginal.hmc_marginal(model, x, generator=torch.Generator().manual_seed(4))
    diff = res.log_px.double() - ref
    tol = appendix_d_tolerance(diff)
    assert abs(float(diff.mean())) < tol, (float(diff.mean()), tol)
    # and the tolerance is not vacuous: per-point errors are small
    assert tol < 0.15 and float(diff.abs().median()) < 0.1
    assert abs(float(res.accept_rate.mean()) - 0.9) < 0.05
    assert res.settings["posterior_samples"] == 50 and res.settings["leapfrog_steps"] == 4
    assert bool((res.ess <= 50 * (1 + 1e-4)).all()) and bool((res.rel_var >= -1e-6).all())


def test_log_joint_matches_the_decoder_and_prior(trained):
    """The fast Bernoulli path equals the library's stable cross-entropy form."""
    model, x, _, _ = trained
    z = torch.randn(
        (3, len(x), model.config.latent_dim), generator=torch.Generator().manual_seed(9)
    )
    with torch.no_grad():
        ref = model.prior.log_prob(z) + model.decoder.log_prob(x, z)
        torch.testing.assert_close(marginal.log_joint(model, x, z), ref, rtol=1e-5, atol=1e-4)


def test_streaming_log_mean_exp_matches_direct():
    g = torch.Generator().manual_seed(5)
    lw = 30.0 * torch.randn((1000, 7), generator=g, dtype=torch.float64) - 100.0
    acc = marginal.LogMeanExp()
    for i in range(0, 1000, 37):
        acc.add(lw[i : i + 37])
    torch.testing.assert_close(acc.log_mean, torch.logsumexp(lw, 0) - math.log(1000))
    w = torch.exp(lw - lw.max(0).values)
    torch.testing.assert_close(acc.ess, w.sum(0) ** 2 / (w**2).sum(0))
    torch.testing.assert_close(acc.mean_log, lw.mean(0))


def test_gaussian_fit_matches_torch_multivariate_normal():
    g = torch.Generator().manual_seed(6)
    s = torch.randn((50, 4, 3), generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 0.2]], dtype=torch.float64
    )
    fit = marginal.GaussianFit(s, ridge=0.0)
    z = torch.randn((9, 4, 3), generator=g, dtype=torch.float64)
    for b in range(4):
        ref = torch.distributions.MultivariateNormal(s[:, b].mean(0), torch.cov(s[:, b].T))
        torch.testing.assert_close(fit.log_prob(z)[:, b], ref.log_prob(z[:, b]))


def test_model_log_likelihood_delegates(trained):
    model, x, ref, _ = trained
    a = model.log_likelihood(
        x[:10].numpy(), samples=500, generator=torch.Generator().manual_seed(7)
    )
    b = marginal.importance_sampling(model, x[:10], 500, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b.log_px)
    h = model.log_likelihood(x[:10], "hmc", warmup=100, generator=torch.Generator().manual_seed(8))
    assert float((h.double() - ref[:10]).abs().mean()) < 0.2
    with pytest.raises(ConfigError, match="unknown marginal"):
        model.log_likelihood(x, "exact")
    with pytest.raises(ConfigError, match="only apply"):
        model.log_likelihood(x, "is", warmup=3)
    with pytest.raises(ConfigError, match="positive"):
        model.log_likelihood(x, "is", samples=-1)


# --------------------------------------------------------------------------- API and CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_run):
    out = tmp_path_factory.mktemp("runs") / "z2"
    small_run(out, latent_dim=2, hidden=32, budget=5_000, lr=0.02, eval_per_decade=1, eval_size=100)
    return out


def test_api_evaluate_both(run_dir):
    res = aevb.evaluate(
        run_dir,
        marginal="both",
        points=40,
        importance_samples=300,
        hmc_samples=20,
        hmc_warmup=60,
        progress=False,
    )
    assert res["points"] == 40
    is_, hmc_ = res["marginal"]["is"], res["marginal"]["hmc"]
    assert is_["importance_samples"] == 300 and hmc_["posterior_samples"] == 20
    for r in (is_, hmc_):
        assert math.isfinite(r["log_likelihood"]) and r["se"] > 0
        # log p(x) is above the bound on the same points (the gap's s.e. is the paired one)
        assert r["log_likelihood"] - res["bound"] > -4 * r["gap_se"]
    assert abs(is_["log_likelihood"] - hmc_["log_likelihood"]) < 0.5
    assert 0 < is_["ess_mean"] <= 300
    # the bound is on the same 40 points: it matches a plain evaluation restricted to them
    plain = aevb.evaluate(run_dir, points=40, samples=200)
    assert abs(plain["bound"] - res["bound"]) < 4 * res["bound_se"]


def test_cli_evaluate_marginal_json(run_dir, capsys):
    rc = cli.main(
        [
            "evaluate",
            str(run_dir),
            "--marginal",
            "is",
            "--importance-samples",
            "200",
            "--points",
            "25",
            "--spread",
            "--json",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["points"] == 25 and res["points_spread"] and set(res["marginal"]) == {"is"}
    assert res["marginal"]["is"]["importance_samples"] == 200
    rc = cli.main(["evaluate", str(run_dir), "--marginal", "is", "--importance-samples", "50"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "log p(x)" in out and "K=50" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--marginal", "exact"], "invalid choice"),
        (["--marginal", "is", "--importance-samples", "0"], "positive integer"),
        (["--marginal", "hmc", "--points", "-3"], "positive integer"),
        (["--marginal", "hmc", "--target-accept", "1.5"], "target"),
    ],
)
def test_cli_rejects_bad_marginal_options(run_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        rc = cli.main(["evaluate", str(run_dir), *argv])
        raise SystemExit(rc)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("aevb: error:") and message in err and err.count("\n") == 1


def test_spread_points(run_dir):
    """--spread takes N points evenly spaced through the split; N = all is the whole split."""
    n = len(load_dataset("digits").test)
    full = aevb.evaluate(run_dir, points=n)
    spread = aevb.evaluate(run_dir, points=n, spread=True)
    assert spread["bound"] == full["bound"] and spread["points_spread"]
    first = aevb.evaluate(run_dir, points=3)
    assert aevb.evaluate(run_dir, points=3, spread=True)["bound"] != first["bound"]


def test_points_larger_than_the_split_is_an_error(run_dir):
    with pytest.raises(ConfigError, match="points"):
        aevb.evaluate(run_dir, marginal="is", points=10**6)
    assert np.isfinite(aevb.evaluate(run_dir, points=5)["bound"])
