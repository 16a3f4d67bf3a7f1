"""Data-parallel training on several processes with PyTorch's own ``torch.distributed``.

``torchrun --nproc-per-node P -m aevb train ...`` starts P processes; :func:`setup_from_env`
joins them into one process group (gloo on CPU, NCCL on CUDA) from torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Every rank holds the
whole model; each step, each rank computes the gradient of the bound on its own shard of the global
minibatch, the gradients are averaged with ``all_reduce`` and every rank applies the same update,
so the parameters stay identical (checked at every evaluation).

Why not ``DistributedDataParallel``: the fast AEVB engine (:mod:`aevb.fast`) writes its gradients
by hand into one flat buffer, outside autograd, and the autograd steps call the model's
``objective``/``elbo`` rather than ``forward``, so DDP has nothing to hook. We issue the collective
DDP would issue - an average of all gradients, in one flat (coalesced) buffer - ourselves: after
the fast engine's backward (:func:`make_data_parallel` gives it a gradient hook) or, for autograd
steps, in a pre-hook of the optimizer's ``step``. Without DDP's overlap of communication and
backward; the models are small and the all-reduce is one call per step.

Failures end the job: every collective has a timeout (``AEVB_DIST_TIMEOUT`` seconds, default
:data:`DEFAULT_TIMEOUT`). A rank that dies closes its connections, and its peers' next collective
fails at once; a rank that hangs makes the others' collective fail after the timeout; torchrun then
stops the remaining ranks. See docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from . import compat
from .errors import ConfigError, DataError, RunError

if TYPE_CHECKING:
    from .algorithms.base import Algorithm

TIMEOUT_ENV = "AEVB_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
"""Seconds a collective waits for the other ranks before the job fails (``AEVB_DIST_TIMEOUT``)."""

T = TypeVar("T")


class RankLostError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or left the job."""


_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, RunError, RuntimeError)


# --------------------------------------------------------------------------- who am I


def launched() -> bool:
    """Whether this process was started by torchrun (or alike) as one of several ranks."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; start with torchrun"
        ) from None


def active() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one that writes checkpoints, metrics, figures and prints."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def timeout_seconds() -> float:
    """The collective timeout from ``AEVB_DIST_TIMEOUT`` (seconds), else the default."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return value


def shard_bounds(n: int) -> tuple[int, int]:
    """This rank's contiguous part [lo, hi) of n items split as evenly as possible."""
    r, p = rank(), world_size()
    return (n * r) // p, (n * (r + 1)) // p


# --------------------------------------------------------------------------- set-up


def setup_from_env(device: torch.device) -> torch.device:
    """Join torchrun's process group if launched by it; return the device this rank uses.

    No-op (returns ``device``) in a single process or when a group already exists. On CUDA each
    rank takes GPU ``LOCAL_RANK`` (unless an index was given) and the backend is NCCL; on CPU gloo.
    """
    if not launched():
        return device
    timeout = timedelta(seconds=timeout_seconds())
    if device.type == "cuda" and device.index is None:
        lr = local_rank()
        if lr >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {lr} has no GPU (this machine has {torch.cuda.device_count()}); "
                "start at most that many processes per node"
            )
        device = torch.device("cuda", lr)
    if dist.is_initialized():
        return device
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run in one process")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"{key} is not set; start several processes with torchrun")
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    except RuntimeError as e:  # DistStoreError, DistNetworkError: the ranks never met
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise RankLostError(
            f"rank {os.environ['RANK']} could not join the others at {os.environ['MASTER_ADDR']}:"
            f"{os.environ['MASTER_PORT']} within {timeout_seconds():g} s ({TIMEOUT_ENV}); check "
            f"that every rank was started [{(lines[-1] if lines else type(e).__name__)[:300]}]"
        ) from e
    atexit.register(teardown)
    return device


def teardown() -> None:
    """Leave the process group (registered at exit by :func:`setup_from_env`).

    The ranks meet at a barrier first: gloo aborts a process ("terminate called without an active
    exception") when it tears down its group while a peer is still using it.
    """
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # a peer is gone: nothing to wait for
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed collective (a rank that died or hung) into one clear RankLostError."""
    try:
        yield
    except RuntimeError as e:  # DistBackendError, DistNetworkError and gloo's own errors
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(e).__name__
        raise RankLostError(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: {what} failed, so another rank "
            f"died, left or hung for over {timeout_seconds():g} s ({TIMEOUT_ENV}); the job stops "
            f"(resume it with --resume RUNDIR) [{cause[:300]}]"
        ) from e


def _comm_device() -> torch.device:
    """Where small control tensors live: the GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        with _collective("a barrier"):
            dist.barrier()


# --------------------------------------------------------------------------- collectives


