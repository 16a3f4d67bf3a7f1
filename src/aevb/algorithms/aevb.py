"""Algorithm 1 (AEVB): a gradient step on the SGVB estimate of the minibatch bound."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import distributed, hardware
from ..fast import FastStep
from ..model import VAE
from .base import Algorithm

if TYPE_CHECKING:
    from ..settings import TrainConfig

SCORE_BASELINE_DECAY = 0.9
"""Decay of the score-function estimator's running-mean baseline: b <- 0.9 b + 0.1 mean(f)."""


class AEVB(Algorithm):
    """Algorithm 1: a gradient step on the SGVB estimate of the minibatch bound.

    The step runs on the fast engine (:mod:`aevb.fast`: hand-written forward and backward, flat
    buffers, one fused optimizer kernel) when it covers the model, else on autograd; both compute
    the same estimator from the same noise. ``engine`` says which; ``engine_note`` why not fast.
    With a KL weight (``TrainConfig.kl_weight``) the step ascends E[log p(x|z)] - beta KL.
    With ``estimator="score-function"`` the step follows the REINFORCE gradient instead (always on
    autograd), optionally with a running-mean baseline b (``score_baseline``): an exponential
    moving average, decay :data:`SCORE_BASELINE_DECAY`, of the minibatch mean of f = log p(x, z)
    - log q(z|x), started at the first minibatch's mean (the first step has none), saved in
    checkpoints.
    """

    name = "aevb"
    has_bf16 = True

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        super().__init__(model, config, n_train, lr)
        c = config
        est = c.estimator
        assert est is not None  # TrainConfig resolved it
        device_type = next(model.parameters()).device.type
        emulate = c.precision == "bf16" and hardware.emulated_bf16(device_type)
        self.use_fast(
            est,
            lambda: FastStep(
                *(model, self.optimizer, est, c.samples, c.precision),
                dreg=c.iwae_gradient == "dreg",
                emulate_bf16=emulate,
            ),
            bf16=True,
        )
        self.kl_samples = 0  # training samples seen, for the KL warm-up (saved in checkpoints)
        self.baseline: Tensor | None = None  # the score-function baseline (saved in checkpoints)

    def step(self, x: Tensor, generator: torch.Generator, index: Tensor | None = None) -> Tensor:
        if not self.model.dropouts:
            return self._step(x, generator)
        with self.model.dropout_noise(generator):  # --dropout's masks from the run's noise
            return self._step(x, generator)

    def _step(self, x: Tensor, generator: torch.Generator) -> Tensor:
        c = self.config
        if c.kl_weighted:
            return self._weighted_step(x, generator)
        if self.fast is not None:
            return self.fast.step(x, generator)
        if c.estimator == "score-function" or c.iwae_gradient == "dreg":  # iwae's, with dreg
            return self._surrogate_step(x, generator)
        assert c.estimator is not None  # TrainConfig resolved it
        with _autocast(c.precision, x):
            bound = self.model.objective(x, c.estimator, c.samples, generator)
        bound = _wide(bound).mean()  # the bound is accumulated in float32 under bf16
        self.optimizer.zero_grad(set_to_none=True)
        (-bound).backward()
        self.optimizer.step()
        return bound.detach()

    def _weighted_step(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A step on E[log p(x|z)] - beta KL; the bound returned is still the beta = 1 bound."""
        c = self.config
        beta = c.kl_weight(self.kl_samples)
        self.kl_samples += len(x) * distributed.world_size()  # global samples
        if self.fast is not None:
            return self.fast.step(x, generator, kl_weight=beta)
        if c.estimator == "iwae":  # beta weights the log-weights' latent part
            return self._surrogate_step(x, generator, beta)
        assert c.estimator is not None  # TrainConfig resolved it
        with _autocast(c.precision, x):
            rec, kl = self.model.elbo_terms(x, c.estimator, c.samples, generator)
        rec, kl = _wide(rec), _wide(kl)
        self.optimizer.zero_grad(set_to_none=True)
        (beta * kl - rec).mean().backward()
        self.optimizer.step()
        return (rec - kl).mean().detach()

    def _surrogate_step(
        self, x: Tensor, generator: torch.Generator, kl_weight: float = 1.0
    ) -> Tensor:
        """A step on a surrogate whose gradient is the estimator's: the score function's (the
        bound returned is the ELBO, A's value) or IWAE's, DReG or weighted by ``kl_weight``
        (the IWAE bound)."""
        c = self.config
        with _autocast(c.precision, x):
            if c.estimator == "iwae":
                dreg = c.iwae_gradient == "dreg"
                surrogate, f = self.model.iwae_surrogate(
                    x, c.samples, generator, dreg=dreg, kl_weight=kl_weight
                )
            else:
                b = self.baseline if c.score_baseline and self.baseline is not None else 0.0
                surrogate, f = self.model.score_function(x, c.samples, generator, b)
        self.optimizer.zero_grad(set_to_none=True)
        (-_wide(surrogate).mean()).backward()
        self.optimizer.step()
        bound = _wide(f).mean()
        if c.score_baseline:
            mean = bound.clone()
            if self.data_parallel:  # every rank keeps the same baseline
                distributed.all_reduce_mean_(mean)
            d = SCORE_BASELINE_DECAY
            self.baseline = mean if self.baseline is None else d * self.baseline + (1 - d) * mean
        return bound

    def extra_metrics(self) -> dict:
        c = self.config
        return {"kl_weight": c.kl_weight(self.kl_samples)} if c.kl_weighted else {}

    def state_tensors(self) -> dict[str, Tensor]:
        out = {}
        if self.config.kl_weighted:
            out["kl_samples"] = torch.tensor(self.kl_samples, dtype=torch.int64)
        if self.baseline is not None:
            out["score_baseline"] = self.baseline.detach().clone().cpu()
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if "kl_samples" in tensors:
            self.kl_samples = int(tensors["kl_samples"])
        if "score_baseline" in tensors:
            p = next(self.model.parameters())
            self.baseline = tensors["score_baseline"].to(p.device, p.dtype)


def _wide(t: Tensor) -> Tensor:
    """t in float32 where autocast left it in a 16-bit type; else t itself."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _autocast(precision: str, x: Tensor) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast of an autograd training step (``precision="bf16"``), else no context."""
    if precision == "bf16" and x.device.type in ("cuda", "cpu"):
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
