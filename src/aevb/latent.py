"""The latent-family interface, the paper's Gaussian posterior and prior, and analytic KLs.

A *latent family* (posterior or prior) exposes ``rsample`` (differentiable draws through the
reparameterization trick, PAPER.md section 3) and ``log_prob``. A new family is one small class that
declares how many parameter vectors the encoder must produce (``n_params``) and how to build itself
from them (``from_params``); an analytic KL against a prior is registered with :func:`register_kl`,
in the module that defines the family, so that a family's KLs are known as soon as it exists.

The other families, and the registries ``POSTERIORS`` and ``PRIORS`` of every family by name, are
in :mod:`aevb.families`; :mod:`aevb.distributions` gathers the public names of both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


class LatentDistribution:
    """Base class of the latent families (approximate posteriors and priors)."""

    #: Number of (..., J) parameter tensors an encoder must output for this family.
    n_params: ClassVar[int] = 2
    #: Name used in configs and on the command line.
    name: ClassVar[str] = ""
    #: Where the density is positive: "real" (all of R^J) or "positive" (z > 0).
    support: ClassVar[str] = "real"

    @classmethod
    def from_params(cls, *params: Tensor) -> LatentDistribution:
        """Build the distribution from the encoder's raw (unconstrained) outputs."""
        raise NotImplementedError

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` reparameterized samples: shape (n, *batch, J)."""
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-density summed over the last dimension."""
        raise NotImplementedError

    def center(self) -> Tensor:
        """A representative latent point (the median), e.g. for reconstructions."""
        raise NotImplementedError

    def detached(self) -> LatentDistribution:
        """The same distribution with its parameters cut from the graph: log_prob(z) then
        carries gradient through z only (the doubly reparameterized IWAE gradient needs it)."""
        raise NotImplementedError(f"{type(self).__name__} cannot detach its parameters")


class DiagonalNormal(LatentDistribution):
    """N(mu, diag(exp(logvar))): the paper's approximate posterior (Appendix C)."""

    n_params = 2
    name = "normal"

    def __init__(self, mu: Tensor, logvar: Tensor) -> None:
        self.mu = mu
        self.logvar = logvar

    @classmethod
    def from_params(cls, mu: Tensor, logvar: Tensor) -> DiagonalNormal:  # type: ignore[override]
        return cls(mu, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def center(self) -> Tensor:
        return self.mu

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(
            (n, *self.mu.shape), generator=generator, dtype=self.mu.dtype, device=self.mu.device
        )
        return self.mu + self.std * eps

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar)).sum(-1)

    def detached(self) -> DiagonalNormal:
        return DiagonalNormal(self.mu.detach(), self.logvar.detach())


class StandardNormal(LatentDistribution):
    """N(0, I) over ``dim`` latent variables: the paper's prior p(z)."""

    n_params = 0
    name = "normal"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def rsample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        return torch.randn((n, self.dim), generator=generator, device=device, dtype=dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    def detached(self) -> StandardNormal:
        return self

    def icdf(self, u: Tensor) -> Tensor:
        """Inverse CDF per coordinate (used to map a unit-square grid to z, Figure 4)."""
        return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


# --------------------------------------------------------------------------- analytic KL

_KL_REGISTRY: dict[
    tuple[type, type], Callable[[LatentDistribution, LatentDistribution], Tensor]
] = {}


def register_kl(q_type: type, p_type: type) -> Callable[[Callable], Callable]:
    """Decorator registering an analytic KL(q || p) for a pair of families."""

    def wrap(fn: Callable) -> Callable:
        _KL_REGISTRY[(q_type, p_type)] = fn
        return fn

    return wrap


def has_analytic_kl(q_type: type, p_type: type) -> bool:
    """Whether estimator B (analytic KL) is available for this posterior/prior pair."""
    return (q_type, p_type) in _KL_REGISTRY


def kl_divergence(q: LatentDistribution, p: LatentDistribution) -> Tensor:
    """Analytic KL(q || p), summed over latent dimensions; NotImplementedError if none exists."""
    fn = _KL_REGISTRY.get((type(q), type(p)))
    if fn is None:
        raise NotImplementedError(
            f"no analytic KL between {type(q).__name__} and {type(p).__name__}; use estimator A"
        )
    return fn(q, p)


@register_kl(DiagonalNormal, StandardNormal)
def _kl_normal_standard(q: DiagonalNormal, p: StandardNormal) -> Tensor:
    # Appendix B: -KL = 1/2 sum(1 + log s^2 - mu^2 - s^2)
    return -0.5 * (1.0 + q.logvar - q.mu**2 - torch.exp(q.logvar)).sum(-1)


@register_kl(DiagonalNormal, DiagonalNormal)
def _kl_normal_normal(q: DiagonalNormal, p: DiagonalNormal) -> Tensor:
    return 0.5 * (
        p.logvar - q.logvar + (torch.exp(q.logvar) + (q.mu - p.mu) ** 2) * torch.exp(-p.logvar) - 1
    ).sum(-1)
