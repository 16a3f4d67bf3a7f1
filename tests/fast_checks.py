"""The small model, data and checks shared by the fast-engine tests (test_fast.py,
test_fast_wake_sleep.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from aevb import runs
from aevb.model import VAE, ModelConfig
from aevb.training import Trainer

X_DIM, Z_DIM, HIDDEN, M = 30, 4, 16, 12


def make_model(likelihood="bernoulli", activation="tanh", dtype=torch.float64, depth=1, seed=1):
    cfg = ModelConfig(
        x_dim=X_DIM,
        latent_dim=Z_DIM,
        hidden=HIDDEN,
        depth=depth,
        activation=activation,
        likelihood=likelihood,
    )
    model = VAE(cfg).to(dtype)
    # larger than the paper's 0.01 so that every term of the gradient matters
    model.init_parameters(0.3, torch.Generator().manual_seed(seed))
    return model


def make_data(likelihood, dtype, n=M, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, X_DIM, generator=g, dtype=dtype)
    return (x > 0.6).to(dtype) if likelihood == "bernoulli" else x


def assert_resume_is_bitwise_exact(trainer: Callable[[int], Trainer], tmp_path: Path) -> None:
    """``trainer(budget)`` builds a fresh Trainer on the fast engine. 600 samples, a checkpoint
    through safetensors, and 600 more equal 1 200 at once: parameters and optimizer state."""
    whole = trainer(1200)
    whole.run()
    first = trainer(600)
    first.run()
    tensors, meta = first.state()
    runs.save_tensors(tmp_path / "state.safetensors", tensors, meta)
    tensors, meta = runs.load_tensors(tmp_path / "state.safetensors")
    resumed = trainer(1200)
    resumed.load_state(tensors, meta)
    resumed.run()
    for (name, p), q in zip(
        whole.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    assert torch.equal(whole.alg.fast.state_a, resumed.alg.fast.state_a)  # optimizer state too
    assert not torch.equal(first.alg.fast.state_a, resumed.alg.fast.state_a)
