"""MLP encoders and decoders of Appendix C, and the observation models p(x|z) they parameterize."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .distributions import LatentDistribution, bernoulli_log_prob, gaussian_log_prob

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
}


def mlp_trunk(in_dim: int, hidden: int, depth: int, activation: str) -> nn.Sequential:
    """``depth`` hidden layers of ``hidden`` units, each followed by ``activation``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), ACTIVATIONS[activation]()]
        d = hidden
    return nn.Sequential(*layers)


class Likelihood:
    """An observation model p(x|z): the decoder's parameter vectors and their density."""

    name: ClassVar[str] = ""
    n_params: ClassVar[int] = 1

    @staticmethod
    def constrain(*raw: Tensor) -> tuple[Tensor, ...]:
        """Map the decoder's raw outputs to the likelihood's parameters."""
        return raw

    @staticmethod
    def log_prob(params: tuple[Tensor, ...], x: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def mean(params: tuple[Tensor, ...]) -> Tensor:
        """E[x|z], the picture drawn for a decoded z."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Bernoulli pixels (MNIST), parameterized by logits: y = sigmoid(W2 tanh(W1 z + b1) + b2)."""

    name = "bernoulli"
    n_params = 1

    @staticmethod
    def log_prob(params: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return bernoulli_log_prob(params[0], x)

    @staticmethod
    def mean(params: tuple[Tensor, ...]) -> Tensor:
        return torch.sigmoid(params[0])


class Gaussian(Likelihood):
    """Diagonal Gaussian (Frey Face): mean sigmoid(W4 h + b4) in (0, 1), log-variance W5 h + b5."""

    name = "gaussian"
    n_params = 2

    @staticmethod
    def constrain(raw_mean: Tensor, logvar: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        return torch.sigmoid(raw_mean), logvar

    @staticmethod
    def log_prob(params: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return gaussian_log_prob(params[0], params[1], x)

    @staticmethod
    def mean(params: tuple[Tensor, ...]) -> Tensor:
        return params[0]


class GaussianLinear(Gaussian):
    """Diagonal Gaussian with an unconstrained (linear) mean, for real (standardised) data."""

    name = "gaussian-linear"
    sigmoid_mean = False

    @staticmethod
    def constrain(raw_mean: Tensor, logvar: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        return raw_mean, logvar


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian-linear": GaussianLinear,
}


class Dropout(nn.Module):
    """Dropout at rate ``p`` whose masks come from ``generator`` (set for each training step by
    :meth:`aevb.model.VAE.dropout_noise`, from the run's noise stream), so that a seeded run
    repeats and resumes bit for bit; the identity in eval mode (evaluation, sampling, export)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, h: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return h
        keep = torch.empty_like(h).bernoulli_(1.0 - self.p, generator=self.generator)
        return h * keep * (1.0 / (1.0 - self.p))


def add_dropout(net: nn.Module, p: float) -> None:
    """Dropout at rate p after each hidden layer's activation in ``net``'s trunk. The activation
    becomes (activation, dropout) at the same index: the state dict's keys do not change."""
    trunk: Any = getattr(net, "trunk", None)
    if not isinstance(trunk, nn.Sequential) or len(trunk) < 2:
        raise ValueError("dropout needs an MLP trunk with at least one hidden layer")
    for i in range(1, len(trunk), 2):
        trunk[i] = nn.Sequential(trunk[i], Dropout(p))


class MLPHeads(nn.Module):
    """An MLP trunk followed by one linear head emitting ``n_heads`` vectors of ``out_dim``.

    The heads share one weight matrix (W4 and W5 of Appendix C stacked), which is the same
    model with one matrix product instead of two.
    """

    def __init__(
        self, in_dim: int, out_dim: int, n_heads: int, hidden: int, depth: int, activation: str
    ) -> None:
        super().__init__()
        self.trunk = mlp_trunk(in_dim, hidden, depth, activation)
        self.out_dim = out_dim
        self.n_heads = n_heads
        self.head = nn.Linear(hidden if depth > 0 else in_dim, out_dim * n_heads)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.head(self.trunk(x)).split(self.out_dim, dim=-1))


class Encoder(nn.Module):
    """Recognition model q(z|x): an MLP emitting the parameters of a latent family."""

    def __init__(
        self,
        family: type[LatentDistribution],
        x_dim: int,
        z_dim: int,
        hidden: int,
        depth: int = 1,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.family = family
        self.net: nn.Module = MLPHeads(x_dim, z_dim, family.n_params, hidden, depth, activation)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.net(x)

    def posterior(self, x: Tensor) -> LatentDistribution:
        return self.family.from_params(*self.net(x))


class Decoder(nn.Module):
    """Generative model p(x|z): an MLP emitting the parameters of an observation model."""

    def __init__(
        self,
        likelihood: type[Likelihood],
        z_dim: int,
        x_dim: int,
        hidden: int,
        depth: int = 1,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.likelihood = likelihood
        self.net: nn.Module = MLPHeads(z_dim, x_dim, likelihood.n_params, hidden, depth, activation)

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        return self.likelihood.constrain(*self.net(z))

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) summed over pixels; z may carry leading sample dimensions."""
        return self.likelihood.log_prob(self(z), x)
