"""How noisy each estimator's gradient of the bound is: PAPER.md section 2 against section 3.

For one fixed minibatch X and fixed parameters, each estimator's gradient of the minibatch bound
(1/M) sum_i L~(x_i) with respect to the encoder's parameters phi is drawn ``draws`` times with
fresh noise. Per parameter tensor (each encoder layer's weight and bias, by module name) the
draws give the per-coordinate mean and variance, the *total variance* (the trace of the
covariance: the sum over coordinates of the per-coordinate variance) and the *mean squared norm*
E||g||^2 = ||E g||^2 + total variance.

The estimators measured (:data:`GRADIENT_ESTIMATORS`):

- "A", "B": the reparameterized SGVB estimators (``B`` only where the KL is analytic);
- "score-function": the REINFORCE surrogate of :func:`aevb.estimators.score_function`, b = 0;
- "score-function-baseline": the same with a per-datapoint baseline b_i, the mean of f(z) =
  log p(x_i, z) - log q(z|x_i) over ``baseline_draws`` draws made *before* and independently of
  the measured ones. The baseline is then a constant for the measured draws, so the estimator
  stays unbiased and the draws stay independent (a leave-one-out mean would correlate them).

Pure tensor math over an encoder, a decoder and a prior: no files and no command line
(:mod:`aevb.api.gradients` is the tool around it, ``aevb.gradients`` its function).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from .distributions import LatentDistribution
from .estimators import elbo, score_function
from .networks import Decoder, Encoder

GRADIENT_ESTIMATORS = ("A", "B", "score-function", "score-function-baseline")
"""The gradient estimators :func:`gradient_moments` measures."""


@dataclass(frozen=True)
class GradientMoments:
    """An estimator's gradient draws, summarised per parameter tensor (float64).

    ``mean`` and ``variance`` are per coordinate (the unbiased variance over the draws);
    ``mean_squared_norm`` is (1/draws) sum_d ||g_d||^2.
    """

    estimator: str
    draws: int
    mean: dict[str, Tensor]
    variance: dict[str, Tensor]
    mean_squared_norm: dict[str, float]

    def total_variance(self) -> dict[str, float]:
        """Per parameter tensor: the trace of the gradient's covariance (sum of variances)."""
        return {k: float(v.sum()) for k, v in self.variance.items()}

    def standard_error(self) -> dict[str, Tensor]:
        """Per coordinate: the standard error of ``mean`` (sqrt(variance / draws))."""
        return {k: (v / self.draws).sqrt() for k, v in self.variance.items()}

    def summary(self) -> dict[str, dict[str, float]]:
        """Per parameter tensor, and "all" of them: total variance, mean squared norm and the
        squared norm of the mean gradient (JSON-ready numbers)."""
        tv = self.total_variance()
        out = {
            k: {
                "total_variance": tv[k],
                "mean_squared_norm": self.mean_squared_norm[k],
                "squared_norm_of_mean": float(self.mean[k].square().sum()),
            }
            for k in self.mean
        }
        out["all"] = {m: sum(v[m] for v in out.values()) for m in next(iter(out.values()))}
        return out


class _GivenPosterior:
    """An encoder stand-in whose q(z|x) is given: the draws' own copies of the posterior."""

    def __init__(self, q: LatentDistribution) -> None:
        self.q = q

    def posterior(self, x: Tensor) -> LatentDistribution:
        return self.q


def draw_objectives(
    q: LatentDistribution,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    estimator: str,
    generator: torch.Generator,
    baseline: Tensor | float = 0.0,
) -> Tensor:
    """(C,): for each of C draws, the scalar whose gradient is that draw's estimate of the
    gradient of the minibatch bound (1/M) sum_i L~(x_i), with L = 1 sample per datapoint.

    ``q`` has batch shape (C, M, J): the draws' copies of the posterior of the M points, so that
    each draw's gradient reaches its own copy.
    """
    enc = cast(Encoder, _GivenPosterior(q))
    if estimator in ("A", "B"):
        return elbo(enc, decoder, prior, x, estimator, 1, generator).mean(-1)
    if estimator in ("score-function", "score-function-baseline"):
        return score_function(enc, decoder, prior, x, 1, generator, baseline)[0].mean(-1)
    raise ValueError(f"unknown gradient estimator {estimator!r}; choose from {GRADIENT_ESTIMATORS}")


