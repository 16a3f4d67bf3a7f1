"""Shared fixtures. Real-data tests read $AEVB_DATA_DIR (../shared/data in CI), else skip."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_injection import TALLY, add_to_tally_file
from helpers import CHECKPOINTED_RUN, OVERFIT_TRAIN, SMALL_RUN

import aevb
from aevb.data import load_dataset

# One intra-op thread: the tests' models are small, so OpenMP synchronisation costs more than it
# gives, and on a shared, loaded machine spinning threads slow tiny ops by 10-20x.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of real datasets (mnist/, binarized_mnist/, frey/), or skip the test."""
    d = os.environ.get("AEVB_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("set AEVB_DATA_DIR to the shared data folder (../shared/data) to run this test")
    return Path(d)


@pytest.fixture(scope="session", autouse=True)
def _fault_tally():
    """Write the fault-injection trial counts (fault_injection.TALLY) once, at the end."""
    yield
    add_to_tally_file(TALLY)


# --------------------------------------------------------------------------- small training runs


@pytest.fixture(scope="session")
def small_run() -> Callable[..., aevb.Run]:
    """``small_run(out=None, data="digits", **overrides)``: train a small run (helpers.SMALL_RUN's
    settings, ``overrides`` replacing any of them) with :func:`aevb.train`, and return it.

    ``out=None`` keeps the run in memory. Session-scoped, so fixtures of any scope can use it.
    """

    def make(out: str | Path | None = None, *, data: str = "digits", **overrides) -> aevb.Run:
        return aevb.train(data, out, **{**SMALL_RUN, **overrides})

    return make


@pytest.fixture(scope="session")
def overfit_npz(tmp_path_factory) -> Path:
    """Real digits: 60 training images (easy to overfit), a separate validation and test set."""
    ds = load_dataset("digits")
    path = tmp_path_factory.mktemp("npz") / "digits_small.npz"
    np.savez(path, train=ds.train[:60], valid=ds.train[1000:1300], test=ds.test[:200])
    return path


@pytest.fixture(scope="session")
def overfit_run(tmp_path_factory, small_run, overfit_npz) -> Path:
    """A finished run on ``overfit_npz`` that overfits (helpers.OVERFIT_TRAIN), keeping its best
    model by the validation bound. Read-only: copy it to change it."""
    out = tmp_path_factory.mktemp("sel") / "run"
    small_run(out, data=str(overfit_npz), **OVERFIT_TRAIN, keep="best")
    return out


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, small_run) -> Path:
    """An uninterrupted run with helpers.CHECKPOINTED_RUN's settings. Read-only."""
    out = tmp_path_factory.mktemp("ref") / "run"
    small_run(out, **CHECKPOINTED_RUN)
    return out


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, small_run) -> Path:
    """A finished format-2 run with figures (every kind of file a run holds). Read-only."""
    out = tmp_path_factory.mktemp("base") / "run"
    kw = dict(CHECKPOINTED_RUN, budget=1000, draw_figures=True)
    small_run(out, **kw)
    return out