def all_reduce_mean_(t: Tensor) -> Tensor:
    """Average t over ranks in place (SUM then divide: gloo has no AVG); t itself is returned."""
    if active():
        with _collective("an all-reduce"):
            dist.all_reduce(t)
        t.div_(dist.get_world_size())
    return t


def average_gradients(params: Iterable[Tensor]) -> None:
    """Average the ``.grad`` of params over ranks with one all-reduce of a flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not active():
        return
    flat = compat.flatten(grads)
    all_reduce_mean_(flat)
    for g, new in zip(grads, compat.unflatten(flat, grads), strict=True):
        g.copy_(new)


def gather_cat(t: Tensor) -> Tensor:
    """Concatenate every rank's 1-D t (lengths may differ) in rank order, on every rank."""
    if not active():
        return t
    p = dist.get_world_size()
    n = torch.tensor([t.numel()], dtype=torch.int64, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(p)]
    with _collective("gathering evaluation results"):
        dist.all_gather(sizes, n)
    lengths = [int(s) for s in sizes]
    width = max(lengths)
    padded = torch.zeros(width, dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t.reshape(-1)
    parts = [torch.empty_like(padded) for _ in range(p)]
    with _collective("gathering evaluation results"):
        dist.all_gather(parts, padded)
    return torch.cat([part[:k] for part, k in zip(parts, lengths, strict=True)])


def check_replicas(tensors: Iterable[Tensor], what: str = "parameters") -> None:
    """Raise if the tensors differ between ranks (all-reduce of max and min, compared exactly)."""
    if not active():
        return
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    hi, lo = flat.clone(), flat.clone()
    with _collective("comparing the ranks' parameters"):
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    diff = float((hi - lo).abs().max()) if flat.numel() else 0.0
    if diff != 0.0:
        raise RuntimeError(
            f"the ranks' {what} differ (by up to {diff:.3g}) though they must stay identical; "
            "this is a bug in aevb's data-parallel step, please report it"
        )


def broadcast_(tensors: Iterable[Tensor]) -> None:
    """Overwrite tensors with rank 0's (the start of a data-parallel run, as DDP does)."""
    if not active():
        return
    with _collective("broadcasting rank 0's parameters"):
        for t in tensors:
            dist.broadcast(t.data, src=0)


def make_data_parallel(alg: Algorithm) -> None:
    """Average alg's gradients over ranks before each of its parameter updates.

    The fast AEVB engine gets a hook on its flat gradient buffer and draws the noise of the whole
    global minibatch, of which each rank uses its own part: the step is then the single-process
    step on the global minibatch, up to floating-point summation order. Autograd steps get a
    pre-hook on their optimizer's ``step``; their noise comes from per-rank streams.
    """
    if not active() or alg.data_parallel:
        return
    alg.data_parallel = True
    if alg.fast is not None:
        alg.fast.shard_noise(rank(), world_size(), all_reduce_mean_)
        alg.noise_sharded = True
        return

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        average_gradients(p for g in opt.param_groups for p in g["params"])

    alg.optimizer.register_step_pre_hook(hook)
    alg.noise_sharded = False


# --------------------------------------------------------------------------- errors across ranks


def _share_outcome(error: Exception | None) -> None:
    """Rank 0 tells every rank whether its work failed; the others raise the same error."""
    dev = _comm_device()
    code = 0
    msg = b""
    if error is not None:
        code = next((i + 1 for i, e in enumerate(_ERRORS) if isinstance(error, e)), len(_ERRORS))
        msg = str(error).encode()[:4000]
    head = torch.tensor([code, len(msg)], dtype=torch.int64, device=dev)
    with _collective("waiting for rank 0"):
        dist.broadcast(head, src=0)
    code, length = int(head[0]), int(head[1])
    if code == 0:
        return
    buf = torch.zeros(max(length, 1), dtype=torch.uint8, device=dev)
    if error is not None:
        buf[:length] = torch.frombuffer(bytearray(msg), dtype=torch.uint8)
    with _collective("waiting for rank 0"):
        dist.broadcast(buf, src=0)
    if error is not None:
        raise error
    cls = _ERRORS[code - 1] if code <= len(_ERRORS) else RuntimeError
    raise cls(bytes(buf[:length].cpu().tolist()).decode(errors="replace"))


def on_main(fn: Callable[[], T]) -> T | None:
    """Run fn on rank 0 only (e.g. create the run directory); its error is raised on every rank."""
    if not active():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
    _share_outcome(error)
    return result


def main_first(fn: Callable[[], T]) -> T:
    """Run fn on rank 0, then (if it succeeded) on the others: e.g. a download, then reads."""
    if not active():
        return fn()
    result = on_main(fn)
    if not is_main():
        result = fn()
    return result  # type: ignore[return-value]