@torch.no_grad()
def mean_f(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    draws: int,
    generator: torch.Generator,
) -> Tensor:
    """Per datapoint: the mean of f(z) = log p(x, z) - log q(z|x) over ``draws`` z ~ q(z|x)
    (estimator A's bound with L = draws): the measurement's score-function baseline."""
    return score_function(encoder, decoder, prior, x, draws, generator)[1]


def _draw_gradients(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    estimator: str,
    count: int,
    generator: torch.Generator,
    baseline: Tensor | float,
) -> list[Tensor]:
    """``count`` independent draws of the estimator's gradient wrt each encoder parameter,
    stacked: [(count, *p.shape)].

    The encoder's outputs for x do not depend on the noise, so the encoder runs once: each
    draw's gradient wrt those outputs (its own copy of them) is pulled back through the encoder
    by one batched vector-Jacobian product.
    """
    params = [p for p in encoder.parameters() if p.requires_grad]
    outs = encoder(x)
    copies = [o.detach().expand(count, *o.shape).clone().requires_grad_() for o in outs]
    q = encoder.family.from_params(*copies)
    objective = draw_objectives(q, decoder, prior, x, estimator, generator, baseline).sum()
    cotangents = torch.autograd.grad(objective, copies)
    grads = torch.autograd.grad(outs, params, cotangents, is_grads_batched=True, allow_unused=True)
    return [
        g if g is not None else p.new_zeros((count, *p.shape))
        for g, p in zip(grads, params, strict=True)
    ]


def gradient_moments(
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentDistribution,
    x: Tensor,
    estimator: str,
    draws: int,
    generator: torch.Generator,
    *,
    baseline_draws: int | None = None,
    chunk: int | None = None,
    on_draws: Callable[[int], None] | None = None,
) -> GradientMoments:
    """Draw ``estimator``'s gradient of the minibatch bound wrt the encoder's parameters
    ``draws`` times (fresh noise from ``generator`` each time) and summarise the draws.

    The draws are made ``chunk`` at a time (default: as many as fit in ~2^24 numbers of
    gradients and activations) and merged into float64 running moments (Chan et al.'s parallel
    update of the mean and the sum of squared deviations), so memory is ``chunk`` copies of the
    parameters whatever ``draws`` is. "score-function-baseline" first spends
    ``baseline_draws`` (default ``draws``) forward-only draws on its baseline. ``on_draws(n)``
    is called after each chunk of n draws.
    """
    if draws < 2:
        raise ValueError(f"too few draws to estimate a variance: {draws}; give at least 2")
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    per_draw = max(sum(p.numel() for _, p in named), 8 * x.numel())
    chunk = chunk or max(1, min(draws, 2**24 // per_draw))
    baseline: Tensor | float = 0.0
    if estimator == "score-function-baseline":
        baseline = mean_f(encoder, decoder, prior, x, baseline_draws or draws, generator)
    mean = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for _, p in named]
    m2 = [torch.zeros_like(m) for m in mean]
    sq_norm = torch.zeros(len(named), dtype=torch.float64, device=x.device)
    n = 0
    while n < draws:
        c = min(chunk, draws - n)
        grads = _draw_gradients(encoder, decoder, prior, x, estimator, c, generator, baseline)
        for k, g in enumerate(grads):
            g64 = g.detach().double()
            g_mean = g64.mean(0)
            delta = g_mean - mean[k]
            mean[k] += delta * (c / (n + c))
            m2[k] += (g64 - g_mean).square().sum(0) + delta.square() * (n * c / (n + c))
            sq_norm[k] += g64.square().sum()
        n += c
        if on_draws is not None:
            on_draws(c)
    names = [name for name, _ in named]
    return GradientMoments(
        estimator,
        draws,
        dict(zip(names, mean, strict=True)),
        {name: v / (draws - 1) for name, v in zip(names, m2, strict=True)},
        {name: float(v) / draws for name, v in zip(names, sq_norm, strict=True)},
    )


def variance_ratios(
    results: dict[str, GradientMoments], over: Sequence[str] = ("B", "A")
) -> dict[str, dict[str, float]]:
    """Total-variance ratios "est/ref" (e.g. "score-function/B") per parameter tensor and "all",
    for every measured estimator against each reparameterized one in ``over`` measured."""
    out: dict[str, dict[str, float]] = {}
    for ref in (r for r in over if r in results):
        base = results[ref].summary()
        for est, res in results.items():
            if est == ref or (ref == "A" and est == "B"):
                continue
            s = res.summary()
            out[f"{est}/{ref}"] = {
                k: s[k]["total_variance"] / max(base[k]["total_variance"], 1e-300) for k in s
            }
    return out
