"""Batched HMC (aevb.hmc): invariance of a known Gaussian, step-size adaptation, gradients in z.

Tolerances are standard errors of moments over independent chains: for n i.i.d. draws of a
Gaussian, se(mean_i) = sqrt(S_ii / n) and se(cov_ij) = sqrt((S_ii S_jj + S_ij^2) / n). We allow
4.5 standard errors per moment (about 15 moments per test, fixed seeds).
"""

from __future__ import annotations

import math

import pytest
import torch

from aevb import hmc

MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
COV = (
    torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.25]], dtype=torch.float64) * 4.0
)
PREC = torch.linalg.inv(COV)


def gaussian_log_prob(z: torch.Tensor) -> torch.Tensor:
    d = z - MEAN
    return -0.5 * torch.einsum("...i,ij,...j->...", d, PREC, d)


def exact_draws(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((n, 3), generator=g, dtype=torch.float64)
    return MEAN + eps @ torch.linalg.cholesky(COV).T


def assert_moments(z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, k: float = 4.5):
    n = z.shape[0]
    var = torch.diagonal(cov)
    se_mean = torch.sqrt(var / n)
    dev = (z.mean(0) - mean).abs() / se_mean
    assert bool((dev < k).all()), f"means off by {dev.tolist()} standard errors"
    c = torch.cov(z.T)
    se_cov = torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    dev_c = (c - cov).abs() / se_cov
    assert bool((dev_c < k).all()), f"covariances off by {dev_c.max().item():.2f} standard errors"


def test_hmc_leaves_gaussian_invariant():
    """Chains started at exact draws stay exactly distributed after many fixed-step transitions.

    Step sizes up to 1.1 (leapfrog is stable below twice the smallest scale, 0.57) make the energy
    error large, so the moments are only right if the Metropolis correction is: without it the
    variances inflate by many standard errors.
    """
    n = 6000
    z0 = exact_draws(n, 1)
    g = torch.Generator().manual_seed(2)
    eps = 0.2 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    res = hmc.sample(
        gaussian_log_prob, z0, 1, n_warmup=0, step_size=eps, adapt=False, thin=15, generator=g
    )
    assert res.samples.shape == (1, n, 3)
    assert torch.equal(res.step_size, eps)
    # the test has power: many proposals are rejected, but the chains did move
    assert 0.3 < res.mean_accept_rate < 0.95
    assert float((res.z - z0).abs().sum(-1).gt(0).double().mean()) > 0.95
    assert_moments(res.z, MEAN, COV)


def test_hmc_converges_from_overdispersed_start_with_adaptation():
    n = 4000
    g = torch.Generator().manual_seed(3)
    z0 = MEAN + 10.0 * torch.randn((n, 3), generator=g, dtype=torch.float64)
    res = hmc.sample(gaussian_log_prob, z0, 1, n_warmup=200, thin=10, generator=g)
    assert_moments(res.z, MEAN, COV)


@pytest.mark.parametrize("target", [0.9, 0.65])
def test_adapted_step_sizes_reach_target_acceptance(target):
    """Per-chain scales span three decades; every chain's own step size must adapt to it."""
    n = 2000
    g = torch.Generator().manual_seed(4)
    scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-3.5, 3.5, generator=g))

    def log_prob(z):  # N(0, scale^2 I) in 4-D, a different scale per chain
        return -0.5 * ((z / scale[:, None]) ** 2).sum(-1)

    z0 = scale[:, None] * torch.randn((n, 4), generator=g, dtype=torch.float64)
    res = hmc.sample(
        log_prob, z0, 200, n_warmup=300, step_size=0.1, target_accept=target, generator=g
    )
    acc = res.accept_rate
    assert abs(float(acc.mean()) - target) < 0.05
    assert abs(float(acc.median()) - target) < 0.05
    # each chain's acceptance over 200 transitions: the bulk is near the target
    assert float(((acc - target).abs() < 0.1).double().mean()) > 0.9
    ratio = res.step_size / scale  # the step size follows the chain's own scale
    assert float(ratio.max() / ratio.min()) < 3.0
    # and the draws are right (per-chain standardised)
    std = res.samples / scale[:, None]
    assert abs(float(std.mean())) < 4.5 / math.sqrt(std.numel() / 10)
    assert abs(float(std.var()) - 1.0) < 0.05


def test_gradients_are_taken_with_respect_to_z_only():
    lin = torch.nn.Linear(2, 1)

    def log_prob(z):
        return -0.5 * (z**2).sum(-1) + 0.1 * lin(z).squeeze(-1)

    with torch.no_grad():  # sampling must work even inside no_grad
        res = hmc.sample(log_prob, torch.zeros(50, 2), 5, n_warmup=5)
    assert all(p.grad is None for p in lin.parameters())
    assert res.samples.shape == (5, 50, 2)
    assert res.log_prob.shape == (5, 50)
    torch.testing.assert_close(res.log_prob[-1], log_prob(res.z).detach())


def test_leapfrog_is_reversible_and_second_order():
    z = exact_draws(100, 5)
    p = torch.randn(z.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    lp, grad = hmc.log_prob_and_grad(gaussian_log_prob, z)
    h0 = -lp + 0.5 * (p * p).sum(-1)
    errors = []
    for eps, n in ((0.05, 20), (0.025, 40)):  # the same trajectory length
        e = torch.full((100,), eps, dtype=torch.float64)
        z1, p1, lp1, grad1 = hmc.leapfrog(gaussian_log_prob, z, p, grad, e, n)
        errors.append((-lp1 + 0.5 * (p1 * p1).sum(-1) - h0).abs().mean())
        z2, p2, _, _ = hmc.leapfrog(gaussian_log_prob, z1, -p1, grad1, e, n)
        torch.testing.assert_close(z2, z)
        torch.testing.assert_close(-p2, p)
    # leapfrog's energy error is O(eps^2): halving the step quarters it
    assert 3.5 < float(errors[0] / errors[1]) < 4.5
    assert float(errors[0]) < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError, match="target_accept"):
        hmc.sample(gaussian_log_prob, torch.zeros(2, 3), 1, target_accept=1.5)
    with pytest.raises(ValueError, match="n_leapfrog"):
        hmc.sample(gaussian_log_prob, torch.zeros(2, 3), 1, n_leapfrog=0)
    with pytest.raises(ValueError, match="positive"):
        hmc.sample(gaussian_log_prob, torch.zeros(2, 3), 1, step_size=0.0)
