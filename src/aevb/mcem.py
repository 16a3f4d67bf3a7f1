"""Monte Carlo EM (PAPER.md section 8, Appendix E) as a training step for the one engine.

No encoder is used. Every training point owns a persistent HMC chain z_i (initialised from the
prior p(z) with the run's seed; the paper does not say how chains start) and its own leapfrog step
size. For each minibatch:

1. E-step: one HMC transition of ``mcem_leapfrog`` (10) leapfrog steps on p(z|x) ∝ p(z) p(x|z)
   for each point's chain; the step size is tuned automatically, per chain, towards
   ``mcem_target_accept`` (90 %) by a Robbins-Monro update of its logarithm after each transition;
2. M-step: ``mcem_updates`` (5) optimizer steps on the decoder's parameters with that sample,
   ascending (1/M) Σ log p(x_i, z_i) − ‖θ‖²/(2N) (the same N(0, I) weight prior as AEVB).

Because the target moves as θ learns, the step sizes keep adapting for the whole run; chains and
step sizes are saved with every checkpoint, so a resumed run continues exactly. MCEM has no lower
bound: progress is reported as marginal-likelihood estimates (Appendix D,
:func:`aevb.marginal.hmc_marginal`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .hmc import hmc_step, log_prob_and_grad
from .model import VAE
from .training import ALGORITHMS, Algorithm, TrainConfig, _split_seed, make_optimizer


class MonteCarloEM(Algorithm):
    """Monte Carlo EM with persistent per-datapoint HMC chains (Appendix E)."""

    name = "mcem"
    needs_index = True
    has_bound = False

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        self.model = model
        self.config = config
        self.n_train = n_train
        wd = 1.0 / n_train if config.weight_prior else 0.0
        self.optimizer = make_optimizer(model.decoder.parameters(), config.optimizer, lr, wd)
        p = next(model.parameters())
        g = torch.Generator(device=p.device).manual_seed(_split_seed(config.seed, 8))
        self.z = model.prior.rsample(n_train, g, device=p.device, dtype=p.dtype)

        def full(v: float) -> Tensor:
            return torch.full((n_train,), v, device=p.device, dtype=p.dtype)

        self.step_size = full(config.mcem_step_size)
        self.accept = full(float("nan"))

    def _log_joint(self, x: Tensor):
        m = self.model

        def log_joint(z: Tensor) -> Tensor:
            return m.prior.log_prob(z) + m.decoder.log_prob(x, z)

        return log_joint

    def step(self, x: Tensor, generator: torch.Generator, index: Tensor | None = None) -> Tensor:
        c = self.config
        if index is None:
            raise ValueError("Monte Carlo EM needs the minibatch's indices (index=...)")
        target = self._log_joint(x)
        z, eps = self.z[index], self.step_size[index]
        lp, grad = log_prob_and_grad(target, z)
        z, lp, _, acc = hmc_step(target, z, lp, grad, eps, c.mcem_leapfrog, generator)
        self.z[index] = z
        self.step_size[index] = eps * torch.exp(c.mcem_adapt_rate * (acc - c.mcem_target_accept))
        self.accept[index] = acc
        for _ in range(c.mcem_updates):
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


ALGORITHMS["mcem"] = MonteCarloEM
