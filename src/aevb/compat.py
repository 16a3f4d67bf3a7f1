"""Every private torch function aevb calls, each with a public fallback that gives the same result.

The fast engine (:mod:`aevb.fast`), data-parallel training (:mod:`aevb.distributed`) and
:func:`aevb.algorithms.make_optimizer` use a few torch internals because they are faster. Torch
may rename or drop them in any release, so they are reached only through this module, which
chooses once, at import, for each one: the private function where it exists and passes a small
check on CPU, else a public fallback:

=========================  ===========================================  ======================
key of :data:`PATHS`       private fast path                            public fallback
=========================  ===========================================  ======================
``fused_adagrad``          ``torch._fused_adagrad_``                    torch's single-tensor
                                                                        Adagrad, tensor ops
``fused_adam``             ``torch._fused_adam_``                       the same for Adam
``softplus``               ``torch._C._nn.softplus(x, b, t, out=)``     ``F.softplus``, copied
``flatten``                ``torch._utils._(un)flatten_dense_tensors``  ``cat`` / ``split``
``optim_fused_adagrad``    ``torch.optim.Adagrad(fused=True)``          ``foreach=False``
``optim_fused_adam``       ``torch.optim.Adam(fused=True)``             ``foreach=False``
=========================  ===========================================  ======================

The chosen functions have the private functions' signatures, so a caller binds one once (the fast
engine does at construction) and pays nothing per call for the indirection. :data:`PATHS` records
each choice ("private" or "fallback"); :func:`choose` re-makes them (tests remove a private name
and call it; a fast engine built before keeps the functions it bound).

The fused-kernel fallbacks follow torch's single-tensor implementations op for op (weight decay
added to the gradient, ``eps`` outside the square root, the step count read from the float step
tensor, which the caller has already incremented as torch does before its fused kernels), and
:func:`optimizer_kwargs` then asks torch for its single-tensor optimizers, so the fast engine and
the autograd engine still update the same way. The fused kernels compute the same formulas,
rounded slightly differently; on either path a run is deterministic and resumes bitwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

PRIVATE, FALLBACK = "private", "fallback"

#: Which path each name took: "private" or "fallback" (see the module's table).
PATHS: dict[str, str] = {}

#: Device types whose parameters torch's fused Adagrad and Adam accept (``fused=True``).
FUSED_DEVICE_TYPES = ("cpu", "cuda")


# ============================================================== public fallbacks
@torch.no_grad()
def adagrad_fallback_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    state_sums: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool = False,
) -> None:
    """Adagrad in place, as ``torch._fused_adagrad_``: the steps are already incremented."""
    for param, grad, state_sum, step_t in zip(params, grads, state_sums, state_steps, strict=True):
        step = step_t.item()
        grad = -grad if maximize else grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum.addcmul_(grad, grad, value=1)
        std = state_sum.sqrt().add_(eps)
        param.addcdiv_(grad, std, value=-clr)


@torch.no_grad()
def adam_fallback_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """Adam (L2 weight decay) in place, as ``torch._fused_adam_``: the steps are already
    incremented; ``max_exp_avg_sqs`` is used only with ``amsgrad``."""
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = state_steps[i].item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            denom = (max_exp_avg_sqs[i].sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def softplus_fallback(x: Tensor, beta: float, threshold: float, *, out: Tensor) -> Tensor:
    """softplus(x) written into ``out`` (same signature as ``torch._C._nn.softplus``)."""
    return out.copy_(F.softplus(x, beta=beta, threshold=threshold))


def flatten_fallback(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors, flattened and concatenated into one 1-D tensor."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_fallback(flat: Tensor, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Views into ``flat`` with the shapes of ``tensors`` (the inverse of :func:`flatten`)."""
    parts = flat.split([t.numel() for t in tensors])
    return tuple(p.view_as(t) for p, t in zip(parts, tensors, strict=True))


# ============================================================== the chosen functions
# bound by choose(); the annotations are the shape every caller relies on
fused_adagrad_: Callable[..., Any] = adagrad_fallback_
fused_adam_: Callable[..., Any] = adam_fallback_
softplus: Callable[..., Tensor] = softplus_fallback
flatten: Callable[[Sequence[Tensor]], Tensor] = flatten_fallback
unflatten: Callable[[Tensor, Sequence[Tensor]], Sequence[Tensor]] = unflatten_fallback
_OPTIM_FUSED: dict[str, bool] = {"adagrad": False, "adam": False}


def optimizer_kwargs(name: str, device_types: Iterable[str]) -> dict[str, Any]:
    """Keyword arguments for ``torch.optim.Adagrad`` (``name`` "adagrad") or ``Adam`` ("adam")
    over parameters on ``device_types``: ``fused=True`` where torch's fused optimizer works, else
    ``foreach=False`` (torch's single-tensor update, which the fallback kernels reproduce)."""
    if _OPTIM_FUSED.get(name, False) and all(d in FUSED_DEVICE_TYPES for d in device_types):
        return {"fused": True}
    return {"foreach": False}


