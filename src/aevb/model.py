"""The variational auto-encoder of PAPER.md section 5: encoder, decoder and prior in one module."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from .diagnostics import BoundTerms, bound_terms
from .distributions import POSTERIORS, PRIORS, has_analytic_kl
from .errors import ConfigError
from .estimators import (
    ESTIMATORS,
    SCORE_FUNCTION,
    elbo,
    elbo_terms,
    iwae_surrogate,
    score_function,
)
from .networks import ACTIVATIONS, LIKELIHOODS, Decoder, Dropout, Encoder, add_dropout
from .options import between, bounded_int, check_value, option, positive, validate

ARCHITECTURES = ("mlp", "conv")

#: Data the user API takes: a tensor, or anything ``numpy.asarray`` takes.
TensorLike: TypeAlias = "Tensor | npt.ArrayLike"


def analytic_kl_available(posterior: str, prior: str) -> bool:
    """Whether KL(posterior || prior) has a registered closed form (estimator B is available)."""
    for kind, name, table in (("posterior", posterior, POSTERIORS), ("prior", prior, PRIORS)):
        if name not in table:
            raise ConfigError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    return has_analytic_kl(POSTERIORS[posterior], type(PRIORS[prior](1)))


def default_estimator(posterior: str, prior: str) -> str:
    """B (analytic KL, lower variance) where the KL has a closed form, else A."""
    return "B" if analytic_kl_available(posterior, prior) else "A"


if TYPE_CHECKING:  # statically str; at run time the Literal of the names, which aevb.options checks
    Activation = str
    Likelihood = str
    Architecture = str
else:
    Activation = Literal[tuple(ACTIVATIONS)]
    Likelihood = Literal[tuple(LIKELIHOODS)]
    Architecture = Literal[ARCHITECTURES]


@dataclass
class ModelOptions:
    """The model a user chooses (``aevb train``'s model options); None = the data's default."""

    latent_dim: int = option(20, "N_z, the dimension of the latent space", check=positive)
    hidden: int | None = option(
        None, "hidden units per layer (default: 500 for MNIST, 200 for others)", check=positive
    )
    depth: int = option(
        1,
        "hidden layers per network",
        parse=bounded_int(0, 64, "a number of hidden layers from 0 to 64"),
        check=between(0, 64),
    )
    activation: Activation = option("tanh", "hidden-layer nonlinearity (tanh is the paper's)")
    likelihood: Likelihood | None = option(
        None, "p(x|z) (default: the dataset's; gaussian-linear with --standardize)"
    )
    posterior: str = option(
        "normal", "latent family of q(z|x) (docs/FAMILIES.md)", choices=POSTERIORS
    )
    prior: str | None = option(
        None,
        "family of p(z), its standard member (default: the posterior's family)",
        choices=PRIORS,
    )
    architecture: Architecture = option(
        "mlp", "MLP encoder and decoder (the paper's) or convolutional (image data)"
    )
    dropout: float = option(
        0.0,
        "dropout rate after each hidden layer of the MLP encoder and decoder, in training only "
        "(AEVB; the step then runs on autograd): against overfitting (default 0)",
        check=lambda v: None if 0 <= v < 1 else "a number from 0 up to (not including) 1",
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(kw_only=True)
class ModelConfig(ModelOptions):
    """Everything needed to rebuild a VAE's architecture (stored in a run's config.json): the
    model options resolved for a dataset, and what the data and the algorithm fix."""

    hidden: int = 500
    likelihood: str = "bernoulli"
    prior: str = "normal"
    x_dim: int
    image_shape: tuple[int, ...] | None = None
    """(H, W) of grey images, (H, W, C) of images with C channels, flattened channel-last."""
    parameter_posterior: bool = False  # full VB: a Gaussian posterior over the decoder's weights

    def __post_init__(self) -> None:
        if self.image_shape is not None:
            self.image_shape = tuple(int(s) for s in self.image_shape)
        for name, value, choices in (
            ("likelihood", self.likelihood, LIKELIHOODS),
            ("posterior", self.posterior, POSTERIORS),
            ("prior", self.prior, PRIORS),
            ("activation", self.activation, ACTIVATIONS),
            ("architecture", self.architecture, ARCHITECTURES),
        ):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {sorted(choices)}")
        for name in ("x_dim", "latent_dim", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.depth < 0:
            raise ConfigError(f"depth must be >= 0, got {self.depth}")
        check_value(ModelOptions, "dropout", self.dropout)
        if self.dropout and (self.architecture != "mlp" or self.depth < 1):
            raise ConfigError(
                "--dropout drops hidden units of the MLP; it needs --architecture mlp and "
                "--depth >= 1"
            )
        if self.image_shape is not None and (
            len(self.image_shape) not in (2, 3) or min(self.image_shape) < 1
        ):
            raise ConfigError(f"image shape {self.image_shape}: expected (H, W) or (H, W, C)")
        if self.image_shape is not None and int(np.prod(self.image_shape)) != self.x_dim:
            raise ConfigError(
                f"image shape {self.image_shape} has {int(np.prod(self.image_shape))} pixels "
                f"but the data has {self.x_dim} columns"
            )
        if self.architecture == "conv":
            from .conv import check_image_shape

            try:
                check_image_shape(self.image_shape)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if POSTERIORS[self.posterior].support == "real" and (
            PRIORS[self.prior](1).support == "positive"
        ):
            raise ConfigError(
                f"posterior {self.posterior!r} puts mass on z <= 0 where prior {self.prior!r} has "
                "none; use a positive posterior (exponential, weibull, lognormal) or another prior"
            )

    def supports_estimator(self, estimator: str) -> bool:
        """Estimators A, iwae and score-function always work; B needs an analytic KL."""
        if estimator in ("A", "iwae", SCORE_FUNCTION):
            return True
        return estimator == "B" and analytic_kl_available(self.posterior, self.prior)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["image_shape"] is not None:
            d["image_shape"] = list(d["image_shape"])
        return d


THETA_LOGVAR_INIT = 2 * math.log(0.01)
"""Initial log-variance of q(theta) in full VB: a standard deviation of 0.01 (the init scale)."""


class VAE(nn.Module):
    """Encoder q(z|x), decoder p(x|z) and prior p(z), with the paper's estimators of the bound."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.architecture == "conv":
            from .conv import ConvDecoder, ConvEncoder

            shape = c.image_shape
            assert shape is not None  # ModelConfig checked it (check_image_shape)
            self.encoder: Encoder = ConvEncoder(
                POSTERIORS[c.posterior], shape, c.latent_dim, c.hidden, c.activation
            )
            self.decoder: Decoder = ConvDecoder(
                LIKELIHOODS[c.likelihood], c.latent_dim, shape, c.hidden, c.activation
            )
        else:
            self.encoder = Encoder(
                POSTERIORS[c.posterior], c.x_dim, c.latent_dim, c.hidden, c.depth, c.activation
            )
            self.decoder = Decoder(
                LIKELIHOODS[c.likelihood], c.latent_dim, c.x_dim, c.hidden, c.depth, c.activation
            )
        if c.dropout:
            for net in (self.encoder.net, self.decoder.net):
                add_dropout(net, c.dropout)
        #: the dropout layers (``--dropout``), whose masks :meth:`dropout_noise` draws
        self.dropouts = [m for m in self.modules() if isinstance(m, Dropout)]
        self.prior = PRIORS[c.prior](c.latent_dim)
        if c.parameter_posterior:
            # log-variances of q(theta) for every decoder weight (full VB, Appendix F); the
            # decoder's own weights are the posterior means.
            self.theta_logvar = nn.ParameterDict(
                {
                    n.replace(".", "_"): nn.Parameter(torch.full_like(p, THETA_LOGVAR_INIT))
                    for n, p in self.decoder.named_parameters()
                }
            )

    @contextlib.contextmanager
    def dropout_noise(self, generator: torch.Generator | None) -> Iterator[None]:
        """Draw the dropout masks (``--dropout``) from ``generator`` while in this context."""
        for m in self.dropouts:
            m.generator = generator
        try:
            yield
        finally:
            for m in self.dropouts:
                m.generator = None

    @property
    def has_parameter_posterior(self) -> bool:
        return self.config.parameter_posterior

    def sample_decoder_parameters(self, generator: torch.Generator | None = None) -> dict:
        """One reparameterized draw theta~ = mu + sigma * eps of the decoder's weights (full VB)."""
        out = {}
        for n, mu in self.decoder.named_parameters():
            lv = self.theta_logvar[n.replace(".", "_")]
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            out[n] = mu + torch.exp(0.5 * lv) * eps
        return out

    # ----------------------------------------------------------------- set-up
    def init_parameters(self, std: float = 0.01, generator: torch.Generator | None = None) -> None:
        """Draw every weight and bias from N(0, std^2), the paper's initialisation (section 5)."""
        with torch.no_grad():
            for p in [*self.encoder.parameters(), *self.decoder.parameters()]:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _as_tensor(self, x: TensorLike) -> Tensor:
        p = next(self.parameters())
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(
            device=p.device, dtype=p.dtype
        )

    # ----------------------------------------------------------------- the user API
    def encode(self, x: TensorLike) -> tuple[Tensor, ...]:
        """Posterior parameters for x: (mu, logvar) for the Gaussian posterior."""
        return self.encoder(self._as_tensor(x))

    def decode(self, z: TensorLike) -> tuple[Tensor, ...]:
        """Likelihood parameters for z: (logits,) for Bernoulli, (mean, logvar) for Gaussian."""
        return self.decoder(self._as_tensor(z))

    def decode_mean(self, z: TensorLike) -> Tensor:
        """E[x|z]: the image a latent point decodes to."""
        return self.decoder.likelihood.mean(self.decode(z))

    def elbo(
        self,
        x: TensorLike,
        estimator: str = "B",
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-datapoint lower bound (nats) by SGVB estimator A or B with L = ``samples``."""
        if estimator == "iwae":
            raise ConfigError("'iwae' is not an ELBO estimator; use VAE.iwae_bound (or A or B)")
        if estimator == SCORE_FUNCTION:
            raise ConfigError(
                "'score-function' estimates the ELBO's gradient, not its value; use A or B"
            )
        if estimator not in ESTIMATORS or not self.config.supports_estimator(estimator):
            raise ConfigError(
                f"estimator {estimator!r} is not available for this posterior and prior; use 'A'"
            )
        return elbo(
            self.encoder,
            self.decoder,
            self.prior,
            self._as_tensor(x),
            estimator,
            samples,
            generator,
        )

    def elbo_terms(
        self,
        x: TensorLike,
        estimator: str = "B",
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-datapoint (reconstruction, KL) of the bound, elbo = rec - KL (same noise as elbo)."""
        if estimator not in ESTIMATORS or not self.config.supports_estimator(estimator):
            raise ConfigError(f"estimator {estimator!r} has no (reconstruction, KL) split here")
        x = self._as_tensor(x)
        return elbo_terms(self.encoder, self.decoder, self.prior, x, estimator, samples, generator)

    def bound_terms(
        self,
        x: TensorLike,
        estimator: str = "B",
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> BoundTerms:
        """:meth:`elbo` (the same number, on the same noise) with its two terms, the KL per
        latent dimension and the posterior centers (:func:`aevb.diagnostics.bound_terms`)."""
        if estimator not in ESTIMATORS or not self.config.supports_estimator(estimator):
            raise ConfigError(
                f"estimator {estimator!r} is not available for this posterior and prior; use 'A'"
            )
        x = self._as_tensor(x)
        return bound_terms(self.encoder, self.decoder, self.prior, x, estimator, samples, generator)

    @torch.no_grad()
    def init_decoder_bias(self, data_mean: TensorLike) -> None:
        """Set the decoder's mean bias to logit(data mean) (Burda et al.).

        With the weights near zero the decoder then starts at the data's mean image. For a
        likelihood with an unconstrained mean (gaussian-linear) the bias is the mean itself.
        """
        m = self._as_tensor(data_mean).reshape(-1)
        if m.numel() != self.config.x_dim:
            raise ConfigError(f"the data mean has {m.numel()} values, x_dim {self.config.x_dim}")
        if getattr(self.decoder.likelihood, "sigmoid_mean", True):
            m = torch.logit(m.clamp(1e-3, 1 - 1e-3))
        head = getattr(self.decoder.net, "head", None)
        bias = getattr(head, "bias", None)
        if bias is None or bias.numel() < m.numel() or bias.dim() != 1:
            raise ConfigError(
                "a decoder bias at the data mean needs the MLP decoder (--architecture mlp)"
            )
        bias[: m.numel()].copy_(m)

    def iwae_bound(
        self, x: TensorLike, samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Per-datapoint importance-weighted bound with K = ``samples`` (Burda et al. 2015)."""
        return self.iwae_surrogate(x, samples, generator)[0]

    def iwae_surrogate(
        self,
        x: TensorLike,
        samples: int = 1,
        generator: torch.Generator | None = None,
        *,
        dreg: bool = False,
        kl_weight: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """A surrogate with the IWAE bound's gradient (standard or DReG, the latent part of the
        log-weights weighted by ``kl_weight``) and the bound, per datapoint
        (:func:`aevb.estimators.iwae_surrogate`): descend -surrogate, report the bound."""
        if int(samples) < 1:
            raise ConfigError(f"the IWAE bound needs samples >= 1, got {samples}")
        return iwae_surrogate(
            self.encoder,
            self.decoder,
            self.prior,
            self._as_tensor(x),
            samples,
            generator,
            dreg=dreg,
            kl_weight=kl_weight,
        )

    def objective(
        self,
        x: TensorLike,
        estimator: str = "B",
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-datapoint training objective: the ELBO by estimator A or B, or the IWAE bound.

        For "score-function" it is the surrogate of :meth:`score_function` (no baseline), whose
        gradient is that estimator's and whose value is not a bound.
        """
        if estimator == "iwae":
            return self.iwae_bound(x, samples, generator)
        if estimator == SCORE_FUNCTION:
            return self.score_function(x, samples, generator)[0]
        return self.elbo(x, estimator, samples, generator)

    def score_function(
        self,
        x: TensorLike,
        samples: int = 1,
        generator: torch.Generator | None = None,
        baseline: Tensor | float = 0.0,
    ) -> tuple[Tensor, Tensor]:
        """Per-datapoint (surrogate, bound) of the score-function estimator (PAPER.md section 2).

        The surrogate's gradient is the REINFORCE gradient of the ELBO wrt the encoder and the
        gradient of log p(x|z) wrt the decoder (:func:`aevb.estimators.score_function`); the
        bound is estimator A's value on the same draws.
        """
        x = self._as_tensor(x)
        return score_function(
            self.encoder, self.decoder, self.prior, x, samples, generator, baseline
        )

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decoder means for n latent points drawn from the prior (Figure 5)."""
        z = self.prior.rsample(
            n, generator, device=self.device, dtype=next(self.parameters()).dtype
        )
        return self.decode_mean(z)

    @torch.no_grad()
    def reconstruct(self, x: TensorLike) -> Tensor:
        """Decoder mean at the posterior's center (its mean for the Gaussian, else its median)."""
        return self.decode_mean(self.encoder.posterior(self._as_tensor(x)).center())

    def log_likelihood(
        self,
        x: TensorLike,
        method: str = "is",
        *,
        samples: int | None = None,
        chunk_size: int = 4096,
        generator: torch.Generator | None = None,
        **hmc_options: Any,
    ) -> Tensor:
        """Per-datapoint estimate of the marginal log-likelihood log p(x) (nats).

        ``method="is"``: importance sampling with the encoder as proposal, K = ``samples`` (default
        5 000) draws per point, decoded ``chunk_size`` (z, x) pairs at a time. ``method="hmc"``:
        the paper's Appendix D estimator with ``samples`` (default 50) HMC posterior draws per
        point; ``hmc_options`` (leapfrog_steps, warmup, target_accept, ...) go to
        :func:`aevb.marginal.hmc_marginal`. Both live in :mod:`aevb.marginal`, which also returns
        diagnostics (effective sample sizes, acceptance rates).
        """
        from . import marginal

        if method not in ("is", "hmc"):
            raise ConfigError(f"unknown marginal-likelihood method {method!r}; use 'is' or 'hmc'")
        xt = self._as_tensor(x)
        res: marginal.ISResult | marginal.HMCMarginalResult
        try:
            if method == "is":
                if hmc_options:
                    raise ValueError(f"options {sorted(hmc_options)} only apply to method 'hmc'")
                res = marginal.importance_sampling(
                    self, xt, samples or 5000, chunk_size=chunk_size, generator=generator
                )
            else:
                res = marginal.hmc_marginal(
                    self, xt, posterior_samples=samples or 50, generator=generator, **hmc_options
                )
        except (ValueError, TypeError) as e:
            raise ConfigError(f"log_likelihood: {e}") from None
        return res.log_px
