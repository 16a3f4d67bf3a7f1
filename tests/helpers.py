"""Constants and small functions the test modules share (the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aevb import runs, training

SMALL_RUN = dict(latent_dim=3, hidden=30, budget=2_000, lr=0.02, progress=False, draw_figures=False)
"""What a small training run is unless a test says otherwise (conftest's ``small_run``): a tiny MLP
on the embedded digits data, a fixed step size (no step-size trials), no progress bar or figures."""

OVERFIT_TRAIN = dict(
    latent_dim=10,
    hidden=200,
    optimizer="adam",
    lr=0.02,
    budget=60_000,
    batch_size=30,
    eval_per_decade=10,
    weight_prior=False,
    validation=True,
)
"""A model large enough to overfit conftest's ``overfit_npz`` (60 training images): the validation
bound peaks, then falls (conftest's ``overfit_run``)."""

CHECKPOINTED_RUN = dict(
    latent_dim=2,
    hidden=16,
    budget=4000,
    lr=0.02,
    seed=5,
    eval_per_decade=3,
    eval_size=200,
    checkpoint_samples=500,
    progress=False,
    draw_figures=False,
)
"""A small model on the embedded digits data, checkpointed every 5 steps: the fault-injection
tests' run (conftest's ``reference_run`` is one, uninterrupted)."""


def error_lines(capsys) -> list[str]:
    """The non-blank lines written to stderr since the last capture."""
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def assert_same_run(a: Path, b: Path) -> None:
    """Two run directories hold bitwise-equal models and the same metrics (but wall time)."""
    wa, wb = load_file(a / runs.MODEL), load_file(b / runs.MODEL)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    def strip(recs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]

    assert strip(runs.read_metrics(a)) == strip(runs.read_metrics(b))


class Crash(Exception):
    """The interruption :func:`crash_after_checkpoint` causes."""


@contextlib.contextmanager
def crash_after_checkpoint(
    n: int,
    error: type[BaseException] = Crash,
    check: Callable[[training.Trainer], None] | None = None,
) -> Iterator[None]:
    """Within the block, training raises ``error`` right after its ``n``-th checkpoint is written
    (a process killed there); ``check(trainer)`` runs before each checkpoint."""
    real = training.Trainer.checkpoint
    calls = [0]

    def checkpoint(self: training.Trainer, *args) -> None:
        if check is not None:
            check(self)
        real(self, *args)
        calls[0] += 1
        if calls[0] == n:
            raise error

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.Trainer, "checkpoint", checkpoint)
        yield
