"""Estimators of the marginal likelihood log p(x) of a trained VAE (PAPER.md section 7).

Two estimators, both pure tensor math over a model that has ``encoder.posterior(x)``,
``decoder.log_prob(x, z)`` and ``prior.log_prob(z)`` (a :class:`~aevb.model.VAE`):

- :func:`importance_sampling`: log (1/K) sum_k p(x, z_k) / q(z_k|x) with z_k ~ q(z|x), the encoder
  as proposal (Burda et al. 2015). Draws are made in chunks of at most ``chunk_size`` (z, x) pairs
  and folded into running log-sum-exps, so memory is bounded by the chunk and not by K. The same
  pass yields the per-point effective sample size (sum w)^2 / sum w^2 and the mean log-weight, an
  estimate of the variational lower bound on the same draws. ``precision="bf16"`` runs the
  decoder's products in bf16 on the same draws as float32 (docs/EVALUATION.md: its bias).
- :func:`hmc_marginal`: the paper's Appendix D estimator. Batched HMC (:mod:`aevb.hmc`) draws L
  samples from each p(z|x); a full-covariance Gaussian q(z) is fitted to them (sample mean and
  covariance, with a small ridge); L fresh HMC samples then give the harmonic-style estimate
  p(x) ~= [(1/L) sum_l q(z_l) / p(x, z_l)]^-1, computed in log space. Its expectation over the
  posterior is exactly 1/p(x) for any normalised q whose tails are lighter than the posterior's;
  the Gaussian fit keeps the variance small when the latent space is low-dimensional (< 5).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from . import hardware, hmc
from .distributions import LOG_2PI
from .errors import ConfigError
from .networks import Bernoulli

if TYPE_CHECKING:
    from .model import VAE

Progress = Callable[[int], None] | None

#: The precisions of the decoder's matrix products in :func:`importance_sampling`.
PRECISIONS = ("float32", "bf16")


def check_precision(precision: str, device: torch.device, option: str = "precision") -> str:
    """What runs the decoder's products at ``precision`` on ``device``: "float32", "cuda" (bf16
    on a GPU), or the CPU's bf16 instruction set ("forced" under ``AEVB_FORCE_CPU_BF16=1``); a
    :class:`ConfigError` for an unknown precision, another device, or a CPU without bf16."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown {option} {precision!r}; choose float32 or bf16")
    if precision == "float32":
        return "float32"
    return hardware.check_bf16(device.type, f"{option} bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 where its products are fast (a CUDA GPU, or a CPU with bf16 instructions),
    else float32; any other precision as given. bf16's bias against float32 on the same draws
    measures below 0.02 nats (docs/EVALUATION.md), the bar under which it may be the default."""
    if precision != "auto":
        return precision
    return "bf16" if hardware.bf16_is_fast(device.type) else "float32"


def _bf16_params(model: VAE, z: Tensor) -> tuple[Tensor, ...]:
    """The decoder's outputs at z computed under bf16 autocast, cast back to float32."""
    with torch.autocast(z.device.type, dtype=torch.bfloat16):
        params = model.decoder(z)
    return tuple(p.float() for p in params)


def log_joint(model: VAE, x: Tensor, z: Tensor, *, precision: str = "float32") -> Tensor:
    """log p(z) + log p(x|z); z may carry leading sample or chain dimensions before x's batch.

    For Bernoulli decoders log p(x|z) is computed as sum_d x_d l_d - softplus(l_d) from the
    logits l: the same value as the stable binary cross-entropy, in two passes over the logits
    instead of about eight, which matters because importance sampling is otherwise all matmul.
    With ``precision="bf16"`` the decoder runs under bf16 autocast and its outputs are cast back
    to float32 before the likelihood, so only the network's products and activations are rounded.
    """
    dec = model.decoder
    bf16 = precision == "bf16"
    if dec.likelihood is Bernoulli:
        logits = _bf16_params(model, z)[0] if bf16 else dec(z)[0]
        log_lik = (logits * x).sum(-1) - F.softplus(logits).sum(-1)
    elif bf16:
        log_lik = dec.likelihood.log_prob(_bf16_params(model, z), x)
    else:
        log_lik = dec.log_prob(x, z)
    return model.prior.log_prob(z) + log_lik


# --------------------------------------------------------------------------- importance sampling


class LogMeanExp:
    """Streaming log-mean-exp over the leading axis of chunks: memory O(batch), not O(K).

    Also accumulates log sum w^2 (for the effective sample size) and sum log w (the bound).
    """

    def __init__(self) -> None:
        self.n = 0
        self.lse: Tensor | None = None
        self.lse2: Tensor | None = None
        self.total: Tensor | None = None

    def add(self, log_w: Tensor) -> None:
        """Fold in a chunk of log-weights of shape (k, *batch)."""
        a, a2, s = torch.logsumexp(log_w, 0), torch.logsumexp(2.0 * log_w, 0), log_w.sum(0)
        if self.lse is None:
            self.lse, self.lse2, self.total = a, a2, s
        else:
            assert self.lse2 is not None and self.total is not None  # set with self.lse
            self.lse = torch.logaddexp(self.lse, a)
            self.lse2 = torch.logaddexp(self.lse2, a2)
            self.total = self.total + s
        self.n += log_w.shape[0]

    @property
    def log_mean(self) -> Tensor:
        """log (1/n) sum_k w_k."""
        assert self.lse is not None, "no chunk added"
        return self.lse - math.log(self.n)

    @property
    def ess(self) -> Tensor:
        """Effective sample size (sum w)^2 / sum w^2, between 1 and n."""
        assert self.lse is not None and self.lse2 is not None, "no chunk added"
        return torch.exp(2.0 * self.lse - self.lse2)

    @property
    def mean_log(self) -> Tensor:
        """(1/n) sum_k log w_k."""
        assert self.total is not None, "no chunk added"
        return self.total / self.n


@dataclass
class ISResult:
    """Per-datapoint results of :func:`importance_sampling` (tensors of shape (N,))."""

    log_px: Tensor
    ess: Tensor
    bound: Tensor
    samples: int
    chunk_size: int
    precision: str = "float32"


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if int(v) < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")


def _batch_seeds(n: int, generator: torch.Generator | None, device: torch.device) -> list[int]:
    """One seed per point batch, drawn from ``generator``: results do not depend on scheduling."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, 2**62, (n,), generator=generator, device=dev).tolist()


@contextlib.contextmanager
def _single_threaded_ops(active: bool) -> Iterator[None]:
    """Run torch ops on one intra-op thread each while Python threads share out the batches."""
    if not active:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def importance_sampling(
    model: VAE,
    x: Tensor,
    samples: int = 5000,
    *,
    chunk_size: int = 4096,
    workers: int = 1,
    generator: torch.Generator | None = None,
    progress: Progress = None,
    precision: str = "float32",
) -> ISResult:
    """Importance-sampled log p(x) per datapoint with the encoder q(z|x) as proposal.

    ``chunk_size`` bounds the number of (z, x) pairs decoded at once per worker (so memory is
    about ``workers * chunk_size * (hidden + x_dim)`` floats, whatever K is). Points are processed
    in batches of at most 64; ``progress(n)`` is called after each batch with its number of
    points. ``bound`` is the mean log-weight, an unbiased estimate of the lower bound on the same
    draws. On CPU, ``workers`` > 1 shares the batches out to that many Python threads whose torch
    ops each run on one core (no per-op thread synchronisation, which costs dearly on a loaded
    machine); the intra-op thread count is restored afterwards. Each batch draws from its own
    seed taken from ``generator``, so results do not depend on ``workers``.

    ``precision="bf16"`` runs the decoder's products in bf16 (autocast; see
    :func:`check_precision` for where it may run) while the encoder, the draws, the densities and
    the log-mean-exp stay float32: with the same ``generator`` the draws z_k are those of the
    float32 run, so the difference between the two estimates is the rounding's alone.
    """
    _check_positive(samples=samples, chunk_size=chunk_size, workers=workers)
    check_precision(precision, x.device)
    n = len(x)
    parallel = workers > 1 and x.device.type == "cpu"
    batch = max(1, min(64, chunk_size))  # fixed, so that results do not depend on workers
    starts = list(range(0, n, batch))
    seeds = _batch_seeds(len(starts), generator, x.device)

    @torch.no_grad()  # grad mode is per thread: set it in the worker
    def run(i: int) -> tuple[Tensor, Tensor, Tensor]:
        xb = x[starts[i] : starts[i] + batch]
        g = torch.Generator(device=x.device).manual_seed(seeds[i])
        q = model.encoder.posterior(xb)
        per_chunk = max(1, chunk_size // len(xb))
        acc = LogMeanExp()
        for k0 in range(0, samples, per_chunk):
            z = q.rsample(min(per_chunk, samples - k0), g)  # (k, B, J)
            acc.add(log_joint(model, xb, z, precision=precision) - q.log_prob(z))
        if progress is not None:
            progress(len(xb))
        return acc.log_mean, acc.ess, acc.mean_log

    if parallel:
        with _single_threaded_ops(True), ThreadPoolExecutor(workers) as pool:
            outs = list(pool.map(run, range(len(starts))))
    else:
        outs = [run(i) for i in range(len(starts))]
    return ISResult(
        log_px=torch.cat([o[0] for o in outs]),
        ess=torch.cat([o[1] for o in outs]),
        bound=torch.cat([o[2] for o in outs]),
        samples=samples,
        chunk_size=chunk_size,
        precision=precision,
    )


# --------------------------------------------------------------------------- Appendix D


class GaussianFit:
    """Full-covariance Gaussian density fitted to samples (n, *batch, D), one fit per batch entry.

    Mean and unbiased covariance of the samples, plus ``ridge`` times the mean variance on the
    diagonal (at least 1e-12) so the fit stays positive definite when n <= D or a chain is stuck.
    """

    def __init__(self, samples: Tensor, ridge: float = 1e-3) -> None:
        n, d = samples.shape[0], samples.shape[-1]
        self.dim = d
        self.mean = samples.mean(0)
        c = samples - self.mean
        cov = torch.einsum("n...i,n...j->...ij", c, c) / max(1, n - 1)
        scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        eye = torch.eye(d, dtype=samples.dtype, device=samples.device)
        self.cov = cov + (ridge * scale + 1e-12)[..., None, None] * eye
        self.chol = torch.linalg.cholesky_ex(self.cov)[0]
        self.logdet = 2.0 * torch.log(torch.diagonal(self.chol, dim1=-2, dim2=-1)).sum(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z) for z of shape (m, *batch, D)."""
        diff = (z - self.mean).unsqueeze(-1)
        chol = self.chol.expand(*diff.shape[:-2], self.dim, self.dim)
        sol = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        return -0.5 * (self.dim * LOG_2PI + self.logdet + (sol * sol).sum(-1))


