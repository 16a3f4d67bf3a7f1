"""The paper's comparisons as training steps for the one engine: wake-sleep and full VB.

Each class is only the step it takes (PAPER.md sections 8 and 9); the Trainer gives them the same
data order, checkpoints, resume, metrics and figures as AEVB. Monte Carlo EM is in :mod:`aevb.mcem`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from .errors import ConfigError
from .estimators import elbo
from .fast import FastWakeSleepStep, unsupported_optimizer, unsupported_reason
from .model import VAE
from .networks import Decoder
from .training import ALGORITHMS, Algorithm, TrainConfig


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
        self.fast: FastWakeSleepStep | None = None
        self.engine_note: str | None = None
        choice = getattr(config, "engine", "auto")
        if choice != "autograd":
            reason = unsupported_reason(model, "A") or unsupported_optimizer(self.optimizer)
            if reason is None and getattr(config, "precision", "float32") == "bf16":
                reason = "bf16 autocast runs on the autograd step"
            if reason is None:
                self.fast = FastWakeSleepStep(model, self.optimizer)
            elif choice == "fast":
                raise ConfigError(f"engine 'fast' cannot train this model: {reason}; use auto")
            else:
                self.engine_note = f"autograd step ({reason})"
        self.engine = "fast" if self.fast is not None else "autograd"

    def finite_probe(self) -> Tensor:
        if self.fast is not None:
            return self.fast.flat.sum()  # every parameter is a view into this one buffer
        return super().finite_probe()

    def step(self, x: Tensor, generator: torch.Generator) -> Tensor:
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


class FullVB(Algorithm):
    """Full variational Bayes (Appendix F): a diagonal Gaussian posterior over decoder weights.

    q(theta) = N(mu_theta, diag(exp(logvar_theta))) with a N(0, I) hyperprior. Each step draws one
    theta~ by the reparameterization trick and ascends, per datapoint,
        (1/M) sum_i L(theta~, phi; x_i) - KL(q(theta) || p(theta)) / N,
    which is the paper's whole-dataset estimator divided by N, with the parameter KL analytic. The
    decoder's own weights are mu_theta, so the saved model is the posterior mean; the log-variances
    are the model's ``theta_logvar`` buffers-as-parameters (saved with the weights).
    The encoder's phi is a point estimate; it keeps the N(0, I) weight prior of AEVB if enabled.
    """

    name = "full-vb"

    def __init__(self, model: VAE, config: TrainConfig, n_train: int, lr: float) -> None:
        if not model.has_parameter_posterior:
            raise ConfigError("full VB needs a model built with parameter_posterior=True")
        self.model = model
        self.config = config
        self.n_train = n_train
        wd = 1.0 / n_train if config.weight_prior else 0.0
        groups = [
            {"params": list(model.encoder.parameters()), "weight_decay": wd},
            {
                "params": list(model.decoder.parameters()) + list(model.theta_logvar.values()),
                "weight_decay": 0.0,  # the prior enters through the analytic KL
            },
        ]
        opt = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}[config.optimizer]
        self.optimizer = opt(groups, lr=lr)

    def parameter_kl(self) -> Tensor:
        """KL(q(theta) || N(0, I)) summed over every decoder weight."""
        total = torch.zeros((), device=self.model.device)
        for name, mu in self.model.decoder.named_parameters():
            lv = self.model.theta_logvar[name.replace(".", "_")]
            total = total + 0.5 * (torch.exp(lv) + mu**2 - 1.0 - lv).sum()
        return total

    @torch.no_grad()
    def extra_metrics(self) -> dict:
        """The parameter KL per datapoint: subtract it from the bound for the full-VB objective."""
        return {"param_kl_per_datapoint": float(self.parameter_kl()) / self.n_train}

    def step(self, x: Tensor, generator: torch.Generator) -> Tensor:
        m, c = self.model, self.config
        theta = m.sample_decoder_parameters(generator)
        bound = _elbo_with_decoder(m, theta, x, c.estimator, c.samples, generator).mean()
        loss = -bound + self.parameter_kl() / self.n_train
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return bound.detach()

    @torch.no_grad()
    def evaluate(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The bound at the posterior mean of theta (``full_vb_eval="mean"``) or averaged over
        ``full_vb_eval_samples`` draws of theta (``"sample"``)."""
        c = self.config
        if c.full_vb_eval == "mean":
            return self.model.elbo(x, c.estimator, c.samples, generator)
        draws = [
            _elbo_with_decoder(
                self.model,
                self.model.sample_decoder_parameters(generator),
                x,
                c.estimator,
                c.samples,
                generator,
            )
            for _ in range(c.full_vb_eval_samples)
        ]
        return torch.stack(draws).mean(0)


class _DecoderAt:
    """A decoder evaluated at given weights ``theta`` (functional, differentiable in theta)."""

    def __init__(self, decoder: Decoder, theta: dict[str, Tensor]) -> None:
        self.decoder, self.theta = decoder, theta

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        params = functional_call(self.decoder, self.theta, (z,))
        return self.decoder.likelihood.log_prob(params, x)


def _elbo_with_decoder(
    model: VAE, theta: dict[str, Tensor], x: Tensor, estimator: str, samples: int, generator
) -> Tensor:
    """The per-datapoint bound with the decoder's weights replaced by ``theta``."""
    dec = _DecoderAt(model.decoder, theta)
    return elbo(model.encoder, dec, model.prior, x, estimator, samples, generator)  # type: ignore[arg-type]


ALGORITHMS.update({"wake-sleep": WakeSleep, "full-vb": FullVB})

from . import mcem  # noqa: E402, F401  (registers "mcem")
