"""The paper's other reparameterizable latent families, by all three routes of PAPER.md section 3.

1. Inverse CDF, z = F^-1(u; params) with u ~ U(0, 1): :class:`Gumbel`, :class:`Cauchy`,
   :class:`Exponential`, :class:`Weibull`.
2. Location-scale, z = loc + scale * eps with eps from a fixed standard density: :class:`Laplace`,
   :class:`Logistic`, :class:`StudentT`.
3. Composition of auxiliary variables: :class:`LogNormal` (z = exp of a normal draw).

Each family is one small class: its raw parameters (what the encoder emits; ``from_params``), a
differentiable sampler and its log-density. Its prior is the member with every raw parameter 0
(:class:`StandardPrior`, e.g. Laplace(0, 1), Exponential(1)); the priors ``PRIORS[name]`` build
and every analytic KL registered here is written once for two members of a family and serves
both the posterior-vs-posterior and the posterior-vs-prior pair. Scales are exp(raw), as the
Gaussian's variance is exp(logvar).

This module owns the registries of the latent families by name: ``POSTERIORS`` (the posterior
classes) and ``PRIORS`` (prior constructors, called with the latent dimension). They start with the
paper's Gaussian (:mod:`aevb.latent`); every family here is added by :func:`register_family` below,
which is also how a new family is added. :mod:`aevb.distributions` re-exports both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .latent import LOG_2PI, DiagonalNormal, LatentDistribution, StandardNormal, register_kl

POSTERIORS: dict[str, type[LatentDistribution]] = {"normal": DiagonalNormal}
"""Posterior families by name (``--posterior``): the class an encoder's outputs build."""
PRIORS: dict[str, Callable[[int], StandardNormal | StandardPrior]] = {"normal": StandardNormal}
"""Priors by name (``--prior``): called with the latent dimension J."""

EULER_GAMMA = 0.5772156649015329
LOG_PI = math.log(math.pi)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """U(0, 1) draws kept inside the open interval, so that every inverse CDF stays finite."""
    u = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return u.clamp_min(torch.finfo(like.dtype).tiny)  # torch.rand never returns 1