@dataclass
class HMCMarginalResult:
    """Per-datapoint results of :func:`hmc_marginal` (tensors of shape (N,)).

    ``ess`` is the effective sample size of the harmonic weights q(z)/p(x, z) over the fresh draws
    (near ``chains * posterior_samples`` when q matches the posterior; small values flag an
    unreliable estimate); ``rel_var`` is their relative variance, so that, for independent draws,
    the delta-method variance of ``log_px`` is about ``rel_var / draws``.
    """

    log_px: Tensor
    ess: Tensor
    rel_var: Tensor
    accept_rate: Tensor
    step_size: Tensor
    settings: dict


def _hmc_batch(model: VAE, xb: Tensor, g: torch.Generator, s: dict) -> tuple[Tensor, ...]:
    """Appendix D on one batch of points: HMC chains, a Gaussian fit to their first draws, and
    the estimate from fresh draws; returns (log p(x), ESS, relative variance, acceptance, step)."""
    chains = s["chains"]
    with torch.no_grad():
        if s["init"] == "encoder":
            z0 = model.encoder.posterior(xb).rsample(chains, g)
        else:
            z0 = model.prior.rsample(chains * len(xb), g, device=xb.device, dtype=xb.dtype).reshape(
                chains, len(xb), -1
            )

    def target(z: Tensor) -> Tensor:
        return log_joint(model, xb, z)

    common = {"n_leapfrog": s["leapfrog_steps"], "thin": s["thin"], "generator": g}
    fit_run = hmc.sample(
        target,
        z0,
        s["posterior_samples"],
        n_warmup=s["warmup"],
        step_size=s["initial_step_size"],
        target_accept=s["target_accept"],
        **common,
    )
    fresh = hmc.sample(
        target,
        fit_run.z,
        s["posterior_samples"],
        n_warmup=0,
        step_size=fit_run.step_size,
        adapt=False,
        **common,
    )
    with torch.no_grad():
        b, d = len(xb), z0.shape[-1]
        fit = GaussianFit(fit_run.samples.reshape(-1, b, d), s["ridge"])  # (L*chains, B, D)
        z = fresh.samples.reshape(-1, b, d)
        log_r = fit.log_prob(z) - fresh.log_prob.reshape(-1, b)  # log q(z) - log p(x, z)
        acc = LogMeanExp()
        acc.add(log_r)
        return (
            -acc.log_mean,
            acc.ess,
            acc.n / acc.ess - 1.0,
            fresh.accept_rate.mean(0),
            fresh.step_size.mean(0),
        )


