"""The bound's two terms and the use of the latent space (docs/EVALUATION.md).

The lower bound of PAPER.md section 2 is 𝓛 = E_q[log p(x|z)] - KL(q(z|x) || p(z)): the expected
*reconstruction* log-likelihood minus the *KL* of the approximate posterior from the prior. This
module splits a bound into those two terms, per datapoint and on the same noise as the bound, and
measures how much of the latent space the encoder uses:

- the KL per latent dimension, analytic where the family pair has a closed form (e.g. the diagonal
  Gaussian against N(0, I): ½ (μ² + σ² - 1 - log σ²) per dimension), else the Monte Carlo estimate
  (1/L) Σ_l [log q(z_ld|x) - log p(z_ld)] from the bound's own draws (every family here is a product
  over dimensions, so the per-dimension terms add up to the whole KL);
- the *active units* of Burda et al. (2015): dimension d is active when
  Cov_x(E_q[z_d|x]) > 0.01, the variance over datapoints of the posterior mean.

Pure functions of an encoder, a decoder, a prior and data: no training, files or command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .distributions import LatentDistribution, has_analytic_kl, kl_divergence
from .networks import Decoder, Encoder

ACTIVE_THRESHOLD = 0.01
"""Burda et al. (2015): a latent dimension is active when Cov_x(E_q[z_d|x]) exceeds this."""


@dataclass(frozen=True)
class BoundTerms:
    """The bound of a batch of datapoints, its two terms and the posterior's per-dimension view.

    ``bound`` = ``reconstruction`` - ``kl`` per datapoint (to rounding: the bound is computed in
    its estimator's own form, so it is the number :func:`aevb.estimators.elbo` gives).
    """

    bound: Tensor
    """(B,) the lower bound per datapoint (nats)."""
    reconstruction: Tensor
    """(B,) E_q[log p(x|z)] by the L draws."""
    kl: Tensor
    """(B,) KL(q(z|x) || p(z)): analytic for estimator B, the L-draw estimate for A."""
    kl_per_dim: Tensor
    """(B, J) the KL per latent dimension (analytic where the family has it, else L draws)."""
    center: Tensor
    """(B, J) E_q[z|x] for the Gaussian posterior; the median (the family's center) otherwise."""

    def packed(self) -> Tensor:
        """One (B, 3 + 2J) tensor of every field, for gathering across processes."""
        cols = (self.bound, self.reconstruction, self.kl)
        return torch.cat([torch.stack(cols, 1), self.kl_per_dim, self.center], 1)

    @classmethod
    def unpack(cls, packed: Tensor, latent_dim: int) -> BoundTerms:
        """The fields of :meth:`packed` rows (or of their flattening), as contiguous tensors."""
        rows = packed.reshape(-1, 3 + 2 * latent_dim)
        j = latent_dim
        return cls(
            bound=rows[:, 0].contiguous(),
            reconstruction=rows[:, 1].contiguous(),
            kl=rows[:, 2].contiguous(),
            kl_per_dim=rows[:, 3 : 3 + j].contiguous(),
            center=rows[:, 3 + j :].contiguous(),
        )

    @classmethod
    def mean_of(cls, draws: list[BoundTerms]) -> BoundTerms:
        """The average of several draws' terms (e.g. over draws of the decoder's weights)."""

        def avg(field: str) -> Tensor:
            return torch.stack([getattr(d, field) for d in draws]).mean(0)

        return cls(avg("bound"), avg("reconstruction"), avg("kl"), avg("kl_per_dim"), avg("center"))


def per_dimension(
    q_params: tuple[Tensor, ...], family: type[LatentDistribution]
) -> LatentDistribution:
    """q with each latent dimension its own event of size 1: params (..., J) -> (..., J, 1)."""
    return family.from_params(*(p.unsqueeze(-1) for p in q_params))


def kl_per_dimension(
    q_params: tuple[Tensor, ...],
    family: type[LatentDistribution],
    prior: LatentDistribution,
    z: Tensor | None = None,
) -> Tensor:
    """(..., J) KL(q(z_d|x) || p(z_d)) per dimension, for a posterior and prior that factorise.

    Analytic where the pair has a registered closed form; else the Monte Carlo estimate
    (1/L) sum_l [log q(z_ld|x) - log p(z_ld)] from the draws ``z`` (L, ..., J).
    """
    q1 = per_dimension(q_params, family)
    p1 = type(prior)(1)  # type: ignore[call-arg]  # the prior of one dimension (priors take J)
    if has_analytic_kl(family, type(p1)):
        return kl_divergence(q1, p1)
    if z is None:
        raise ValueError(f"no analytic KL for {family.__name__}: give draws z for an estimate")
    z1 = z.unsqueeze(-1)
    return (q1.log_prob(z1) - p1.log_prob(z1)).mean(0)


def bound_terms(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    estimator: str = "B",
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> BoundTerms:
    """The bound of estimator A or B with its two terms and the per-dimension KL, on one draw.

    The draws, and the bound, are those of :func:`aevb.estimators.elbo` with the same generator
    (computed in the same order, so the bound is the same number); the terms come from the same
    draws: B, E[log p(x|z)] and the analytic KL; A, the L-draw estimates of both.
    """
    params = encoder(x)
    q = encoder.family.from_params(*params)
    z = q.rsample(samples, generator)  # (L, B, J)
    log_px = decoder.log_prob(x, z)
    if estimator == "B":
        reconstruction, kl = log_px.mean(0), kl_divergence(q, prior)
        bound = log_px.mean(0) - kl
    elif estimator == "A":
        log_pz, log_q = prior.log_prob(z), q.log_prob(z)
        bound = (log_px + log_pz - log_q).mean(0)
        reconstruction, kl = log_px.mean(0), (log_q - log_pz).mean(0)
    else:
        raise ValueError(f"unknown estimator {estimator!r}; choose A or B")
    per_dim = kl_per_dimension(params, encoder.family, prior, z)
    return BoundTerms(bound, reconstruction, kl, per_dim, q.center())


@dataclass(frozen=True)
class LatentUsage:
    """How many latent dimensions the encoder uses, over a set of datapoints."""

    active_units: int
    """Dimensions with Cov_x(E_q[z_d|x]) > ``threshold`` (Burda et al. 2015)."""
    activity: list[float]
    """Per dimension: the population variance over datapoints of E_q[z_d|x]."""
    kl_per_dim: list[float]
    """Per dimension: the KL averaged over the datapoints (nats)."""
    threshold: float = ACTIVE_THRESHOLD


def activity(center: Tensor) -> Tensor:
    """(J,) Cov_x(E_q[z_d|x]): the variance over the N datapoints (rows) of each posterior mean.

    The population variance (divided by N, not N - 1), in float64 and in the two-pass form
    mean((m - mean(m))^2), which has no cancellation.
    """
    m = center.double()
    return ((m - m.mean(0)) ** 2).mean(0)


def latent_usage(
    center: Tensor, kl_per_dim: Tensor, threshold: float = ACTIVE_THRESHOLD
) -> LatentUsage:
    """Active units (variance of the posterior means over the rows > ``threshold``) and the
    per-dimension KL averaged over the rows, from (N, J) centers and per-dimension KLs."""
    var = activity(center)
    return LatentUsage(
        active_units=int((var > threshold).sum()),
        activity=var.tolist(),
        kl_per_dim=kl_per_dim.double().mean(0).tolist(),
        threshold=threshold,
    )
