"""Reparameterizable distributions, likelihoods and analytic KL divergences: the public names.

Everything here is pure tensor math: no training, files or command line. Densities are summed over
the last (event) dimension, so a batch of shape (..., D) gives log-densities of shape (...).

A *latent family* (posterior or prior) exposes ``rsample`` (differentiable draws through the
reparameterization trick, PAPER.md section 3) and ``log_prob``. A new family is one small class that
declares how many parameter vectors the encoder must produce (``n_params``) and how to build itself
from them (``from_params``); an analytic KL against a prior is registered with :func:`register_kl`.

The interface, the Gaussian and the KL registry are defined in :mod:`aevb.latent`; the other
families and the registries of every family by name (``POSTERIORS``, ``PRIORS``) in
:mod:`aevb.families`. This module defines the likelihoods p(x|z) and re-exports the rest, so that
one import gives all of it. Imports go one way: families imports latent, this module both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .families import POSTERIORS, PRIORS
from .latent import (
    LOG_2PI,
    DiagonalNormal,
    LatentDistribution,
    StandardNormal,
    has_analytic_kl,
    kl_divergence,
    register_kl,
)

__all__ = [
    "LOG_2PI",
    "POSTERIORS",
    "PRIORS",
    "DiagonalNormal",
    "LatentDistribution",
    "StandardNormal",
    "bernoulli_log_prob",
    "gaussian_log_prob",
    "has_analytic_kl",
    "kl_divergence",
    "register_kl",
]


# --------------------------------------------------------------------------- likelihoods p(x|z)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """sum_i x_i log y_i + (1 - x_i) log(1 - y_i) with y = sigmoid(logits), in the stable form.

    Equal to -BCEWithLogits; valid for targets in [0, 1] (grey levels as in the paper's era).
    """
    logits, x = torch.broadcast_tensors(logits, x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def gaussian_log_prob(mean: Tensor, logvar: Tensor, x: Tensor) -> Tensor:
    """Diagonal Gaussian log-density of x, summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar)).sum(-1)