def hmc_marginal(
    model: VAE,
    x: Tensor,
    *,
    posterior_samples: int = 50,
    leapfrog_steps: int = 4,
    warmup: int = 200,
    target_accept: float = 0.9,
    step_size: float = 0.1,
    chains: int = 1,
    thin: int = 1,
    ridge: float = 1e-3,
    init: str = "encoder",
    batch_size: int = 250,
    workers: int = 1,
    generator: torch.Generator | None = None,
    progress: Progress = None,
) -> HMCMarginalResult:
    """The Appendix D estimate of log p(x) per datapoint.

    For each point, ``chains`` HMC chains (``leapfrog_steps`` leapfrog steps per transition, step
    size adapted per chain during ``warmup`` towards ``target_accept``) start from a draw of the
    encoder's q(z|x) (``init="encoder"``) or of the prior (``"prior"``). Each chain yields
    ``posterior_samples`` draws for the Gaussian fit, then ``posterior_samples`` fresh draws for the
    estimate, keeping every ``thin``-th state. Points go in batches of ``batch_size``, each with
    its own seed drawn from ``generator``; on CPU ``workers`` > 1 runs batches in that many Python
    threads with single-threaded torch ops (as in :func:`importance_sampling`).
    """
    _check_positive(
        posterior_samples=posterior_samples,
        leapfrog_steps=leapfrog_steps,
        chains=chains,
        thin=thin,
        batch_size=batch_size,
        workers=workers,
    )
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if init not in ("encoder", "prior"):
        raise ValueError(f"init must be 'encoder' or 'prior', got {init!r}")
    settings = {
        "posterior_samples": posterior_samples,
        "leapfrog_steps": leapfrog_steps,
        "warmup": warmup,
        "target_accept": target_accept,
        "initial_step_size": step_size,
        "chains": chains,
        "thin": thin,
        "ridge": ridge,
        "init": init,
        "density": "full-covariance gaussian",
    }
    starts = list(range(0, len(x), batch_size))
    seeds = _batch_seeds(len(starts), generator, x.device)

    def run(i: int) -> tuple[Tensor, ...]:
        xb = x[starts[i] : starts[i] + batch_size]
        g = torch.Generator(device=x.device).manual_seed(seeds[i])
        out = _hmc_batch(model, xb, g, settings)
        if progress is not None:
            progress(len(xb))
        return out

    if workers > 1 and x.device.type == "cpu":
        with _single_threaded_ops(True), ThreadPoolExecutor(workers) as pool:
            outs = list(pool.map(run, range(len(starts))))
    else:
        outs = [run(i) for i in range(len(starts))]
    cols = [torch.cat(c) for c in zip(*outs, strict=True)]
    return HMCMarginalResult(
        log_px=cols[0],
        ess=cols[1],
        rel_var=cols[2],
        accept_rate=cols[3],
        step_size=cols[4],
        settings=settings,
    )