class Family(LatentDistribution):
    """A latent family stored as its raw parameters (each of shape (..., J), broadcastable)."""

    #: Names of the raw parameters, in the encoder's order (used by ``aevb encode``).
    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *raw: Tensor) -> None:
        self.raw = raw

    @classmethod
    def from_params(cls, *raw: Tensor) -> Family:
        if len(raw) != cls.n_params:
            raise ValueError(f"{cls.__name__} takes {cls.n_params} parameter tensors")
        return cls(*raw)

    def detached(self) -> Family:
        return type(self)(*(r.detach() for r in self.raw))

    @property
    def batch_shape(self) -> torch.Size:
        return torch.broadcast_shapes(*(r.shape for r in self.raw))

    def _like(self) -> Tensor:
        return self.raw[0]

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_from(uniform((n, *self.batch_shape), generator, self._like()), generator)

    def sample_from(self, u: Tensor, generator: torch.Generator | None) -> Tensor:
        """Map U(0, 1) draws to z (route 1); other routes may draw their own noise."""
        return self.icdf(u)

    def icdf(self, u: Tensor) -> Tensor:
        """Inverse CDF per coordinate, where it has a closed form."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form inverse CDF")

    def log_prob(self, z: Tensor) -> Tensor:
        return self.log_density(z).sum(-1)

    def log_density(self, z: Tensor) -> Tensor:
        """Per-coordinate log-density (not summed)."""
        raise NotImplementedError

    def center(self) -> Tensor:
        """The median: the latent point used for reconstructions."""
        return self.icdf(torch.full_like(self._like(), 0.5).expand(self.batch_shape))


# --------------------------------------------------------------------------- route 2: loc-scale


class _LocScaleParams:
    """The (loc, log_scale) parameters of a family built from a location and a scale."""

    raw: tuple[Tensor, ...]

    @property
    def loc(self) -> Tensor:
        return self.raw[0]

    @property
    def log_scale(self) -> Tensor:
        return self.raw[1]

    @property
    def scale(self) -> Tensor:
        return torch.exp(self.log_scale)


class LocationScale(_LocScaleParams, Family):
    """z = loc + exp(log_scale) * eps with eps ~ a standard density (route 2)."""

    n_params = 2
    param_names: ClassVar[tuple[str, ...]] = ("loc", "log_scale")

    def sample_from(self, u: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.loc + self.scale * self.standard_sample(u, generator)

    def icdf(self, u: Tensor) -> Tensor:
        return self.loc + self.scale * self.standard_icdf(u)

    def log_density(self, z: Tensor) -> Tensor:
        return self.standard_log_density((z - self.loc) * torch.exp(-self.log_scale)) - (
            self.log_scale
        )

    def standard_sample(self, u: Tensor, generator: torch.Generator | None) -> Tensor:
        """eps from the standard member; by default its inverse CDF at u."""
        return self.standard_icdf(u)

    @staticmethod
    def standard_icdf(u: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def standard_log_density(eps: Tensor) -> Tensor:
        raise NotImplementedError


class Laplace(LocationScale):
    """Laplace(loc, scale): density exp(-|z - loc| / scale) / (2 scale)."""

    name = "laplace"

    def standard_sample(self, u: Tensor, generator: torch.Generator | None) -> Tensor:
        # The difference of two Exp(1) draws: finite for every u in (0, 1), unlike the icdf at u
        # within float rounding of 0.
        return torch.log(u) - torch.log(uniform(u.shape, generator, u))

    @staticmethod
    def standard_icdf(u: Tensor) -> Tensor:
        v = u - 0.5
        return -torch.sign(v) * torch.log1p(-2.0 * v.abs())

    @staticmethod
    def standard_log_density(eps: Tensor) -> Tensor:
        return -math.log(2.0) - eps.abs()


class Logistic(LocationScale):
    """Logistic(loc, scale): the standard member's CDF is the sigmoid."""

    name = "logistic"

    @staticmethod
    def standard_icdf(u: Tensor) -> Tensor:
        return torch.log(u) - torch.log1p(-u)

    @staticmethod
    def standard_log_density(eps: Tensor) -> Tensor:
        a = eps.abs()
        return -a - 2.0 * F.softplus(-a)


class StudentT(LocationScale):
    """Student's t with ``df`` = 3 degrees of freedom (a subclass may set another integer).

    eps = n_0 / sqrt((n_1^2 + ... + n_df^2) / df) with n_i ~ N(0, 1): a composition, drawn with
    the caller's generator. There is no analytic KL: estimator A.
    """

    name = "student-t"
    df: ClassVar[int] = 3

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        like = self._like()
        shape = (n, *self.batch_shape)
        normals = torch.randn(
            (self.df + 1, *shape), generator=generator, dtype=like.dtype, device=like.device
        )
        eps = normals[0] * torch.rsqrt((normals[1:] ** 2).mean(0))
        return self.loc + self.scale * eps

    def center(self) -> Tensor:
        return self.loc.expand(self.batch_shape)

    @classmethod
    def standard_log_density(cls, eps: Tensor) -> Tensor:
        nu = float(cls.df)
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        return const - 0.5 * (nu + 1) * torch.log1p(eps**2 / nu)


# --------------------------------------------------------------------------- route 1: inverse CDF


class Gumbel(LocationScale):
    """Gumbel(loc, scale) by its inverse CDF: z = loc - scale * log(-log u)."""

    name = "gumbel"

    @staticmethod
    def standard_icdf(u: Tensor) -> Tensor:
        return -torch.log(-torch.log(u))

    @staticmethod
    def standard_log_density(eps: Tensor) -> Tensor:
        return -eps - torch.exp(-eps)


class Cauchy(LocationScale):
    """Cauchy(loc, scale) by its inverse CDF: z = loc + scale * tan(pi (u - 1/2))."""

    name = "cauchy"

    @staticmethod
    def standard_icdf(u: Tensor) -> Tensor:
        return torch.tan(math.pi * (u - 0.5))

    @staticmethod
    def standard_log_density(eps: Tensor) -> Tensor:
        return -LOG_PI - torch.log1p(eps**2)


