"""A deterministic auto-encoder: the VAE's encoder and decoder, trained on reconstruction alone.

The baseline a VAE is compared with: the code of x is the encoder's mean mu(x) (the posterior
family's center; nothing is sampled) and the step descends the reconstruction loss

    -log p(x | z = mu(x))

with the run's likelihood (Bernoulli cross-entropy for binary or grey data, the Gaussian's
negative log-density for Frey Face), plus the same N(0, I) weight prior as AEVB (a weight decay of
1/N, :mod:`aevb.training`). There is no KL term and no lower bound: the value a step returns, and
what the Trainer logs at each evaluation as ``{split}_reconstruction``, is the mean
log p(x | z = mu(x)) per datapoint in nats (higher is better, as a bound is). The encoder's
second head (the posterior's log-variance) gets no gradient and is never trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import ConfigError
from ..model import VAE
from .aevb import _autocast, _wide
from .base import Algorithm

if TYPE_CHECKING:
    from ..settings import TrainConfig

NOT_FAST = (
    "the fast engine covers the VAE's estimators A and B; the auto-encoder's loss has no noise "
    "and no KL term"
)


def code(model: VAE, x: Tensor) -> Tensor:
    """The auto-encoder's code of x: the encoder's mean mu(x) (the posterior family's center)."""
    return model.encoder.posterior(x).center()


def reconstruction(model: VAE, x: Tensor) -> Tensor:
    """Per-datapoint log p(x | z = mu(x)) in nats: the auto-encoder's (negated) loss."""
    return model.decoder.log_prob(x, code(model, x))


class AutoEncoder(Algorithm):
    """A deterministic auto-encoder on the VAE's networks: minimises -log p(x | z = mu(x)).

    No noise is drawn (the generator is unused), so two steps from the same state on the same
    minibatch give the same parameters. ``has_bound`` is False: evaluations log
    ``{split}_reconstruction``, the mean log p(x | z = mu(x)) per datapoint, instead of a bound.
    """

    name = "autoencoder"
    has_bf16 = True
    has_bound = False
    reports = "reconstruction"

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        super().__init__(model, config, n_train, lr)
        if config.engine == "fast":
            raise ConfigError(f"engine 'fast' cannot train the auto-encoder: {NOT_FAST}; use auto")
        self.engine_note = f"autograd step ({NOT_FAST})"

    def step(self, x: Tensor, generator: torch.Generator, index: Tensor | None = None) -> Tensor:
        """One step on the minibatch's mean -log p(x | z = mu(x)); returns its mean log p(x|mu)."""
        with _autocast(self.config.precision, x):
            rec = reconstruction(self.model, x)
        rec = _wide(rec).mean()
        self.optimizer.zero_grad(set_to_none=True)
        (-rec).backward()
        self.optimizer.step()
        return rec.detach()

    @torch.no_grad()
    def evaluate(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Per-datapoint log p(x | z = mu(x)) (no noise): the test reconstruction."""
        return reconstruction(self.model, x)
