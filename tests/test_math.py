"""The math against independent references: Monte Carlo KL, quadrature, finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from aevb.distributions import (
    DiagonalNormal,
    StandardNormal,
    bernoulli_log_prob,
    gaussian_log_prob,
    kl_divergence,
)
from aevb.estimators import elbo, sgvb_a, sgvb_b
from aevb.model import VAE, ModelConfig


def _random_model(x_dim=6, z_dim=1, hidden=8, likelihood="bernoulli", seed=0, scale=0.7):
    torch.manual_seed(seed)
    m = VAE(ModelConfig(x_dim=x_dim, latent_dim=z_dim, hidden=hidden, likelihood=likelihood))
    m.init_parameters(scale, torch.Generator().manual_seed(seed))
    return m.double()


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.5
    q, p = DiagonalNormal(mu, logvar), StandardNormal(3)
    z = q.rsample(200_000, g)
    samples = q.log_prob(z) - p.log_prob(z)  # (S, 5)
    mc, se = samples.mean(0), samples.std(0) / math.sqrt(len(samples))
    exact = kl_divergence(q, p)
    assert torch.all((mc - exact).abs() < 4 * se), (mc, exact, se)
    # And a wrong KL (dropping the log-variance term) is caught by the same check.
    wrong = -0.5 * (1.0 - mu**2 - torch.exp(logvar)).sum(-1)
    assert torch.any((mc - wrong).abs() > 4 * se)


def test_normal_normal_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(2)
    q = DiagonalNormal(torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g) * 0.3)
    p = DiagonalNormal(torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g) * 0.3)
    z = q.rsample(200_000, g)
    s = (q.log_prob(z) - p.log_prob(z)).double()
    assert torch.all((s.mean(0) - kl_divergence(q, p)).abs() < 4 * s.std(0) / math.sqrt(len(s)))


def test_log_densities_match_torch_distributions():
    g = torch.Generator().manual_seed(3)
    logits, x = torch.randn(7, 5, generator=g), torch.rand(7, 5, generator=g).round()
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    assert torch.allclose(bernoulli_log_prob(logits, x), ref, atol=1e-5)
    mean, logvar, y = (
        torch.rand(7, 5, generator=g),
        torch.randn(7, 5, generator=g),
        torch.rand(7, 5),
    )
    ref = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(y).sum(-1)
    assert torch.allclose(gaussian_log_prob(mean, logvar, y), ref, atol=1e-5)
    # The stable form stays finite where sigmoid saturates.
    big = torch.tensor([[80.0, -80.0]])
    assert torch.isfinite(bernoulli_log_prob(big, torch.tensor([[0.0, 1.0]]))).all()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_estimators_agree_in_expectation_and_b_has_lower_variance(likelihood):
    m = _random_model(x_dim=10, z_dim=3, likelihood=likelihood)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 10, generator=g, dtype=torch.float64)
    if likelihood == "bernoulli":
        x = x.round()
    enc, dec, prior = m.encoder, m.decoder, m.prior
    with torch.no_grad():
        xs = x.repeat(20_000, 1)  # 20 000 independent L=1 estimates per point
        a = sgvb_a(enc, dec, prior, xs, 1, g).view(20_000, 4)
        b = sgvb_b(enc, dec, prior, xs, 1, g).view(20_000, 4)
    se = torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    assert torch.all((a.mean(0) - b.mean(0)).abs() < 4 * se)
    assert torch.all(b.var(0) < a.var(0))


def _quadrature_1d(m: VAE, x: torch.Tensor, n: int = 40001, lim: float = 20.0):
    """log p(x) and the exact posterior on a grid of z (1-D latent space), by the trapezoid rule."""
    z = torch.linspace(-lim, lim, n, dtype=torch.float64).unsqueeze(-1)  # (n, 1)
    dz = 2 * lim / (n - 1)
    with torch.no_grad():
        log_joint = m.decoder.log_prob(x, z.unsqueeze(1)) + m.prior.log_prob(z).unsqueeze(1)
    w = torch.full((n, 1), math.log(dz), dtype=torch.float64)
    w[0] = w[-1] = math.log(dz / 2)
    log_px = torch.logsumexp(log_joint + w, 0)
    return z, log_joint, log_px, w


def test_bound_below_quadrature_log_likelihood_and_gap_is_posterior_kl():
    m = _random_model(x_dim=6, z_dim=1, hidden=8, scale=0.6)
    x = torch.tensor(
        [[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.float64
    )
    z, log_joint, log_px, w = _quadrature_1d(m, x)
    # The exact bound E_q[log p(x,z) - log q(z|x)] by the same quadrature.
    with torch.no_grad():
        q = m.encoder.posterior(x)
    log_q = q.log_prob(z.unsqueeze(1))  # (n, B)
    qz = torch.exp(log_q + w)
    exact_bound = (qz * (log_joint - log_q)).sum(0)
    # Gap = KL(q(z|x) || p(z|x)), with log p(z|x) = log p(x,z) - log p(x).
    kl_post = (qz * (log_q - (log_joint - log_px))).sum(0)
    assert torch.all(exact_bound <= log_px)
    assert torch.allclose(log_px - exact_bound, kl_post, atol=1e-6)
    assert torch.all(kl_post > 1e-3)  # a non-trivial gap: the test can see a wrong sign
    # The model's estimator B with many samples agrees with the quadrature bound.
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        est = elbo(m.encoder, m.decoder, m.prior, x, "B", 200_000, g)
    assert torch.allclose(est, exact_bound, atol=0.01)


def test_reparameterized_gradients_match_finite_differences():
    m = _random_model(x_dim=5, z_dim=2, hidden=4, likelihood="gaussian", scale=0.5)
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    eps = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def bound() -> torch.Tensor:
        # Fixed noise: the reparameterized estimate is then a deterministic function of the params.
        q = m.encoder.posterior(x)
        z = q.mu + q.std * eps
        return (m.decoder.log_prob(x, z).mean(0) - kl_divergence(q, m.prior)).sum()

    params = list(m.parameters())
    grads = torch.autograd.grad(bound(), params)
    h = 1e-6
    with torch.no_grad():
        for p, gp in zip(params, grads, strict=True):
            flat, gflat = p.view(-1), gp.reshape(-1)
            for i in range(0, flat.numel(), max(1, flat.numel() // 5)):
                old = flat[i].item()
                flat[i] = old + h
                up = bound().item()
                flat[i] = old - h
                down = bound().item()
                flat[i] = old
                fd = (up - down) / (2 * h)
                assert abs(fd - gflat[i].item()) <= 1e-6 * max(1.0, abs(fd)), (p.shape, i)
