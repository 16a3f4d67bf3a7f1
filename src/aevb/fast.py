"""The fast AEVB step: a hand-written forward and backward pass for the MLP VAE.

:class:`FastStep` computes exactly the estimator of :mod:`aevb.estimators` (SGVB A or B, L >= 1,
or the IWAE bound; the same noise drawn from the same generator in the same order) and the same
optimizer update, but without autograd's graph and without allocating anything per step:

- every parameter of the model becomes a view into one flat buffer, and every gradient is written
  (``out=``, ``addmm_`` with ``beta=0``) into the matching view of one flat gradient buffer, so the
  optimizer is one fused kernel (``torch.optim``'s fused Adagrad or Adam) over a single tensor
  (private torch functions, reached through :mod:`aevb.compat`, which has public fallbacks);
- intermediate activations live in preallocated buffers, reused every step. Besides saving the
  allocator's work this avoids glibc returning large blocks to the system and faulting them back
  in on the next step, which costs a plain eager loop a third of its time on CPU;
- scale factors (1/(M L)) are folded into the ``alpha`` of the matrix products, and the activation
  derivative is one ``tanh_backward`` / ``threshold_backward`` kernel per hidden layer.

The encoder and the decoder are each a trunk of hidden layers (one or more: the model's depth)
and a linear head; the forward pass runs up the trunk and the backward pass down it, layer by
layer, each hidden layer with its own preallocated output and gradient buffers.

The engine is an implementation detail of :class:`aevb.algorithms.AEVB`: the module's parameters
and the torch optimizer's state tensors stay the canonical ones (they are views into the flat
buffers), so ``model.state_dict()``, ``optimizer.state_dict()``, checkpoints and resume are the
same as with the autograd step. If someone replaces them (``load_state_dict`` of the optimizer,
``model.to(...)``), the next step notices and re-adopts them.

Covered: MLPs of any depth >= 1 (hidden layers in the encoder and decoder trunks) with tanh or
relu, Gaussian posterior and N(0, I) prior, Bernoulli or Gaussian decoder, estimators A and B (any
L) and the IWAE bound (K = L draws; the standard or the doubly reparameterized encoder gradient;
a warm-up's KL weight on the log-weights' latent part), Adagrad or Adam as built by
:func:`aevb.algorithms.make_optimizer` (weight decay = the N(0, I) weight prior), float32 or
float64, CPU or CUDA (no host synchronisation: the step returns a 0-d tensor). Everything else
(depth 0 among it) falls back to autograd; see :func:`unsupported_reason`.
:class:`FastWakeSleepStep` is the same machinery for wake-sleep's step.

``precision="bf16"`` (AEVB's step, float32 models) runs every matrix product in bfloat16 with
float32 accumulation (torch's CPU kernels accumulate in float32 and round the result to bf16):
a bf16 copy of the flat parameters is refreshed after each update, the hidden layers'
activations and gradients are bf16, and the latent layer, the log-likelihood, the KL terms, the
gradient buffer the optimizer reads and the optimizer's state stay float32 (the master weights).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from . import compat
from .distributions import LOG_2PI
from .runs import owned_tensor

if TYPE_CHECKING:
    from .model import ModelConfig

_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc): no unmapping and faulting back every step.

    glibc serves blocks above 128 KiB with mmap and returns them on free, so an eager autograd step,
    which allocates and frees the same large temporaries every step, page-faults them all back in
    each time (a third of a plain loop's time). Raising the mmap and trim thresholds makes freed
    blocks reusable. Process-wide and idempotent; True where it was applied (Linux with glibc).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1  # glibc's maximum
        ok = libc.mallopt(m_trim_threshold, 256 * 1024 * 1024) == 1 and ok
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


ACTIVATIONS = ("tanh", "relu")
_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
LIKELIHOODS = ("bernoulli", "gaussian")
ESTIMATORS = ("A", "B", "iwae")
OPTIMIZERS = {torch.optim.Adagrad: "adagrad", torch.optim.Adam: "adam"}


def unsupported_reason(model: nn.Module, estimator: str = "B") -> str | None:
    """Why the fast step cannot train ``model`` (None when it can)."""
    c = getattr(model, "config", None)
    if c is None:
        return "the model has no ModelConfig"
    if c.depth < 1:
        return f"the fast step covers depth >= 1 and this model has depth {c.depth}"
    if c.activation not in ACTIVATIONS:
        return f"the fast step covers activations {ACTIVATIONS}, not {c.activation!r}"
    if c.likelihood not in LIKELIHOODS:
        return f"the fast step covers likelihoods {LIKELIHOODS}, not {c.likelihood!r}"
    if c.posterior != "normal" or c.prior != "normal":
        return "the fast step covers a Gaussian posterior with a N(0, I) prior"
    if estimator == "score-function":
        return (
            "the fast step's hand-written backward is the reparameterization gradient of "
            "estimators A, B and iwae, not the score function's"
        )
    if estimator not in ESTIMATORS:
        return f"the fast step covers estimators {ESTIMATORS}, not {estimator!r}"
    if getattr(c, "dropout", 0.0):
        return "the fast step has no dropout (--dropout)"
    if getattr(c, "architecture", "mlp") != "mlp":
        return f"the fast step covers the MLP encoder/decoder, not {c.architecture!r}"
    params = list(model.parameters())
    p0 = params[0]
    if p0.dtype not in (torch.float32, torch.float64) or p0.device.type not in ("cpu", "cuda"):
        return f"the fast step covers float32/float64 on cpu/cuda, not {p0.dtype} on {p0.device}"
    if any(p.dtype != p0.dtype or p.device != p0.device for p in params):
        return "the parameters do not share one dtype and device"
    if _layers(model) is None:
        return "the model is not the standard MLP encoder/decoder"
    return None


#: (encoder trunk, encoder head, decoder trunk, decoder head): a trunk is its hidden Linear layers
MLPLayers = tuple[list[nn.Linear], nn.Linear, list[nn.Linear], nn.Linear]


def _layers(model: nn.Module) -> MLPLayers | None:
    """The encoder's and decoder's hidden linear layers and heads, or None if not the standard MLP:
    trunks of [Linear, activation] * depth (depth >= 1) and a linear head each, all with biases."""
    vae: Any = model  # duck-typed: any failure below means "not the standard MLP"
    try:
        enc, dec = vae.encoder.net, vae.decoder.net
        act = _ACTIVATION_MODULES[vae.config.activation]
        trunks = [list(enc.trunk), list(dec.trunk)]
        heads = (enc.head, dec.head)
    except (AttributeError, KeyError, TypeError):
        return None
    for trunk in trunks:
        if not trunk or len(trunk) % 2 or not all(type(a) is act for a in trunk[1::2]):
            return None
    enc_trunk, dec_trunk = trunks[0][::2], trunks[1][::2]
    linears = [*enc_trunk, heads[0], *dec_trunk, heads[1]]
    if not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    if {id(p) for m in linears for p in m.parameters()} != {id(p) for p in model.parameters()}:
        return None
    return enc_trunk, heads[0], dec_trunk, heads[1]


def unsupported_optimizer(opt: torch.optim.Optimizer) -> str | None:
    """Why the fast step cannot reproduce this optimizer's update (None when it can)."""
    kind = OPTIMIZERS.get(type(opt))
    if kind is None:
        return f"the fast step covers Adagrad and Adam, not {type(opt).__name__}"
    if len(opt.param_groups) != 1:
        return "the fast step needs one parameter group"
    g = opt.param_groups[0]
    if g.get("maximize") or g.get("differentiable") or g.get("foreach"):
        return "the fast step needs maximize=False, differentiable=False, foreach=False"
    if kind == "adam" and (g.get("amsgrad") or g.get("decoupled_weight_decay")):
        return "the fast step's Adam has no amsgrad and no decoupled weight decay"
    if kind == "adam" and (torch.is_tensor(g["lr"]) or any(map(torch.is_tensor, g["betas"]))):
        return "the fast step's Adam needs float lr and betas"
    return None