# ============================================================== the checks
def _probe_tensors(n: int = 7) -> list[Tensor]:
    # fixed values (no random draws: importing aevb must not move torch's global generator)
    base = torch.linspace(-1.5, 2.0, n, dtype=torch.float64)
    return [base.clone(), base.sin(), base.cos().abs() + 0.1]  # param, grad, state


def _adagrad_works(fn: Callable[..., Any]) -> bool:
    kw: dict[str, Any] = {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.05, "eps": 1e-10}
    out = []
    for f in (fn, adagrad_fallback_):
        p, g, s = _probe_tensors()
        step = torch.tensor(3.0)
        f([p], [g], [s], [step], **kw, maximize=False)
        out.append((p, s))
    return all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(*out, strict=True))


def _adam_works(fn: Callable[..., Any]) -> bool:
    kw = {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.05, "eps": 1e-8}
    out = []
    for f in (fn, adam_fallback_):
        p, g, m = _probe_tensors()
        v = m * m
        step = torch.tensor(3.0)
        f([p], [g], [m], [v], [], [step], **kw, amsgrad=False, maximize=False)
        out.append((p, m, v))
    return all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(*out, strict=True))


def _softplus_works(fn: Callable[..., Tensor]) -> bool:
    x = torch.linspace(-30.0, 30.0, 61, dtype=torch.float64)
    out = torch.empty_like(x)
    r = fn(x, 1.0, 20.0, out=out)
    same = r is out or r.data_ptr() == out.data_ptr()
    return same and torch.equal(out, F.softplus(x, beta=1.0, threshold=20.0))


def _flatten_works(flat_fn: Callable[..., Tensor], unflat_fn: Callable[..., Any]) -> bool:
    ts = [t.view(-1, 1) for t in _probe_tensors()] + [torch.arange(6.0, dtype=torch.float64)]
    flat = flat_fn(ts)
    parts = list(unflat_fn(flat, ts))
    return torch.equal(flat, flatten_fallback(ts)) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(parts, ts, strict=True)
    )


def _optim_fused_works(cls: type[torch.optim.Optimizer], kernel: Any) -> bool:
    """Whether the optimizer takes ``fused=True``: it has the parameter and its fused kernel works.

    Nothing is constructed: making a torch optimizer with ``fused=True`` imports torch's compiler
    stack (about 70 MB resident), which the fast engine, calling the kernels itself, never needs.
    """
    return "fused" in inspect.signature(cls.__init__).parameters and kernel is not None


def _works(check: Callable[..., bool], *private: Any) -> bool:
    """Whether every private function is there and passes ``check(*private)``."""
    if any(f is None for f in private):
        return False
    try:
        return bool(check(*private))
    except Exception:  # a private function that is renamed, changed or broken: the fallback
        return False


def _path(ok: bool) -> str:
    return PRIVATE if ok else FALLBACK


def choose() -> dict[str, str]:
    """Choose, for every name, the private function if it exists and works, else the fallback;
    set this module's functions and :data:`PATHS`, and return :data:`PATHS`."""
    global fused_adagrad_, fused_adam_, softplus, flatten, unflatten
    adagrad: Any = getattr(torch, "_fused_adagrad_", None)
    adam: Any = getattr(torch, "_fused_adam_", None)
    sp: Any = getattr(getattr(torch._C, "_nn", None), "softplus", None)
    utils = getattr(torch, "_utils", None)
    flat: Any = getattr(utils, "_flatten_dense_tensors", None)
    unflat: Any = getattr(utils, "_unflatten_dense_tensors", None)

    ok = _works(_adagrad_works, adagrad)
    fused_adagrad_, PATHS["fused_adagrad"] = adagrad if ok else adagrad_fallback_, _path(ok)
    ok = _works(_adam_works, adam)
    fused_adam_, PATHS["fused_adam"] = adam if ok else adam_fallback_, _path(ok)
    ok = _works(_softplus_works, sp)
    softplus, PATHS["softplus"] = sp if ok else softplus_fallback, _path(ok)
    ok = _works(_flatten_works, flat, unflat)
    flatten = flat if ok else flatten_fallback
    unflatten, PATHS["flatten"] = unflat if ok else unflatten_fallback, _path(ok)
    kernels = {"adagrad": PATHS["fused_adagrad"], "adam": PATHS["fused_adam"]}
    for name, cls in (("adagrad", torch.optim.Adagrad), ("adam", torch.optim.Adam)):
        kernel = adagrad if name == "adagrad" else adam
        ok = kernels[name] == PRIVATE and _optim_fused_works(cls, kernel)
        _OPTIM_FUSED[name] = ok
        PATHS[f"optim_fused_{name}"] = _path(_OPTIM_FUSED[name])
    return PATHS


def describe() -> str:
    """The torch version and the fallbacks in use, in a few words (for ``aevb --version``)."""
    fallbacks = [k for k, v in PATHS.items() if v != PRIVATE]
    paths = "fallbacks for " + ", ".join(fallbacks) if fallbacks else "all private fast paths"
    return f"torch {torch.__version__}, {paths}"


choose()