class Exponential(Family):
    """Exponential(rate) on z > 0 by its inverse CDF: z = -log(1 - u) / rate; raw = log rate."""

    name = "exponential"
    n_params = 1
    param_names = ("log_rate",)
    support = "positive"

    @property
    def log_rate(self) -> Tensor:
        return self.raw[0]

    def icdf(self, u: Tensor) -> Tensor:
        return -torch.log1p(-u) * torch.exp(-self.log_rate)

    def log_density(self, z: Tensor) -> Tensor:
        lp = self.log_rate - torch.exp(self.log_rate) * z
        return torch.where(z >= 0, lp, -math.inf)


class Weibull(Family):
    """Weibull(scale lam, shape k) on z > 0: z = lam (-log(1 - u))^(1/k); raw = (log lam, log k).

    k = 1 is the exponential distribution of rate 1/lam.
    """

    name = "weibull"
    n_params = 2
    param_names = ("log_scale", "log_shape")
    support = "positive"

    @property
    def log_scale(self) -> Tensor:
        return self.raw[0]

    @property
    def log_shape(self) -> Tensor:
        return self.raw[1]

    def icdf(self, u: Tensor) -> Tensor:
        # in log space, so that small u with small k does not underflow before the power
        log_e = torch.log(-torch.log1p(-u))
        return torch.exp(self.log_scale + log_e * torch.exp(-self.log_shape))

    def log_density(self, z: Tensor) -> Tensor:
        k = torch.exp(self.log_shape)
        log_x = torch.log(z.clamp_min(torch.finfo(z.dtype).tiny)) - self.log_scale  # log(z/lam)
        lp = self.log_shape - self.log_scale + (k - 1) * log_x - torch.exp(k * log_x)
        return torch.where(z > 0, lp, -math.inf)


# --------------------------------------------------------------------------- route 3: composition


class LogNormal(_LocScaleParams, Family):
    """LogNormal: z = exp(loc + scale * n), n ~ N(0, 1), a composition; z > 0."""

    name = "lognormal"
    n_params = 2
    param_names = LocationScale.param_names
    support = "positive"

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        like = self._like()
        eps = torch.randn(
            (n, *self.batch_shape), generator=generator, dtype=like.dtype, device=like.device
        )
        return torch.exp(self.loc + self.scale * eps)

    def icdf(self, u: Tensor) -> Tensor:
        return torch.exp(self.loc + self.scale * math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0))

    def log_density(self, z: Tensor) -> Tensor:
        log_z = torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))
        x = (log_z - self.loc) * torch.exp(-self.log_scale)
        lp = -0.5 * (LOG_2PI + x**2) - self.log_scale - log_z
        return torch.where(z > 0, lp, -math.inf)


# --------------------------------------------------------------------------- priors


class StandardPrior(LatentDistribution):
    """The member of ``family`` with every raw parameter 0, over ``dim`` latents: a prior p(z)."""

    n_params = 0
    family: ClassVar[type[Family]]

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def at(self, like: Tensor) -> Family:
        """The prior as a family member (parameters of shape (J,)) on ``like``'s device, dtype."""
        zero = torch.zeros(self.dim, dtype=like.dtype, device=like.device)
        return self.family(*([zero] * self.family.n_params))

    def rsample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        like = torch.empty(0, device=device, dtype=dtype or torch.get_default_dtype())
        return self.at(like).rsample(n, generator)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.at(z).log_prob(z)

    def icdf(self, u: Tensor) -> Tensor:
        """Inverse CDF per coordinate (used to map a unit-square grid to z, Figure 4)."""
        return self.at(u).icdf(u)


def standard_prior(family: type[Family]) -> type[StandardPrior]:
    """The prior class of a family (one per family, so that KLs can be registered per pair)."""
    cls = cast(
        "type[StandardPrior]",
        type(f"Standard{family.__name__}", (StandardPrior,), {"family": family}),
    )
    cls.name = family.name
    cls.support = family.support
    cls.__doc__ = f"{family.__name__} with raw parameters 0: the prior p(z) named {family.name!r}."
    cls.__module__ = __name__
    return cls