#: one linear layer of the flat buffers: (weight, bias, weight gradient, bias gradient)
Layer = tuple[Tensor, Tensor, Tensor, Tensor]


class FastStep:
    """Forward, backward and optimizer update of one AEVB step with preallocated buffers."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        estimator: str = "B",
        samples: int = 1,
        precision: str = "float32",
        dreg: bool = False,
        emulate_bf16: bool = False,
    ) -> None:
        reason = unsupported_reason(model, estimator) or unsupported_optimizer(optimizer)
        if reason is not None:
            raise ValueError(reason)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be float32 or bf16, got {precision!r}")
        self.model = model
        self.optimizer = optimizer
        self.kind = OPTIMIZERS[type(optimizer)]
        # torch's private kernels or their public fallbacks (aevb.compat), bound once: no
        # indirection per step
        self._fused_adagrad_ = compat.fused_adagrad_
        self._fused_adam_ = compat.fused_adam_
        self._softplus = compat.softplus
        if dreg and estimator != "iwae":
            raise ValueError("the doubly reparameterized gradient (dreg) is estimator iwae's")
        self.estimator = estimator
        self.iwae, self.dreg = estimator == "iwae", dreg
        self.L = int(samples)
        c = cast("ModelConfig", model.config)  # checked by unsupported_reason
        self.J, self.D = c.latent_dim, c.x_dim
        self.gaussian = c.likelihood == "gaussian"
        self.relu = c.activation == "relu"
        self.params = list(model.parameters())
        p0 = self.params[0]
        self.dtype, self.device = p0.dtype, p0.device
        sizes = [p.numel() for p in self.params]
        self.offsets = [0]
        for n in sizes:
            self.offsets.append(self.offsets[-1] + n)
        n_total = self.offsets[-1]
        kw: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
        self.flat = torch.zeros(n_total, **kw)
        self.grad = torch.zeros(n_total, **kw)
        self.state_a = torch.zeros(n_total, **kw)  # Adagrad: sum; Adam: exp_avg
        self.state_b = torch.zeros(n_total, **kw) if self.kind == "adam" else None  # exp_avg_sq
        # torch's fused optimizers keep a float32 step per parameter on its device
        self.steps = torch.zeros(len(self.params), dtype=torch.float32, device=self.device)
        self._step0 = self.steps[0]
        self.param_views = [self._view(self.flat, i) for i in range(len(self.params))]
        self.grad_views = [self._view(self.grad, i) for i in range(len(self.params))]
        self._products(precision, emulate_bf16, n_total)
        n_params = len(self.params)
        self._product_views = [self._view(self.flat_m, i) for i in range(n_params)]
        self._product_grads = [self._view(self.grad_m, i) for i in range(n_params)]
        enc_trunk, enc_head, dec_trunk, dec_head = cast("MLPLayers", _layers(model))
        self._enc = [self._layer(m) for m in enc_trunk]  # the encoder's hidden layers, bottom up
        self._enc_head = self._layer(enc_head)
        self._dec = [self._layer(m) for m in dec_trunk]
        self._dec_head = self._layer(dec_head)
        self._buffers: dict[int, SimpleNamespace] = {}
        self._half = torch.tensor(0.5, **kw)
        self._signature: tuple = ()
        # data parallel (aevb.distributed): this rank's part of a global minibatch of world * m;
        # the noise of the whole global minibatch is drawn and this rank's slice used, so the
        # step equals the one-process step; grad_hook averages the gradient over the ranks.
        self.shard: tuple[int, int] = (0, 1)  # (rank, world size)
        self.grad_hook: Callable[[Tensor], object] | None = None
        self.adopt()

    def _products(self, precision: str, emulate_bf16: bool, n_total: int) -> None:
        """What the matrix products read and write: the weights and gradient themselves, or
        (bf16) their bf16 copies; and how they multiply (torch's kernels, or bf16 emulated)."""
        self.bf16 = precision == "bf16"
        if self.bf16 and self.dtype != torch.float32:
            raise ValueError(f"bf16 products train float32 master weights, not {self.dtype}")
        self.mdtype = torch.bfloat16 if self.bf16 else self.dtype  # the products' dtype
        if emulate_bf16 and not self.bf16:
            raise ValueError("emulate_bf16 emulates bf16 products: it needs precision='bf16'")
        #: out <- alpha a @ b (+ beta bias): torch's kernel, or bf16's emulated in float32
        self.emulate_bf16 = emulate_bf16
        self._product = functools.partial(_product, emulate_bf16=True) if emulate_bf16 else _product
        #: the products' copy of the parameters and of the gradient they produce (bf16), or
        #: the float32 (float64) buffers themselves
        self.flat_m, self.grad_m = self.flat, self.grad
        if self.bf16:
            self.flat_m, self.grad_m = (
                torch.zeros(n_total, dtype=self.mdtype, device=self.device) for _ in range(2)
            )

    def shard_noise(self, rank: int, world: int, grad_hook: Callable[[Tensor], object]) -> None:
        """Train as rank ``rank`` of ``world``: draw the global minibatch's noise and use this
        rank's part; ``grad_hook`` averages the flat gradient over the ranks."""
        self.shard, self.grad_hook = (rank, world), grad_hook
        self._buffers = {}  # re-made with the global minibatch's noise buffer

    # ----------------------------------------------------------------- flat storage
    def _view(self, flat: Tensor, i: int) -> Tensor:
        a, b = self.offsets[i], self.offsets[i + 1]
        return flat[a:b].view(self.params[i].shape)

    def _layer(self, m: nn.Linear) -> Layer:
        """(weight, bias, weight gradient, bias gradient) of m as the matrix products use them:
        views into the flat buffers (their bf16 copies under bf16)."""
        i, j = (next(k for k, p in enumerate(self.params) if p is q) for q in (m.weight, m.bias))
        w, g = self._product_views, self._product_grads
        return w[i], w[j], g[i], g[j]

    def _current_signature(self) -> tuple:
        return (
            id(self.optimizer.state),
            *(p.data_ptr() for p in self.params),
        )

    @torch.no_grad()
    def adopt(self) -> None:
        """Copy the parameters and optimizer state into the flat buffers and point them there."""
        for p, v in zip(self.params, self.param_views, strict=True):
            if p.data_ptr() != v.data_ptr():
                if p.shape != v.shape or p.dtype != self.dtype or p.device != self.device:
                    raise RuntimeError(
                        "a parameter changed shape, dtype or device under the fast step; "
                        "build a new algorithm after moving the model"
                    )
                v.copy_(p)
                p.data = v
        opt = self.optimizer
        if [id(p) for p in opt.param_groups[0]["params"]] != [id(p) for p in self.params]:
            raise RuntimeError("the optimizer's parameters are not the model's, in order")
        names = ("sum",) if self.kind == "adagrad" else ("exp_avg", "exp_avg_sq")
        flats = tuple(t for t in (self.state_a, self.state_b) if t is not None)  # state_b: Adam
        for i, p in enumerate(self.params):
            st = opt.state[p]
            for name, flat in zip(names, flats, strict=True):
                view = self._view(flat, i)
                if name in st and st[name].data_ptr() != view.data_ptr():
                    view.copy_(st[name])
                elif name not in st:
                    view.zero_()
                st[name] = view
            if "step" in st and st["step"].data_ptr() != self.steps[i : i + 1].data_ptr():
                self.steps[i].copy_(st["step"])
            elif "step" not in st:
                self.steps[i].zero_()
            st["step"] = self.steps[i]
        if not bool((self.steps == self.steps[0]).all()):
            raise RuntimeError("the optimizer's parameters are at different step counts")
        self._signature = self._current_signature()
        if not getattr(self.model, "_aevb_owned_state_dict", False):
            register = getattr(self.model, "register_state_dict_post_hook", None)
            (register or self.model._register_state_dict_hook)(_own_state_dict)
            self.model._aevb_owned_state_dict = True  # type: ignore[assignment]

    def _check(self) -> None:
        if self._current_signature() != self._signature:
            self.adopt()

    # ----------------------------------------------------------------- buffers
    def _bufs(self, m: int) -> SimpleNamespace:
        b = self._buffers.get(m)
        if b is None:
            kw: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
            km: dict[str, Any] = {"dtype": self.mdtype, "device": self.device}  # products'
            L, J, D = self.L, self.J, self.D
            n = L * m
            nd = 2 * D if self.gaussian else D
            enc_widths = [w.shape[0] for w, _, _, _ in self._enc]
            dec_widths = [w.shape[0] for w, _, _, _ in self._dec]
            b = SimpleNamespace(
                # per hidden layer: its output (after the activation) and the gradient there
                he=[torch.empty(m, h, **km) for h in enc_widths],
                ghe=[torch.empty(m, h, **km) for h in enc_widths],
                hd=[torch.empty(n, h, **km) for h in dec_widths],
                ghd=[torch.empty(n, h, **km) for h in dec_widths],
                e=torch.empty(m, 2 * J, **kw),
                std=torch.empty(m, J, **kw),
                eps_all=torch.empty(L, m * self.shard[1], J, **kw),
                z=torch.empty(L, m, J, **kw),
                o=torch.empty(n, nd, **kw),
                go=torch.empty(n, nd, **kw),
                t1=torch.empty(n, D, **kw),
                t2=torch.empty(n, D, **kw),
                t3=torch.empty(n, D, **kw) if self.gaussian else None,
                xo=torch.empty(L, **kw),
                gz=torch.empty(n, J, **kw),
                ge=torch.empty(m, 2 * J, **kw),
                tj=torch.empty(m, J, **kw),
            )
            if self.iwae:  # per draw: log p(x|z), log w and the normalised weights
                b.lp, b.lp2 = torch.empty(n, **kw), torch.empty(n, **kw)
                b.lw, b.lw2, b.wt = (torch.empty(L, m, **kw) for _ in range(3))
                b.lvs, b.lse = torch.empty(m, **kw), torch.empty(m, **kw)
            b.mu, b.lv = b.e[:, :J], b.e[:, J:]
            b.gmu, b.glv = b.ge[:, :J], b.ge[:, J:]
            b.z2 = b.z.view(n, J)
            b.eps = b.eps_all[:, self.shard[0] * m : (self.shard[0] + 1) * m]
            self._product_buffers(b, m)
            self._buffers = {m: b}  # keep one minibatch size: the Trainer's
        return b

    def _product_buffers(self, b: SimpleNamespace, m: int) -> None:
        """The bf16 sides of the tensors that cross between the products and the float32 math:
        x and z going in, the heads' outputs coming out, and their gradients (without bf16,
        the same tensors: nothing is copied)."""
        names = ("e", "z2", "o", "go", "gz", "ge")
        if not self.bf16:
            b.x_m = None
            for name in names:
                setattr(b, name + "_m", getattr(b, name))
            return
        for name in names:
            t = getattr(b, name)
            setattr(b, name + "_m", torch.empty(t.shape, dtype=self.mdtype, device=self.device))
        b.x_m = torch.empty(m, self.D, dtype=self.mdtype, device=self.device)

    # ----------------------------------------------------------------- the step
    @torch.no_grad()
    def gradients(
        self, x: Tensor, generator: torch.Generator | None, kl_weight: float = 1.0
    ) -> Tensor:
        """Fill :attr:`grad` with d(-mean bound)/d(theta); return the mean bound (0-d tensor).

        ``kl_weight`` = beta scales the KL term's gradient (estimator B: KL(q || p); A: its sample
        log q(z|x) - log p(z)); the bound returned is the beta = 1 bound whatever beta is.
        """
        self._check()
        if x.dtype != self.dtype or x.device != self.device:
            x = x.to(device=self.device, dtype=self.dtype)
        x = x.contiguous()
        m = x.shape[0]
        L = self.L
        n = L * m
        s = 1.0 / n
        b = self._bufs(m)
        We, be = self._enc_head[:2]
        Wd, bd = self._dec_head[:2]
        x_m = x if b.x_m is None else b.x_m.copy_(x)  # the encoder's input to its products
        if self.bf16:
            self.flat_m.copy_(self.flat)  # the products' copy of the updated weights

        # ---- forward: encoder, reparameterised z, decoder
        h = self._forward(self._enc, x_m, b.he)
        self._widen(self._product(b.e_m, h, We.t(), be), b.e)
        mu, lv, std = b.mu, b.lv, b.std
        torch.mul(lv, 0.5, out=std).exp_()
        b.eps_all.normal_(generator=generator)  # = DiagonalNormal.rsample's torch.randn draw
        eps = b.eps  # this rank's part (all of it in one process)
        torch.addcmul(mu, std, eps, out=b.z)
        z = b.z2
        z_m = self._narrow(z, b.z2_m)
        h = self._forward(self._dec, z_m, b.hd)
        self._widen(self._product(b.o_m, h, Wd.t(), bd), b.o)

        # ---- log p(x|z) summed over everything, and G = -d log p / d o (before the 1/(L M));
        # iwae: log p(x|z) per draw, and G weighted by the draws' normalised importance weights
        if self.iwae:
            self._likelihood(x, b, n, rows=True)
            bound = self._importance_weights(b, m, kl_weight) * (1.0 / m)
            b.go.view(L, m, -1).mul_(b.wt.unsqueeze(-1))
            s = 1.0 / m
        else:
            logp = self._likelihood(x, b, n, rows=False)

        # ---- backward through the decoder (the factor s folded into alpha), down to z
        go_m = self._narrow(b.go, b.go_m)
        self._backward(self._dec, self._dec_head, go_m, b.hd, b.ghd, z_m, s, b.gz_m)
        self._widen(b.gz_m, b.gz)

        # ---- the latent layer: reparameterisation and the KL / log-density terms
        if self.iwae:
            self._latent_iwae(b, m, kl_weight)
        else:
            bound = self._latent(b, m, kl_weight, logp)

        # ---- backward through the encoder
        ge_m = self._narrow(b.ge, b.ge_m)
        self._backward(self._enc, self._enc_head, ge_m, b.he, b.ghe, x_m, None, None)
        self._widen(self.grad_m, self.grad)  # bf16: the optimizer reads float32 gradients
        return bound

    def _likelihood(self, x: Tensor, b: SimpleNamespace, n: int, rows: bool) -> Tensor:
        """log p(x|z) summed (rows: per draw, into b.lp) and b.go = -d log p / d o."""
        return self._gaussian(x, b, n, rows) if self.gaussian else self._bernoulli(x, b, rows)

    def _latent(self, b: SimpleNamespace, m: int, kl_weight: float, logp: Tensor) -> Tensor:
        """Estimators A and B: b.ge <- -d bound / d(mu, logvar) from b.gz and the KL (B) or
        log-density (A) terms, the KL's gradient times ``kl_weight``; returns the mean bound."""
        L, J = self.L, self.J
        s, inv_m = 1.0 / (L * m), 1.0 / m
        kw = kl_weight * inv_m  # = inv_m exactly when beta = 1
        mu, lv, std, eps, z, gz = b.mu, b.lv, b.std, b.eps, b.z2, b.gz
        gmu, glv, tj = b.gmu, b.glv, b.tj
        if self.estimator == "A":
            # log p(z) - log q(z|x) = -1/2 (z^2 - logvar - eps^2), summed (before z is reused)
            extra = (L * lv.sum() + eps.square().sum() - z.square().sum()) * 0.5
            gz.add_(z, alpha=s * kl_weight)  # d(-log p(z))/dz; log q(z|x) only depends on logvar
        self._pathwise(b, m)
        if self.estimator == "B":
            gmu.add_(mu, alpha=kw)  # d KL / d mu = mu
            torch.mul(std, std, out=tj)
            glv.add_(tj, alpha=0.5 * kw).sub_(0.5 * kw)  # d KL / d logvar = (s^2 - 1) / 2
            # sum of KL over the minibatch: -1/2 sum(1 + logvar - mu^2 - s^2); tj <- s^2 + mu^2
            kl = (tj.addcmul_(mu, mu).sum() - lv.sum() - float(m * J)) * 0.5
            return (logp * (1.0 / L) - kl) * inv_m
        glv.sub_(0.5 * kw)  # d(log q)/d logvar = -1/2 per sample
        return (logp + extra) * s

    def _pathwise(self, b: SimpleNamespace, m: int) -> None:
        """b.gmu, b.glv <- the gradient b.gz at the draws z = mu + std * eps, carried back to
        mu and logvar (dz/dmu = 1, dz/dlogvar = eps * std / 2) and summed over the draws."""
        L, J, gz, eps = self.L, self.J, b.gz, b.eps
        if L == 1:
            gz1 = gz.view(m, J)
            torch.mul(gz1, eps[0], out=b.glv)
            b.gmu.copy_(gz1)
        else:
            torch.mul(gz.view(L, m, J), eps, out=b.z)  # z is no longer needed: reuse it
            torch.sum(b.z, 0, out=b.glv)
            torch.sum(gz.view(L, m, J), 0, out=b.gmu)
        b.glv.mul_(b.std).mul_(0.5)

    def _importance_weights(self, b: SimpleNamespace, m: int, beta: float) -> Tensor:
        """b.lw <- log w = log p(x|z) + beta (log p(z) - log q(z|x)) per draw (from b.lp),
        b.wt <- the weights normalised over the K draws of each point; returns the beta = 1
        IWAE bound summed over the minibatch, sum_i [logsumexp_k log w_ki - log K]."""
        L, J = self.L, self.J
        sq, lw, lat = b.gz.view(L, m, J), b.lw, b.lw2  # gz: scratch until the decoder's backward
        # log p(z) - log q(z|x) = -1/2 sum_j (z^2 - logvar - eps^2): the log 2 pi cancel
        torch.sum(torch.mul(b.eps, b.eps, out=sq), 2, out=lw)
        torch.sum(torch.mul(b.z, b.z, out=sq), 2, out=lat)
        torch.sub(lw, lat, out=lat).add_(torch.sum(b.lv, 1, out=b.lvs)).mul_(0.5)
        lse = torch.logsumexp(torch.add(b.lp.view(L, m), lat, out=lw), 0, out=b.lse)
        bound = lse.sum() - float(m * math.log(L))
        if beta != 1.0:  # the weights of the gradient: the latent part weighted by beta
            lse = torch.logsumexp(lw.add_(lat, alpha=beta - 1.0), 0, out=b.lse)
        torch.sub(lw, lse, out=b.wt).exp_()
        return bound

    def _latent_iwae(self, b: SimpleNamespace, m: int, beta: float) -> None:
        """IWAE: b.ge <- -d bound / d(mu, logvar). b.gz holds w_k / M times -d log p(x|z_k)/dz_k.
        Standard: add w_k / M times beta d(-log p(z))/dz = beta z, and log q's own -beta/2 per
        logvar. DReG: the whole -d log w / dz with q's parameters held (the log q term is
        -beta eps / std), each draw weighted w_k^2 / M, and nothing through q's parameters."""
        inv_m = 1.0 / m
        z, gz, wt = b.z, b.gz.view(self.L, m, self.J), b.wt.unsqueeze(-1)
        if self.dreg:
            z.addcdiv_(b.eps, b.std, value=-1.0)  # z - eps / std (z is not needed again)
            gz.addcmul_(z, wt, value=beta * inv_m).mul_(wt)
        else:
            gz.addcmul_(z, wt, value=beta * inv_m)
        self._pathwise(b, m)
        if not self.dreg:
            b.glv.sub_(0.5 * beta * inv_m)  # the weights of each point sum to 1

    def _narrow(self, t: Tensor, t_m: Tensor) -> Tensor:
        """t as the products take it: its bf16 copy under bf16 (t_m), else t itself."""
        return t_m.copy_(t) if t_m is not t else t

    def _widen(self, t_m: Tensor, t: Tensor) -> None:
        """t <- a product's result t_m, in float32 (a copy only under bf16)."""
        if t_m is not t:
            t.copy_(t_m)

    def _forward(self, trunk: list[Layer], inp: Tensor, outs: list[Tensor]) -> Tensor:
        """Up a trunk: every hidden layer's output into its buffer; returns the top one."""
        h = inp
        for (weight, bias, _, _), out in zip(trunk, outs, strict=True):
            h = self._hidden(bias, h, weight, out)
        return h

    def _hidden(self, bias: Tensor, inp: Tensor, weight: Tensor, out: Tensor) -> Tensor:
        """act(inp W^T + bias) into out."""
        if self.relu:
            return self._product(out, inp, weight.t(), bias).relu_()
        # tanh(a) = 2 sigmoid(2a) - 1: torch's vectorised sigmoid is several times faster than its
        # tanh on CPU; the factor 2 rides on the matrix product. Equal to within a unit roundoff.
        self._product(out, inp, weight.t(), bias, beta=2.0, alpha=2.0).sigmoid_()
        return out.mul_(2.0).sub_(1.0)

    def _backward(
        self,
        trunk: list[Layer],
        head: Layer,
        g: Tensor,
        hs: list[Tensor],
        ghs: list[Tensor],
        inp: Tensor,
        scale: float | None,
        g_inp: Tensor | None,
    ) -> None:
        """Down a trunk: the head's and hidden layers' gradients from g = -d bound / d(head's
        output), times ``scale`` (folded into alpha; None: 1), with hs the hidden outputs of
        the forward pass from ``inp`` and ghs their gradient buffers; g_inp <- the gradient at
        ``inp`` when given."""
        weight, _, g_weight, g_bias = head
        h, gh = hs[-1], ghs[-1]
        if scale is None:
            self._product(g_weight, g.t(), h)
            torch.sum(g, 0, out=g_bias)
            self._product(gh, g, weight)
        else:
            self._product(g_weight, g.t(), h, alpha=scale)
            torch.sum(g, 0, out=g_bias).mul_(scale)
            self._product(gh, g, weight, alpha=scale)
        for i in range(len(trunk) - 1, -1, -1):
            weight, _, g_weight, g_bias = trunk[i]
            gh = ghs[i]
            self._act_backward(gh, hs[i])  # now the gradient at layer i's pre-activation
            self._product(g_weight, gh.t(), hs[i - 1] if i else inp)
            torch.sum(gh, 0, out=g_bias)
            if i:
                self._product(ghs[i - 1], gh, weight)
            elif g_inp is not None:
                self._product(g_inp, gh, weight)

    def _act_backward(self, g: Tensor, h: Tensor) -> None:
        """g <- g * act'(pre-activation), from the activation's output h."""
        if self.relu:
            torch.ops.aten.threshold_backward.grad_input(g, h, 0, grad_input=g)
        else:
            torch.ops.aten.tanh_backward.grad_input(g, h, grad_input=g)

    def _bernoulli(self, x: Tensor, b: SimpleNamespace, rows: bool = False) -> Tensor:
        o, go = b.o, b.go
        L, m, D = self.L, x.shape[0], self.D
        # log p = sum x*o - softplus(o), the stable form of x log y + (1-x) log(1-y)
        sp = self._softplus(o, 1.0, 20.0, out=b.t1)
        if rows:
            torch.mul(o.view(L, m, D), x, out=b.t2.view(L, m, D))
            logp = torch.sum(b.t2.sub_(sp), 1, out=b.lp)
        else:
            logp = torch.mv(o.view(L, m * D), x.view(m * D), out=b.xo).sum() - sp.sum()
        torch.sigmoid(o, out=go)
        go.view(L, m, D).sub_(x)  # -(x - sigmoid(o))
        return logp

    def _gaussian(self, x: Tensor, b: SimpleNamespace, n: int, rows: bool = False) -> Tensor:
        L, m, D = self.L, x.shape[0], self.D
        o, go = b.o, b.go
        raw, lv = o[:, :D], o[:, D:]
        mean, q, r = b.t1, b.t2, b.t3
        torch.sigmoid(raw, out=mean)
        torch.sub(mean.view(L, m, D), x, out=r.view(L, m, D))  # r = mean - x
        # q = (mean - x) exp(-logvar); exp of a contiguous copy: torch's exp of the strided
        # slice parallelises poorly (54 us against 25 us for copy + exp, 100 x 560, 2 threads)
        torch.div(r, q.copy_(lv).exp_(), out=q)
        # log p = -1/2 sum(log 2 pi + logvar + (x - mean)^2 exp(-logvar))
        if not rows:
            logp = (torch.dot(q.view(-1), r.view(-1)) + lv.sum() + float(n * D) * LOG_2PI) * -0.5
        # -d log p / d logvar = (1 - (x - mean)^2 exp(-logvar)) / 2
        torch.addcmul(self._half, q, r, value=-0.5, out=go[:, D:])
        if rows:  # per draw from that: log p = sum(-d log p / d logvar) - 1/2 sum(1 + log 2 pi
            # + logvar), with no n x D temporary
            torch.sum(go[:, D:], 1, out=b.lp).sub_(torch.sum(lv, 1, out=b.lp2), alpha=0.5)
            logp = b.lp.sub_(0.5 * D * (1.0 + LOG_2PI))
        # -d log p / d raw = (mean - x) exp(-logvar) mean (1 - mean)
        torch.ops.aten.sigmoid_backward.grad_input(q, mean, grad_input=go[:, :D])
        return logp

    def step(self, x: Tensor, generator: torch.Generator | None, kl_weight: float = 1.0) -> Tensor:
        """One AEVB update on minibatch x; return the minibatch mean bound (0-d, no sync)."""
        bound = self.gradients(x, generator, kl_weight)
        if self.grad_hook is not None:
            self.grad_hook(self.grad)
        self.update()
        return bound

    @torch.no_grad()
    def update(self) -> None:
        """The optimizer's fused update over the flat parameter buffer, with :attr:`grad`."""
        g = self.optimizer.param_groups[0]
        self.steps.add_(1)
        if self.kind == "adagrad":
            self._fused_adagrad_(
                [self.flat],
                [self.grad],
                [self.state_a],
                [self._step0],
                lr=g["lr"],
                lr_decay=g["lr_decay"],
                weight_decay=g["weight_decay"],
                eps=g["eps"],
                maximize=False,
            )
        else:
            beta1, beta2 = g["betas"]
            self._fused_adam_(
                [self.flat],
                [self.grad],
                [self.state_a],
                [self.state_b],
                [],
                [self._step0],
                lr=g["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=g["weight_decay"],
                eps=g["eps"],
                amsgrad=False,
                maximize=False,
            )

    def named_gradients(self) -> dict[str, Tensor]:
        """The last computed gradients by parameter name (views into :attr:`grad`)."""
        names = [n for n, _ in self.model.named_parameters()]
        return dict(zip(names, self.grad_views, strict=True))


def _product(
    out: Tensor,
    a: Tensor,
    b: Tensor,
    bias: Tensor | None = None,
    beta: float = 1.0,
    alpha: float = 1.0,
    emulate_bf16: bool = False,
) -> Tensor:
    """out <- alpha a @ b + beta bias, or alpha a @ b without a bias, in out's dtype.

    ``emulate_bf16`` (bf16 tensors): through float32 kernels instead, the inputs widened (exact),
    the products and sums in float32, the result rounded to bf16 once (to nearest even): what a
    bf16 kernel with float32 accumulation computes, up to the order of the sums, several times
    faster than torch's bf16 kernels on a CPU without bf16 instructions, so that bf16 training's
    accuracy can be measured there (``AEVB_FORCE_CPU_BF16=emulate``)."""
    if emulate_bf16:
        wide = None if bias is None else bias.float()
        result = torch.empty(out.shape, dtype=torch.float32, device=out.device)
        return out.copy_(_product(result, a.float(), b.float(), wide, beta, alpha))
    if bias is None:
        return out.addmm_(a, b, beta=0, alpha=alpha)
    return torch.addmm(bias, a, b, beta=beta, alpha=alpha, out=out)


def _own_state_dict(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: object
) -> None:
    """state_dict hook: copy tensors that are views into the flat buffer, so that the state dict
    can be saved as is (safetensors refuses tensors sharing memory) and does not change under
    later training steps. Parameters themselves (``keep_vars=True``) are left alone."""
    for k, v in state_dict.items():
        if k.startswith(prefix) and not isinstance(v, nn.Parameter):
            state_dict[k] = owned_tensor(v)


class FastWakeSleepStep(FastStep):
    """One wake-sleep step (:class:`aevb.algorithms.WakeSleep`) on the fast engine's machinery.

    Wake: z = mu + sigma eps from the encoder (no gradient to phi), and the decoder's gradient of
    -mean log p(x, z). Sleep: z_d ~ N(0, I), x_d ~ p(x|z_d) from the decoder (no gradient), and the
    encoder's gradient of -mean log q(z_d|x_d). The generator is drawn in the autograd step's order
    and shapes (eps, z_d, then the Bernoulli draws or the Gaussian noise); the decoder runs once on
    the wake and dream latents stacked; one fused optimizer update. The step returns estimator A
    of the minibatch bound from the wake pass, as the autograd step does.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(model, optimizer, "A", 1)

    def _bufs(self, m: int) -> SimpleNamespace:
        b = self._buffers.get(m)
        if b is None:
            b = super()._bufs(m)  # the wake pass's buffers (L = 1); the sleep reuses them
            kw: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
            J, D = self.J, self.D
            rank, world = self.shard
            lo, hi = rank * m, (rank + 1) * m
            nd = 2 * D if self.gaussian else D
            b.zz = torch.empty(2 * m, J, **kw)  # [wake z; dream z_d] through the decoder at once
            b.hh = [torch.empty(2 * m, h.shape[1], **kw) for h in b.hd]
            b.oo = torch.empty(2 * m, nd, **kw)
            b.z, b.z2, b.o = b.zz[:m].view(1, m, J), b.zz[:m], b.oo[:m]
            b.hd = [hh[:m] for hh in b.hh]  # the wake rows, for the decoder's backward
            b.zz_d, b.od = b.zz[m:], b.oo[m:]
            b.od_mean, b.od_lv = b.od[:, :D], b.od[:, D:]
            # the dreams of the whole global minibatch are drawn (data parallel: this rank's used)
            b.zd_all = b.zz_d if world == 1 else torch.empty(world * m, J, **kw)
            b.zd = b.zd_all[lo:hi]
            b.copy_zd = world > 1
            b.ud_all = torch.empty(world * m, D, **kw)  # Bernoulli: uniforms; Gaussian: noise
            b.ud = b.ud_all[lo:hi]
            b.xd = torch.empty(m, D, **kw)
        return b

    @torch.no_grad()
    def gradients(
        self, x: Tensor, generator: torch.Generator | None, kl_weight: float = 1.0
    ) -> Tensor:
        """Fill :attr:`grad` (decoder: wake, encoder: sleep); return the estimator-A bound."""
        if kl_weight != 1.0:
            raise ValueError("wake-sleep has no KL weight")
        self._check()
        if x.dtype != self.dtype or x.device != self.device:
            x = x.to(device=self.device, dtype=self.dtype)
        x = x.contiguous()
        m = x.shape[0]
        s = 1.0 / m
        b = self._bufs(m)
        We, be = self._enc_head[:2]
        Wd, bd = self._dec_head[:2]
        mu, lv, std = b.mu, b.lv, b.std

        # ---- wake: z ~ q(z|x) as q.rsample(1, generator), held fixed
        h = self._forward(self._enc, x, b.he)
        torch.addmm(be, h, We.t(), out=b.e)
        torch.mul(lv, 0.5, out=std).exp_()
        b.eps_all.normal_(generator=generator)
        eps = b.eps
        torch.addcmul(mu, std, eps, out=b.z)
        z = b.z2
        # log p(z) - log q(z|x) = -1/2 (z^2 - logvar - eps^2), summed: the bound's latent part
        extra = (lv.sum() + eps.square().sum() - z.square().sum()) * 0.5

        # ---- the dreams' latents z_d ~ N(0, I) (sample_x's prior.rsample); decoder on [z; z_d]
        b.zd_all.normal_(generator=generator)
        if b.copy_zd:
            b.zz_d.copy_(b.zd)
        h = self._forward(self._dec, b.zz, b.hh)
        torch.addmm(bd, h, Wd.t(), out=b.oo)
        logp = self._gaussian(x, b, m) if self.gaussian else self._bernoulli(x, b)

        # ---- x_d ~ p(x|z_d), drawn as sample_x draws it
        if self.gaussian:
            torch.sigmoid(b.od_mean, out=b.xd)
            b.ud_all.normal_(generator=generator)
            std_x = torch.mul(b.od_lv, 0.5, out=b.t1).exp_()
            b.xd.add_(std_x.mul_(b.ud))
        else:
            torch.sigmoid(b.od, out=b.xd)
            b.ud_all.uniform_(generator=generator)  # = torch.rand
            torch.gt(b.xd, b.ud, out=b.xd)  # x_d = [u < y]

        # ---- wake backward: -mean log p(x|z) w.r.t. the decoder (log p(z) has no theta)
        self._backward(self._dec, self._dec_head, b.go, b.hd, b.ghd, z, s, None)

        # ---- sleep: -mean log q(z_d|x_d) w.r.t. the encoder
        xd = b.xd
        h = self._forward(self._enc, xd, b.he)
        torch.addmm(be, h, We.t(), out=b.e)
        r = torch.sub(mu, b.zd, out=b.tj)  # mu - z_d
        inv_var = torch.neg(lv, out=std).exp_()
        gmu = torch.mul(r, inv_var, out=b.gmu)  # d/dmu = (mu - z_d) exp(-logvar)
        torch.addcmul(self._half, gmu, r, value=-0.5, out=b.glv)  # (1 - (z_d-mu)^2 e^-lv) / 2
        ge = b.ge.mul_(s)
        self._backward(self._enc, self._enc_head, ge, b.he, b.ghe, xd, None, None)
        return (logp + extra) * s
