"""Monte Carlo EM (PAPER.md section 8, Appendix E) as a training step for the one engine.

No encoder is used. Every training point owns a persistent HMC chain z_i (initialised from the
prior p(z) with the run's seed; the paper does not say how chains start) and its own leapfrog step
size. For each minibatch:

1. E-step: one HMC transition of ``leapfrog`` (10) leapfrog steps on p(z|x) ∝ p(z) p(x|z)
   for each point's chain; the step size is tuned automatically, per chain, towards
   ``target_accept`` (90 %) by a Robbins-Monro update of its logarithm after each transition;
2. M-step: ``updates`` (5) optimizer steps on the decoder's parameters with that sample,
   ascending (1/M) Σ log p(x_i, z_i) − ‖θ‖²/(2N) (the same N(0, I) weight prior as AEVB).

Because the target moves as θ learns, the step sizes keep adapting for the whole run; chains and
step sizes are saved with every checkpoint, so a resumed run continues exactly. MCEM has no lower
bound: progress is reported as marginal-likelihood estimates (Appendix D,
:func:`aevb.marginal.hmc_marginal`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..hmc import hmc_step, log_prob_and_grad
from ..model import VAE
from ..options import above, option, positive, validate
from ..seeds import split_seed
from .base import Algorithm

if TYPE_CHECKING:
    from ..settings import TrainConfig


def _open_unit(v: float) -> str | None:
    return None if 0.0 < v < 1.0 else "a number in (0, 1)"


@dataclass
class MCEMOptions:
    """Monte Carlo EM's own options (``--mcem-leapfrog``, ...)."""

    prefix = "mcem_"

    leapfrog: int = option(10, "MCEM: leapfrog steps per HMC transition", check=positive)
    updates: int = option(5, "MCEM: parameter updates per sample (M-steps)", check=positive)
    target_accept: float = option(
        0.9, "MCEM: HMC acceptance rate the step sizes aim at", check=_open_unit
    )
    step_size: float = option(
        0.1, "MCEM: initial leapfrog step size of every chain", check=above(0)
    )
    adapt_rate: float = option(1.0, "MCEM: Robbins-Monro rate of the log step size", check=above(0))

    def __post_init__(self) -> None:
        validate(self)


class MonteCarloEM(Algorithm):
    """Monte Carlo EM with persistent per-datapoint HMC chains (Appendix E)."""

    name = "mcem"
    Options = MCEMOptions
    needs_index = True
    has_bound = False

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        super().__init__(model, config, n_train, lr)
        p = next(model.parameters())
        g = torch.Generator(device=p.device).manual_seed(split_seed(config.seed, 8))
        self.z = model.prior.rsample(n_train, g, device=p.device, dtype=p.dtype)

        def full(v: float) -> Tensor:
            return torch.full((n_train,), v, device=p.device, dtype=p.dtype)

        self.step_size = full(self.options.step_size)
        self.accept = full(float("nan"))

    def parameter_groups(self) -> Iterable:
        """The decoder alone: MCEM trains no encoder."""
        return self.model.decoder.parameters()

    def _log_joint(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        m = self.model

        def log_joint(z: Tensor) -> Tensor:
            return m.prior.log_prob(z) + m.decoder.log_prob(x, z)

        return log_joint

    def step(self, x: Tensor, generator: torch.Generator, index: Tensor | None = None) -> Tensor:
        c = self.options
        if index is None:
            raise ValueError("Monte Carlo EM needs the minibatch's indices (index=...)")
        target = self._log_joint(x)
        z, eps = self.z[index], self.step_size[index]
        lp, grad = log_prob_and_grad(target, z)
        z, lp, _, acc = hmc_step(target, z, lp, grad, eps, c.leapfrog, generator)
        self.z[index] = z
        self.step_size[index] = eps * torch.exp(c.adapt_rate * (acc - c.target_accept))
        self.accept[index] = acc
        for _ in range(c.updates):
            loss = -self.model.decoder.log_prob(x, z).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return lp.mean()  # log p(x, z) at the sample, before the M-step

    def extra_metrics(self) -> dict:
        """Mean acceptance probability of the latest transition of every visited chain."""
        seen = ~torch.isnan(self.accept)
        acc = float(self.accept[seen].mean()) if bool(seen.any()) else None
        return {"hmc_accept_rate": acc, "hmc_step_size": float(self.step_size.median())}

    def state_tensors(self) -> dict[str, Tensor]:
        return {"z": self.z, "step_size": self.step_size, "accept": self.accept}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.z.copy_(tensors["z"])
        self.step_size.copy_(tensors["step_size"])
        self.accept.copy_(tensors["accept"])
