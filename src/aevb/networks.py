"""MLP encoders and decoders of Appendix C, and the observation models p(x|z) they parameterize."""

from __future__ import annotations

from typing import ClassVar

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
