"""Constants and small functions the test modules share (the fixtures are in conftest.py)."""

from __future__ import annotations

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
