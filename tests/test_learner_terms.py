"""The bound's two terms at every evaluation, and the use of the latent space (issue 18).

bound = E_q[log p(x|z)] - KL(q(z|x) || p(z)) on the same draws; the KL per latent dimension
(analytic, or by the bound's own draws); the active units of Burda et al. (2015); the figures,
the end-of-training note, ``aevb evaluate`` and ``aevb plot --terms``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from matplotlib.colors import to_rgba

from aevb import figures, plot, runs
from aevb.cli import _latent_usage_note, main
from aevb.diagnostics import (
    ACTIVE_THRESHOLD,
    activity,
    bound_terms,
    kl_per_dimension,
    latent_usage,
)
from aevb.errors import RunError
from aevb.model import VAE, ModelConfig

PNG = b"\x89PNG\r\n\x1a\n"
SPLITS = ("train", "test")


def _model(posterior: str = "normal", latent_dim: int = 4, seed: int = 0) -> VAE:
    """A small random VAE on 64-pixel data, with weights large enough for a non-trivial KL."""
    m = VAE(ModelConfig(x_dim=64, latent_dim=latent_dim, hidden=16, posterior=posterior))
    m.init_parameters(std=0.3, generator=torch.Generator().manual_seed(seed))
    return m.eval()


def _x(n: int = 50, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 64), 0.3), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple:
    """A run trained by ``aevb train`` with more latent dimensions than a tiny budget uses:
    (run directory, what the command wrote to stderr)."""
    out = tmp_path_factory.mktemp("terms") / "run"
    err = io.StringIO()
    argv = ["train", "--data", "digits", "--out", str(out), "--latent-dim", "8"]
    argv += ["--hidden", "20", "--budget", "300", "--lr", "0.02", "--eval-size", "200", "--quiet"]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return out, err.getvalue()


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory, small_run):
    """A second small run, trained with a KL warm-up (its records hold ``kl_weight``)."""
    out = tmp_path_factory.mktemp("terms") / "weighted"
    small_run(out, budget=300, eval_size=200, kl_warmup=200)
    return out


# --------------------------------------------------------------------------- (a) the two terms


def test_every_record_has_bound_equal_reconstruction_minus_kl(cli_run, weighted_run):
    for run in (cli_run[0], weighted_run):
        records = runs.read_metrics(run)
        j = runs.read_config(run)["model"]["latent_dim"]
        assert len(records) >= 3
        for rec in records:
            for s in SPLITS:
                bound, r, kl = rec[f"{s}_bound"], rec[f"{s}_reconstruction"], rec[f"{s}_kl"]
                assert bound == pytest.approx(r - kl, abs=1e-4), (run, rec["samples_seen"], s)
                assert kl >= 0.0 and rec[f"{s}_reconstruction_se"] > 0 and rec[f"{s}_kl_se"] > 0
                per_dim, act = rec[f"{s}_kl_per_dim"], rec[f"{s}_activity"]
                assert len(per_dim) == len(act) == j
                assert sum(per_dim) == pytest.approx(kl, rel=1e-4)  # B: the analytic KL
                assert rec[f"{s}_active_units"] == sum(a > ACTIVE_THRESHOLD for a in act)


@pytest.mark.parametrize(
    "posterior, estimator", [("normal", "B"), ("normal", "A"), ("logistic", "A")]
)
def test_terms_come_from_the_bounds_own_draws(posterior, estimator):
    m = _model(posterior)
    x = _x()
    with torch.no_grad():
        ref = m.elbo(x, estimator, 3, torch.Generator().manual_seed(7))
        t = m.bound_terms(x, estimator, 3, torch.Generator().manual_seed(7))
    assert torch.equal(t.bound, ref)  # the very numbers the bound was before the terms
    torch.testing.assert_close(t.reconstruction - t.kl, t.bound, rtol=0, atol=1e-4)
    if estimator == "A" and posterior == "logistic":  # no closed form: the same draws per dim
        torch.testing.assert_close(t.kl_per_dim.sum(1), t.kl, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- (b) per dimension


def test_per_dimension_kl_adds_up_and_matches_monte_carlo(monkeypatch):
    m = _model()
    x = _x(20)
    with torch.no_grad():
        params = m.encoder(x)
        per_dim = kl_per_dimension(params, m.encoder.family, m.prior)  # analytic
        total = m.elbo_terms(x, "B", 1, torch.Generator().manual_seed(0))[1]
        torch.testing.assert_close(per_dim.sum(1), total, rtol=1e-5, atol=1e-5)
        assert per_dim.min() >= 0 and per_dim.shape == (20, 4)
        # the Monte Carlo route (taken where there is no closed form), forced here: 4000 draws
        z = m.encoder.posterior(x).rsample(4000, torch.Generator().manual_seed(3))  # (L, B, J)
        monkeypatch.setattr("aevb.diagnostics.has_analytic_kl", lambda q, p: False)
        mc = kl_per_dimension(params, m.encoder.family, m.prior, z).mean(0)
        # its standard error over the draws, from log q(z_d|x) - log p(z_d) written out
        mu, lv = params
        log_ratio = (-0.5 * (lv + (z - mu) ** 2 * torch.exp(-lv)) + 0.5 * z**2).mean(1)
        torch.testing.assert_close(log_ratio.mean(0), mc, rtol=1e-4, atol=1e-5)
        se = log_ratio.std(0) / math.sqrt(len(z))
        analytic = per_dim.mean(0)
        assert torch.all((mc - analytic).abs() < 4 * se), (mc, analytic, se)
        assert torch.all(se < 0.05 * analytic)  # a real test: the tolerance is tight


# --------------------------------------------------------------------------- (c) active units


def test_active_units_on_an_encoder_that_ignores_x_in_some_dimensions():
    m = _model(latent_dim=4)
    head = m.encoder.net.head  # one matrix: rows 0..J-1 give mu, J..2J-1 log sigma^2
    with torch.no_grad():
        for d in (1, 3):  # mu_d ignores x: the same posterior mean for every point
            head.weight[d].zero_()
            head.bias[d] = 0.7
        for d in (0, 2):  # mu_d varies strongly with x
            head.weight[d].mul_(20.0)
        t = bound_terms(m.encoder, m.decoder, m.prior, _x(200), "B", 1, None)
    usage = latent_usage(t.center, t.kl_per_dim)
    assert usage.active_units == 2
    assert usage.activity[1] == usage.activity[3] == 0.0
    assert min(usage.activity[0], usage.activity[2]) > 10 * ACTIVE_THRESHOLD
    # inactive dimensions may still cost KL (a mean away from 0), never information about x
    assert usage.kl_per_dim[1] > 0.2


def test_activity_is_the_population_variance_over_points():
    # two points at +-0.09: population variance 0.0081 (inactive), sample variance 0.0162
    center = torch.tensor([[0.09, 1.0], [-0.09, -1.0]])
    var = activity(center)
    assert var.tolist() == pytest.approx([0.0081, 1.0])
    assert latent_usage(center, torch.zeros(2, 2)).active_units == 1
    assert latent_usage(center, torch.zeros(2, 2), threshold=0.008).active_units == 2


# --------------------------------------------------------------------------- (d) figure and note


def test_latent_usage_figure_is_drawn_for_runs_with_an_encoder(cli_run):
    png = cli_run[0] / runs.FIGURES / "latent_usage.png"
    assert png.read_bytes()[:8] == PNG
    last = runs.read_metrics(cli_run[0])[-1]
    last["test_activity"][0] = 1.0  # one dimension made active, to see both colours
    fig = figures.latent_usage_figure(last["test_kl_per_dim"], last["test_activity"])
    bars = fig.axes[0].patches
    blue = [b for b in bars if b.get_facecolor() == pytest.approx(to_rgba("tab:blue"))]
    grey = [b for b in bars if b.get_facecolor() == pytest.approx(to_rgba("tab:gray"))]
    active = sum(a > ACTIVE_THRESHOLD for a in last["test_activity"])
    assert len(bars) == 8 and len(blue) == active >= 1 and len(grey) == 8 - active
    heights = [b.get_height() for b in bars]
    assert heights == sorted(heights, reverse=True)
    assert fig.axes[0].get_xticklabels()[0].get_text() == str(
        1 + max(range(8), key=lambda d: last["test_kl_per_dim"][d])
    )


def test_the_note_when_fewer_than_half_the_dimensions_are_active(cli_run):
    run, err = cli_run
    last = runs.read_metrics(run)[-1]
    assert 2 * last["test_active_units"] < 8  # the run this test needs
    (line,) = [ln for ln in err.splitlines() if "active" in ln]
    assert line.startswith("aevb: note: only ") and "--kl-warmup" in line
    assert "--latent-dim" in line
    half = {"test_active_units": 2, "test_kl_per_dim": [0.1] * 4}
    assert _latent_usage_note(half) is None  # half active: no note
    assert "1 of 4" in (_latent_usage_note({**half, "test_active_units": 1}) or "")
    assert "try a KL warm-up" in (_latent_usage_note({**half, "test_active_units": 1}) or "")
    warmed = _latent_usage_note({**half, "test_active_units": 1}, {"kl_warmup": 2_000_000}) or ""
    assert "try a longer KL warm-up (this run's --kl-warmup: 2,000,000 samples)" in warmed
    assert _latent_usage_note({"train_log_likelihood": -90.0}) is None  # MCEM: no usage


# --------------------------------------------------------------------------- (e) and (f) commands


def test_evaluate_reports_the_terms_and_the_latent_usage(cli_run, capsys):
    run = str(cli_run[0])
    assert main(["evaluate", run, "--points", "100"]) == 0
    out = capsys.readouterr().out
    assert "reconstruction E_q[log p(x|z)]" in out and "KL(q(z|x) || p(z))" in out
    assert "active units" in out and "KL per dimension" in out
    assert main(["evaluate", run, "--points", "100", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bound"] == pytest.approx(res["reconstruction"] - res["kl"], abs=1e-4)
    assert res["reconstruction_se"] > 0 and res["kl_se"] > 0
    assert len(res["kl_per_dim"]) == 8 and res["active_threshold"] == ACTIVE_THRESHOLD
    assert 0 <= res["active_units"] <= 8


def test_plot_terms_draws_two_terms_of_several_runs(cli_run, weighted_run, tmp_path):
    out = tmp_path / "terms.png"
    assert main(["plot", "--terms", str(cli_run[0]), str(weighted_run), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    curves = [(name, runs.read_metrics(d)) for name, d in (("a", cli_run[0]), ("b", weighted_run))]
    fig = figures.terms_figure(curves)
    assert len(fig.axes) == 3  # reconstruction, KL, and the weight of the KL-weighted run
    for ax in fig.axes[:2]:  # two runs, train and test
        assert len(ax.get_lines()) == 4
    assert len(fig.axes[2].get_lines()) == 1
    fig = figures.terms_figure(curves[:1])
    assert len(fig.axes) == 2 and [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    mcem = tmp_path / "mcem"
    mcem.mkdir()
    (mcem / runs.METRICS).write_text(json.dumps({"samples_seen": 100, "train_log_likelihood": -1}))
    with pytest.raises(RunError, match="no reconstruction and KL"):
        plot([mcem], tmp_path / "x.png", terms=True)