def register_family(
    family: type[Family], kl: Callable[[Any, Any], Tensor] | None = None
) -> type[StandardPrior]:
    """Add a family (and its standard prior) to POSTERIORS and PRIORS; register its KL.

    ``kl(q, p)`` is the per-coordinate KL between two members of the family; it is registered for
    (family, family) and (family, its standard prior).
    """
    prior = standard_prior(family)
    POSTERIORS[family.name] = family
    PRIORS[family.name] = prior
    if kl is not None:
        register_kl(family, family)(lambda q, p: kl(q, p).sum(-1))
        register_kl(family, prior)(lambda q, p: kl(q, p.at(q._like())).sum(-1))
    return prior


# --------------------------------------------------------------------------- analytic KLs


def _kl_laplace(q: Laplace, p: Laplace) -> Tensor:
    d = (q.loc - p.loc).abs()
    return p.log_scale - q.log_scale + d / p.scale + q.scale / p.scale * torch.exp(-d / q.scale) - 1


def _kl_gumbel(q: Gumbel, p: Gumbel) -> Tensor:
    r = q.scale / p.scale
    return (
        p.log_scale
        - q.log_scale
        + EULER_GAMMA * (r - 1)
        + torch.exp((p.loc - q.loc) / p.scale + torch.lgamma(r + 1))
        + (q.loc - p.loc) / p.scale
        - 1
    )


def _kl_cauchy(q: Cauchy, p: Cauchy) -> Tensor:
    # log(((s_q + s_p)^2 + (m_q - m_p)^2) / (4 s_q s_p)), Chyzak & Nielsen (2019)
    return (
        torch.log((q.scale + p.scale) ** 2 + (q.loc - p.loc) ** 2)
        - math.log(4.0)
        - q.log_scale
        - p.log_scale
    )


def _kl_exponential(q: Exponential, p: Exponential) -> Tensor:
    return q.log_rate - p.log_rate + torch.exp(p.log_rate - q.log_rate) - 1


def _kl_weibull(q: Weibull, p: Weibull) -> Tensor:
    # log(k1/lam1^k1) - log(k2/lam2^k2) + (k1 - k2)(log lam1 - gamma/k1)
    #   + (lam1/lam2)^k2 Gamma(k2/k1 + 1) - 1
    k1, k2 = torch.exp(q.log_shape), torch.exp(p.log_shape)
    return (
        q.log_shape
        - k1 * q.log_scale
        - p.log_shape
        + k2 * p.log_scale
        + (k1 - k2) * (q.log_scale - EULER_GAMMA / k1)
        + torch.exp(k2 * (q.log_scale - p.log_scale) + torch.lgamma(k2 / k1 + 1))
        - 1
    )


def _kl_lognormal(q: LogNormal, p: LogNormal) -> Tensor:
    # KL is invariant under the bijection exp: that of the underlying normals
    return (
        p.log_scale
        - q.log_scale
        + 0.5 * (torch.exp(2 * (q.log_scale - p.log_scale)) + ((q.loc - p.loc) / p.scale) ** 2)
        - 0.5
    )


StandardLaplace = register_family(Laplace, _kl_laplace)
StandardLogistic = register_family(Logistic)
StandardStudentT = register_family(StudentT)
StandardGumbel = register_family(Gumbel, _kl_gumbel)
StandardCauchy = register_family(Cauchy, _kl_cauchy)
StandardExponential = register_family(Exponential, _kl_exponential)
StandardWeibull = register_family(Weibull, _kl_weibull)
StandardLogNormal = register_family(LogNormal, _kl_lognormal)


@register_kl(Weibull, StandardExponential)
def _kl_weibull_exponential(q: Weibull, p: StandardPrior) -> Tensor:
    """Weibull posterior against the Exp(1) prior (a Weibull with scale 1 and shape 1)."""
    zero = torch.zeros_like(q.log_scale)
    return _kl_weibull(q, Weibull(zero, zero)).sum(-1)
