"""Full variational Bayes (Appendix F; PAPER.md section 9) as a training step for the one engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.func import functional_call

from ..diagnostics import BoundTerms, bound_terms
from ..errors import ConfigError
from ..estimators import elbo
from ..model import VAE
from ..networks import Decoder
from ..options import option, positive, validate
from .base import Algorithm

if TYPE_CHECKING:
    from ..settings import TrainConfig


@dataclass
class FullVBOptions:
    """Full VB's own options (``--full-vb-eval``, ``--full-vb-eval-samples``)."""

    prefix = "full_vb_"

    eval: Literal["mean", "sample"] = option(
        "mean", "full VB: the bound at the posterior-mean weights, or averaged over weight draws"
    )
    eval_samples: int = option(
        10, "full VB, --full-vb-eval sample: draws of the weights averaged", check=positive
    )

    def __post_init__(self) -> None:
        validate(self)


class FullVB(Algorithm):
    """Full variational Bayes (Appendix F): a diagonal Gaussian posterior over decoder weights.

    q(theta) = N(mu_theta, diag(exp(logvar_theta))) with a N(0, I) hyperprior. Each step draws one
    theta~ by the reparameterization trick and ascends, per datapoint,
        (1/M) sum_i L(theta~, phi; x_i) - KL(q(theta) || p(theta)) / N,
    which is the paper's whole-dataset estimator divided by N, with the parameter KL analytic. The
    decoder's own weights are mu_theta, so the saved model is the posterior mean; the log-variances
    are the model's ``theta_logvar`` buffers-as-parameters (saved with the weights).
    The encoder's phi is a point estimate; it keeps the N(0, I) weight prior of AEVB if enabled.
    """

    name = "full-vb"
    Options = FullVBOptions

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        if not model.has_parameter_posterior:
            raise ConfigError("full VB needs a model built with parameter_posterior=True")
        super().__init__(model, config, n_train, lr)

    def parameter_groups(self) -> list[dict]:
        """The encoder with the weight prior's decay; the decoder's q(theta) without it (its prior
        enters through the analytic KL)."""
        m = self.model
        return [
            {"params": list(m.encoder.parameters()), "weight_decay": self.weight_decay},
            {
                "params": list(m.decoder.parameters()) + list(m.theta_logvar.values()),
                "weight_decay": 0.0,
            },
        ]

    def parameter_kl(self) -> Tensor:
        """KL(q(theta) || N(0, I)) summed over every decoder weight."""
        total = torch.zeros((), device=self.model.device)
        for name, mu in self.model.decoder.named_parameters():
            lv = self.model.theta_logvar[name.replace(".", "_")]
            total = total + 0.5 * (torch.exp(lv) + mu**2 - 1.0 - lv).sum()
        return total

    @torch.no_grad()
    def extra_metrics(self) -> dict:
        """The parameter KL per datapoint: subtract it from the bound for the full-VB objective."""
        return {"param_kl_per_datapoint": float(self.parameter_kl()) / self.n_train}

    def step(self, x: Tensor, generator: torch.Generator, index: Tensor | None = None) -> Tensor:
        m, c = self.model, self.config
        assert c.estimator is not None  # TrainConfig resolved it
        theta = m.sample_decoder_parameters(generator)
        bound = _elbo_with_decoder(m, theta, x, c.estimator, c.samples, generator).mean()
        loss = -bound + self.parameter_kl() / self.n_train
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return bound.detach()

    @torch.no_grad()
    def evaluate(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The bound at the posterior mean of theta (option ``eval="mean"``) or averaged over
        ``eval_samples`` draws of theta (``"sample"``)."""
        c = self.config
        assert c.estimator is not None  # TrainConfig resolved it
        if self.options.eval == "mean":
            return self.model.elbo(x, c.estimator, c.samples, generator)
        draws = [
            _elbo_with_decoder(
                self.model,
                self.model.sample_decoder_parameters(generator),
                x,
                c.estimator,
                c.samples,
                generator,
            )
            for _ in range(self.options.eval_samples)
        ]
        return torch.stack(draws).mean(0)

    @torch.no_grad()
    def evaluate_terms(self, x: Tensor, generator: torch.Generator) -> BoundTerms:
        """:meth:`evaluate`'s bound with its two terms, on the same draws (each term averaged
        over the draws of theta for ``eval="sample"``)."""
        c = self.config
        if self.options.eval == "mean":
            return self.model.bound_terms(x, self.bound_estimator(), c.samples, generator)
        m, est = self.model, self.bound_estimator()
        draws = []
        for _ in range(self.options.eval_samples):
            dec: Any = _DecoderAt(m.decoder, m.sample_decoder_parameters(generator))
            draws.append(bound_terms(m.encoder, dec, m.prior, x, est, c.samples, generator))
        return BoundTerms.mean_of(draws)


class _DecoderAt:
    """A decoder evaluated at given weights ``theta`` (functional, differentiable in theta)."""

    def __init__(self, decoder: Decoder, theta: dict[str, Tensor]) -> None:
        self.decoder, self.theta = decoder, theta

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        params = functional_call(self.decoder, self.theta, (z,))
        return self.decoder.likelihood.log_prob(params, x)


def _elbo_with_decoder(
    model: VAE,
    theta: dict[str, Tensor],
    x: Tensor,
    estimator: str,
    samples: int,
    generator: torch.Generator | None,
) -> Tensor:
    """The per-datapoint bound with the decoder's weights replaced by ``theta``."""
    dec = _DecoderAt(model.decoder, theta)
    return elbo(model.encoder, dec, model.prior, x, estimator, samples, generator)  # type: ignore[arg-type]
