"""The SGVB estimators of the variational lower bound (PAPER.md section 3).

Each estimator returns one bound per datapoint (nats); the training objective is their mean. The
functions only need an encoder (x -> latent family), a decoder (log p(x|z)) and a prior, so they
work for any family that implements the :class:`~aevb.distributions.LatentDistribution` interface.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .distributions import LatentDistribution, kl_divergence
from .networks import Decoder, Encoder

ESTIMATORS = ("A", "B")
"""Estimators of the ELBO (the variational lower bound)."""

SCORE_FUNCTION = "score-function"
"""The naive gradient estimator of PAPER.md section 2 (REINFORCE): it trains the same ELBO as A."""


def sgvb_a(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Estimator A: (1/L) sum_l [log p(x, z_l) - log q(z_l|x)], z_l = g(eps_l, x)."""
    q = encoder.posterior(x)
    z = q.rsample(samples, generator)  # (L, B, J)
    log_w = decoder.log_prob(x, z) + prior.log_prob(z) - q.log_prob(z)
    return log_w.mean(0)


def sgvb_b(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Estimator B: -KL(q(z|x) || p(z)) + (1/L) sum_l log p(x|z_l); lower variance than A."""
    q = encoder.posterior(x)
    z = q.rsample(samples, generator)
    return decoder.log_prob(x, z).mean(0) - kl_divergence(q, prior)


def elbo(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    estimator: str = "B",
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-datapoint lower bound by the named estimator ("A" or "B")."""
    if estimator == "A":
        return sgvb_a(encoder, decoder, prior, x, samples, generator)
    if estimator == "B":
        return sgvb_b(encoder, decoder, prior, x, samples, generator)
    raise ValueError(f"unknown estimator {estimator!r}; choose from {ESTIMATORS}")


def elbo_terms(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    estimator: str = "B",
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The bound's two terms per datapoint, (reconstruction, KL), with elbo = rec - KL.

    The same noise as :func:`elbo`. Estimator B: E[log p(x|z)] and the analytic KL; A: both by the
    L samples, KL ~ (1/L) sum_l [log q(z_l|x) - log p(z_l)]. KL warm-up weights the second term.
    """
    q = encoder.posterior(x)
    z = q.rsample(samples, generator)
    rec = decoder.log_prob(x, z).mean(0)
    if estimator == "B":
        return rec, kl_divergence(q, prior)
    if estimator == "A":
        return rec, (q.log_prob(z) - prior.log_prob(z)).mean(0)
    raise ValueError(f"unknown estimator {estimator!r}; choose from {ESTIMATORS}")


def iwae_bound(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-weighted bound (Burda et al. 2015): log (1/K) sum_k p(x, z_k) / q(z_k|x).

    z_k ~ q(z|x), K = ``samples``. It lies between the ELBO (K = 1, where it equals estimator A on
    the same noise) and log p(x), and tightens as K grows; it is not an ELBO and is reported under
    its own name.
    """
    return iwae_surrogate(encoder, decoder, prior, x, samples, generator)[0]


def iwae_surrogate(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    samples: int = 1,
    generator: torch.Generator | None = None,
    *,
    dreg: bool = False,
    kl_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """A surrogate whose gradient is the IWAE bound's, and the bound itself: both per point.

    ``dreg``: the encoder's gradient is the doubly reparameterized one (Tucker et al. 2018). The
    standard gradient, sum_k w_k d log w_k / d phi (w_k the weights normalised over the K draws),
    is rewritten by reparameterizing its score term a second time as sum_k w_k^2 (d log w_k /
    d z_k) (d z_k / d phi), d log w_k / d z_k taken with q's parameters fixed: the same
    expectation, and a signal-to-noise ratio that does not fall as K grows (Rainforth et al.
    2018). The decoder's gradient is the standard one either way. The DReG surrogate is
    sum_k w_k log w_k (w_k held constant, log q with its parameters detached), with a hook
    scaling the gradient that reaches each z_k by w_k; its value is not the bound.

    ``kl_weight`` = beta (KL warm-up) weights the latent part of the log-weights, log w_k =
    log p(x|z_k) + beta (log p(z_k) - log q(z_k|x)), in the gradient only; the bound returned
    is the beta = 1 bound on the same draws.
    """
    q = encoder.posterior(x)
    z = q.rsample(samples, generator)  # (K, B, J)
    log_px, log_pz = decoder.log_prob(x, z), prior.log_prob(z)
    log_qz = (q.detached() if dreg else q).log_prob(z)
    log_w = log_px + log_pz - log_qz  # the beta = 1 log-weights
    log_k = math.log(samples)
    if not dreg and kl_weight == 1.0:  # the bound is its own surrogate
        bound = torch.logsumexp(log_w, 0) - log_k
        return bound, bound.detach()
    bound = torch.logsumexp(log_w.detach(), 0) - log_k
    if kl_weight != 1.0:
        log_w = log_px + kl_weight * (log_pz - log_qz)
    if not dreg:
        return torch.logsumexp(log_w, 0) - log_k, bound
    weights = torch.softmax(log_w.detach(), 0)
    if z.requires_grad:  # the second w_k on the path through z_k
        z.register_hook(lambda g: g * weights.unsqueeze(-1))
    return (weights * log_w).sum(0), bound


def score_function(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    samples: int = 1,
    generator: torch.Generator | None = None,
    baseline: Tensor | float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The score-function (REINFORCE) surrogate of the bound, and the bound: both per datapoint.

    z_l ~ q(z|x) is drawn without reparameterization (no gradient flows through the draw), and
    f(z) = log p(x, z) - log q(z|x). The surrogate (1/L) sum_l [(f(z_l) - b).detach() log q(z_l|x)
    + f(z_l)] has the gradient

    - wrt phi: (f - b) grad log q(z|x) - grad log q(z|x), the score-function estimator. The second
      term, from the "- log q" inside f, is kept: it is what autograd gives for E_q[f] and has
      expectation zero (E_q[grad log q] = 0), so keeping it changes no expectation and is the same
      as a baseline of b + 1 nats;
    - wrt theta: grad log p(x|z) at the drawn z (the prior has no parameters).

    Any ``baseline`` b (a number, or a tensor broadcasting against (L, B)) that does not depend on
    the z_l keeps the estimator unbiased. The second value is estimator A's bound on the same
    draws, (1/L) sum_l f(z_l): the value to report, never the surrogate's.
    """
    q = encoder.posterior(x)
    with torch.no_grad():
        z = q.rsample(samples, generator)  # (L, B, J); the draw itself carries no gradient
    log_q = q.log_prob(z)
    f = decoder.log_prob(x, z) + prior.log_prob(z) - log_q
    surrogate = (f - baseline).detach() * log_q + f
    return surrogate.mean(0), f.detach().mean(0)
