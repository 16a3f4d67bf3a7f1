"""What every training algorithm is: the step it takes on a minibatch, and what the Trainer reads.

The Trainer (:mod:`aevb.training`) owns the loop, the data order, evaluation, checkpoints and
resume; an algorithm owns its parameters' optimizer and the step. Every attribute the Trainer or
:mod:`aevb.distributed` reads is declared here, with its default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import Tensor

from .. import compat
from ..diagnostics import BoundTerms
from ..errors import ConfigError
from ..estimators import ESTIMATORS
from ..fast import FastStep, unsupported_optimizer, unsupported_reason
from ..model import VAE

if TYPE_CHECKING:
    from ..settings import TrainConfig

OPTIMIZERS = ("adagrad", "adam")


def make_optimizer(
    params: Iterable, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adagrad (the paper's) or Adam, fused; ``weight_decay`` = 1/N is the N(0, I) weight prior.

    ``params`` may be parameter groups (dicts) with their own ``weight_decay``. Fused where torch's
    fused optimizer works for the parameters' devices, else torch's single-tensor update (see
    :func:`aevb.compat.optimizer_kwargs`).
    """
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    kw = compat.optimizer_kwargs(name, {p.device.type for p in tensors})
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, **kw)
    if name == "adam":
        # Adam's weight_decay is L2 on the gradient (not AdamW), i.e. the same Gaussian prior.
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


class AlgorithmOptionsClass(Protocol):
    """What an algorithm's ``Options`` is: a dataclass whose ``prefix`` spells its flat names."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    prefix: str


class Algorithm:
    """One training step on a minibatch; subclasses differ only in the step they take."""

    #: The name ``--algorithm`` takes (the key in :data:`aevb.algorithms.ALGORITHMS`).
    name: ClassVar[str] = ""
    #: The algorithm's own options (a dataclass of :func:`aevb.options.option` fields), or None;
    #: its ``prefix`` (``"mcem_"``) spells them in flat settings and flags (``--mcem-leapfrog``).
    Options: ClassVar[type[AlgorithmOptionsClass] | None] = None
    #: Whether the algorithm has a lower bound to report (Monte Carlo EM has none).
    has_bound: ClassVar[bool] = True
    #: Without a bound: what :meth:`evaluate` returns per point, logged as ``{split}_{reports}``
    #: (the auto-encoder's "reconstruction"); None logs nothing in its place (Monte Carlo EM).
    reports: ClassVar[str | None] = None
    #: Whether the step keeps per-datapoint state, indexed by the minibatch's rows (MCEM's chains).
    needs_index: ClassVar[bool] = False
    #: Whether the step honours ``precision="bf16"`` (its matrix products in bfloat16).
    has_bf16: ClassVar[bool] = False

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        self.model = model
        self.config = config
        self.n_train = n_train
        self.options: Any = config.options_for(type(self))
        #: "fast" when the step runs on :mod:`aevb.fast`, else "autograd"; engine_note says why.
        self.engine = "autograd"
        self.engine_note: str | None = None
        self.fast: FastStep | None = None
        #: Set by :func:`aevb.distributed.make_data_parallel`: whether gradients are averaged over
        #: ranks, and whether each rank draws its share of the global minibatch's noise.
        self.data_parallel = False
        self.noise_sharded = False
        # the N(0, I) weight prior per datapoint (1/N), plus --weight-decay's L2 penalty
        self.weight_decay = (1.0 / n_train if config.weight_prior else 0.0) + config.weight_decay
        self.optimizer = make_optimizer(
            self.parameter_groups(), config.optimizer, lr, self.weight_decay
        )
        self._probe_params: list[Tensor] | None = None

    def parameter_groups(self) -> Iterable:
        """What the optimizer trains: the model's parameters (or groups with their own decay)."""
        return self.model.parameters()

    def use_fast(self, estimator: str, build: Callable[[], FastStep], bf16: bool = False) -> None:
        """Run the step on the fast engine where it covers the model (``engine`` auto or fast);
        ``bf16``: the engine's step has bf16 products (AEVB's, on CPU)."""
        choice = self.config.engine
        if choice == "autograd":
            return
        reason = unsupported_reason(self.model, estimator) or unsupported_optimizer(self.optimizer)
        if reason is None and self.config.precision == "bf16":
            on_cuda = next(self.model.parameters()).device.type == "cuda"
            if on_cuda or not bf16:
                reason = "bf16 autocast runs on the autograd step"
        if reason is None:
            self.fast, self.engine = build(), "fast"
        elif choice == "fast":
            raise ConfigError(f"engine 'fast' cannot train this model: {reason}; use auto")
        else:
            self.engine_note = f"autograd step ({reason})"

    def step(self, x: Tensor, generator: torch.Generator, index: Tensor) -> Tensor:
        """Update the parameters on minibatch x (rows ``index`` of the training set); return the
        minibatch's mean bound as a 0-d tensor (no host synchronisation)."""
        raise NotImplementedError

    def extra_metrics(self) -> dict:
        """Algorithm-specific numbers added to each metrics record (none for AEVB)."""
        return {}

    def state_tensors(self) -> dict[str, Tensor]:
        """Algorithm state beyond model and optimizer, saved with every checkpoint."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_tensors` saved."""

    def finite_probe(self) -> Tensor:
        """A 0-d tensor, non-finite when a parameter is (their sum; computed without a sync).

        The Trainer records it after every step: a non-finite or overflowing gradient makes the
        updated parameters non-finite (Adagrad and Adam turn an inf into NaN), so this names the
        step of a gradient fault as the bound names the step of a loss fault.
        """
        if self.fast is not None:
            return self.fast.flat.sum()  # every parameter is a view into this one buffer
        if self._probe_params is None:
            self._probe_params = list(self.model.parameters())
        return torch.stack([p.detach().sum() for p in self._probe_params]).sum()

    @torch.no_grad()
    def evaluate(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Per-datapoint lower bound reported for this algorithm's model.

        IWAE runs report the ELBO here (estimator B where the KL is analytic, else A, with L = K);
        the IWAE bound is logged beside it as ``*_iwae_bound``. Score-function runs train the ELBO
        and report it the same way (B where analytic, else A).
        """
        return self.model.elbo(x, self.bound_estimator(), self.config.samples, generator)

    @torch.no_grad()
    def evaluate_terms(self, x: Tensor, generator: torch.Generator) -> BoundTerms:
        """:meth:`evaluate`'s bound (the same numbers, on the same noise) with its two terms,
        E_q[log p(x|z)] and KL(q(z|x) || p(z)), the KL per latent dimension and the posterior
        centers (:class:`aevb.diagnostics.BoundTerms`). The Trainer logs these in place of
        :meth:`evaluate`; an algorithm that overrides one overrides both."""
        return self.model.bound_terms(x, self.bound_estimator(), self.config.samples, generator)

    def bound_estimator(self) -> str:
        """The ELBO estimator evaluations use: the run's A or B; for runs trained on another
        objective (iwae, score-function), B where the KL is analytic, else A."""
        est = self.config.estimator
        assert est is not None  # TrainConfig resolved it
        if est in ESTIMATORS:
            return est
        return "B" if self.model.config.supports_estimator("B") else "A"
