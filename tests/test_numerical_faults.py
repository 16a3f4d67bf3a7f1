"""Numerical faults (docs/RELIABILITY.md): a non-finite step is named and the last good
checkpoint kept; real divergences stop at their step; the step-size search skips a diverging
candidate; the Gaussian decoder's variance has no floor."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fault_injection import TALLY, assert_matches_reference, check_readable
from helpers import CHECKPOINTED_RUN

import aevb
from aevb import algorithms, runs, training
from aevb.cli import main
from aevb.errors import NumericalError


def _inject(monkeypatch, at: int, what: str) -> None:
    """Make step number ``at`` produce a NaN bound, or non-finite parameters."""
    real = algorithms.AEVB.step
    count = {"n": 0}

    def step(self, x, generator, *rest):
        bound = real(self, x, generator, *rest)
        count["n"] += 1
        if count["n"] == at:
            if what == "bound":
                return bound * float("nan")
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[3] = float("inf")
        return bound

    monkeypatch.setattr(algorithms.AEVB, "step", step)


@pytest.mark.parametrize("what, at", [("bound", 23), ("parameters", 31)])
def test_a_non_finite_step_is_named_and_the_last_good_checkpoint_kept(
    tmp_path, monkeypatch, small_run, reference_run, capsys, what, at
):
    run = tmp_path / "run"
    _inject(monkeypatch, at, what)
    with pytest.raises(NumericalError) as e:
        small_run(run, **CHECKPOINTED_RUN)
    msg = str(e.value)
    assert f"step {at:,} " in msg and "\n" not in msg, msg
    assert ("bound was nan" if what == "bound" else "parameters non-finite") in msg
    kept = runs.load_run_tensors(run, runs.STATE)[1]["step"]
    assert 0 < kept < at  # nothing was written from the bad step on
    assert f"last good checkpoint (step {kept}, " in msg and "smaller step size" in msg
    check_readable(run)
    TALLY["numerical_faults_injected"] += 1
    # the same fault in a resumed run, through the command line: one line, exit 2
    monkeypatch.undo()
    _inject(monkeypatch, at - kept, what)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"step {at:,} " in err and "\n" not in err
    assert runs.load_run_tensors(run, runs.STATE)[1]["step"] == kept
    monkeypatch.undo()
    # the kept checkpoint is good: resuming from it without the fault gives the reference run
    aevb.train(resume=run, progress=False, draw_figures=False)
    assert_matches_reference(run, reference_run)
    TALLY["numerical_faults_caught"] += 1


def test_a_diverging_gaussian_run_stops_at_its_step(tmp_path, small_run):
    """A real divergence: the Gaussian decoder's variance collapses at a large step size."""
    for seed in (0, 1, 2, 3):  # seed 0 diverges at step 94; the others are spares
        run = tmp_path / f"run{seed}"
        kw = dict(CHECKPOINTED_RUN, likelihood="gaussian", lr=0.5, budget=20_000, seed=seed)
        try:
            small_run(run, **kw)
        except NumericalError as e:
            msg = str(e)
            break
    else:
        pytest.fail("no Gaussian run diverged at --lr 0.5")
    assert re.search(r"step \d+ .*bound was -inf.*no floor", msg), msg
    step = int(re.search(r"step ([\d,]+) ", msg).group(1).replace(",", ""))
    assert runs.load_run_tensors(run, runs.STATE)[1]["step"] < step
    check_readable(run)
    TALLY["numerical_faults_injected"] += 1
    TALLY["numerical_faults_caught"] += 1


def test_lr_auto_skips_a_diverging_candidate(monkeypatch, small_run):
    real = algorithms.AEVB.step

    def step(self, x, generator, *rest):  # the largest candidate diverges at its 7th step
        bound = real(self, x, generator, *rest)
        self.n_steps = getattr(self, "n_steps", 0) + 1
        lr = self.optimizer.param_groups[0]["lr"]
        return bound * float("nan") if lr == 0.1 and self.n_steps >= 7 else bound

    monkeypatch.setattr(algorithms.AEVB, "step", step)
    kw = {k: v for k, v in CHECKPOINTED_RUN.items() if k not in ("lr", "checkpoint_samples")}
    run = small_run(lr="auto", **kw)
    search = run.config["train"]["lr_search"]
    assert search["training_bound"]["0.1"] == float("-inf")
    assert search["chosen"] in (0.01, 0.02) and run.config["train"]["lr"] == search["chosen"]


def test_gaussian_decoder_has_no_variance_floor_and_no_clamp():
    """What docs/RELIABILITY.md states: the mean is sigmoid-bounded, the log-variance is not."""
    from scipy.stats import norm

    from aevb.distributions import gaussian_log_prob
    from aevb.networks import Gaussian

    raw = torch.tensor([[-1e4, -30.0, 0.0, 30.0, 1e4]])
    lv = torch.tensor([[-1e4, -100.0, 0.0, 100.0, 1e4]])
    mean, logvar = Gaussian.constrain(raw, lv)
    assert torch.equal(logvar, lv)  # no floor, no clamp
    assert mean.min() >= 0 and mean.max() <= 1
    # exact (against scipy) wherever the float64 arithmetic is finite
    lvs = torch.linspace(-40, 40, 81, dtype=torch.float64)
    x, mu = torch.full_like(lvs, 0.3), torch.full_like(lvs, 0.7)
    got = gaussian_log_prob(mu[:, None], lvs[:, None], x[:, None])
    want = norm.logpdf(0.3, 0.7, np.exp(0.5 * lvs.numpy()))
    assert np.allclose(got.numpy(), want, rtol=1e-12, atol=0)
    # float32: finite down to a log-variance of about -88 (exp(88) is float32's largest), then
    # -inf: a collapsing variance shows as a non-finite bound, which the Trainer stops on
    f32 = dict(dtype=torch.float32)
    ok = gaussian_log_prob(torch.tensor([[0.7]], **f32), torch.tensor([[-80.0]], **f32), 0.3)
    bad = gaussian_log_prob(torch.tensor([[0.7]], **f32), torch.tensor([[-100.0]], **f32), 0.3)
    assert torch.isfinite(ok).all() and bad.item() == float("-inf")


@pytest.mark.parametrize("engine", ["fast", "autograd"])
def test_a_collapsed_variance_stops_training_at_its_step(engine):
    x = torch.from_numpy(aevb.data.load_dataset("digits").train)
    model = aevb.VAE(aevb.ModelConfig(x_dim=64, latent_dim=2, hidden=16, likelihood="gaussian"))
    with torch.no_grad():
        model.decoder.net.head.bias[64:] = -200.0  # a log-variance far below float32's range
    cfg = training.TrainConfig(lr=0.02, budget=2000, engine=engine)
    alg = algorithms.AEVB(model, cfg, len(x), 0.02)
    assert alg.engine == engine
    trainer = training.Trainer(alg, x, None, cfg, progress=False, evaluate_points=False)
    with pytest.raises(NumericalError, match="step 1 .*bound was -inf.*no floor"):
        trainer.run()
    TALLY["numerical_faults_injected"] += 1
    TALLY["numerical_faults_caught"] += 1
