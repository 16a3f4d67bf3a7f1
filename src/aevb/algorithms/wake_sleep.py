"""Wake-sleep (Hinton et al. 1995; PAPER.md section 8) as a training step for the one engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..fast import FastWakeSleepStep
from ..model import VAE
from .base import Algorithm

if TYPE_CHECKING:
    from ..settings import TrainConfig


def sample_x(model: VAE, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Ancestral draws (z, x) from the generative model: z ~ p(z), x ~ p(x|z).

    Bernoulli pixels are drawn as x = [u < y] with one uniform u per pixel: the Bernoulli(y) draw
    of ``torch.bernoulli``, several times faster on CPU (its kernel with a tensor of probabilities
    is serial). :class:`aevb.fast.FastWakeSleepStep` draws the same way.
    """
    p = next(model.parameters())
    z = model.prior.rsample(n, generator, device=p.device, dtype=p.dtype)
    params = model.decoder(z)
    if model.config.likelihood == "bernoulli":
        y = torch.sigmoid(params[0])
        u = torch.rand(y.shape, generator=generator, device=p.device, dtype=p.dtype)
        x = (u < y).to(p.dtype)
    else:
        mean, logvar = params
        noise = torch.randn(mean.shape, generator=generator, device=p.device, dtype=p.dtype)
        x = mean + torch.exp(0.5 * logvar) * noise
    return z, x


class WakeSleep(Algorithm):
    """Wake-sleep (Hinton et al. 1995) with the same recognition model as AEVB.

    Wake: the generative parameters ascend log p(x, z) with z ~ q(z|x) held fixed. Sleep: (z, x) are
    drawn from the generative model (as many as the minibatch) and the recognition parameters ascend
    log q(z|x). The two gradients touch disjoint parameters, so one optimizer step applies both. The
    reported bound is AEVB's, computed with the recognition model, so curves compare as in Figure 2.
    Like AEVB, the step runs on the fast engine (:class:`aevb.fast.FastWakeSleepStep`, the same
    draws and gradients) where it covers the model; ``engine`` says which, ``engine_note`` why not.
    """

    name = "wake-sleep"

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        super().__init__(model, config, n_train, lr)
        self.use_fast("A", lambda: FastWakeSleepStep(model, self.optimizer))

    def step(self, x: Tensor, generator: torch.Generator, index: Tensor | None = None) -> Tensor:
        if self.fast is not None:
            return self.fast.step(x, generator)
        m = self.model
        q = m.encoder.posterior(x)
        with torch.no_grad():
            z = q.rsample(1, generator)[0]
            log_q_wake = q.log_prob(z)
        log_joint = m.decoder.log_prob(x, z) + m.prior.log_prob(z)
        with torch.no_grad():
            z_dream, x_dream = sample_x(m, len(x), generator)
        log_q_sleep = m.encoder.posterior(x_dream).log_prob(z_dream)
        loss = -(log_joint.mean() + log_q_sleep.mean())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # Estimator A of the bound at this minibatch, from the wake pass (no extra cost).
        return (log_joint.detach() - log_q_wake).mean()
