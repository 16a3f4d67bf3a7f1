"""The score-function estimator (PAPER.md section 2) against reparameterization (section 3).

Where the truth is known: a VAE with a 1-D latent, an encoder linear in x and a linear-Gaussian
decoder of fixed variance (the library's own modules, depth 0, ``gaussian-linear``) has an ELBO
that is a closed form in the posterior's (m, log s^2), so its exact gradient wrt the encoder is
known. Every estimator's mean gradient matches it within 4 standard errors of the draws, and their
variances are ordered as the theory says. Then the command (``aevb gradients``), its bad input,
and training with ``--estimator score-function`` (its baseline checkpointed, a crash-resume
bitwise equal, and slower progress than estimator B).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import Crash, assert_same_run, crash_after_checkpoint, error_lines

import aevb
from aevb import runs
from aevb.algorithms import AEVB
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.gradient_variance import GRADIENT_ESTIMATORS, gradient_moments
from aevb.model import VAE, ModelConfig
from aevb.settings import TrainConfig

D = 4  # data dimension
SIGMA2 = 0.25  # the decoder's fixed variance
TINY = dict(latent_dim=2, hidden=16, lr=0.02, progress=False, draw_figures=False, eval_size=200)


def linear_gaussian_vae() -> tuple[VAE, torch.Tensor]:
    """z ~ N(0, 1); x|z ~ N(w z + b, SIGMA2 I); q(z|x) = N(a.x + c, exp(u.x + v)); and 8 points.

    The parameters keep the posterior means near 0 (0.1 < m < 0.25, s^2 ~ 0.8) while x sits ~3
    away from the decoder's mean, so f = log p(x, z) - log q(z|x) is -50 to -100 nats.
    """
    cfg = ModelConfig(
        x_dim=D, latent_dim=1, hidden=1, depth=0, likelihood="gaussian-linear", prior="normal"
    )
    model = VAE(cfg).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        enc = model.encoder.net.head  # rows: m, log s^2
        enc.weight.copy_(0.05 * torch.randn(2, D, generator=g, dtype=torch.float64))
        enc.bias.copy_(torch.tensor([0.1, -0.3], dtype=torch.float64))
        dec = model.decoder.net.head  # rows 0..D-1: the mean w z + b; D..2D-1: log-variance
        dec.weight.zero_()
        dec.weight[:D, 0] = torch.tensor([1.0, -0.5, 0.8, 0.3], dtype=torch.float64)
        dec.bias[:D] = torch.tensor([0.2, -0.1, 0.0, 0.4], dtype=torch.float64)
        dec.bias[D:] = math.log(SIGMA2)
    x = 3.0 + torch.randn(8, D, generator=g, dtype=torch.float64)
    return model, x


def exact_elbo(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """The minibatch mean of the ELBO in closed form, a function of the encoder's parameters.

    With q = N(m, s^2): E_q[log N(x_d; w_d z + b_d, sigma^2)] = -1/2 [log(2 pi sigma^2) +
    ((x_d - w_d m - b_d)^2 + w_d^2 s^2) / sigma^2], and KL(q || N(0, 1)) = 1/2 (m^2 + s^2 -
    log s^2 - 1) (Appendix B).
    """
    m, logvar = (t.squeeze(-1) for t in model.encoder(x))
    s2 = logvar.exp()
    dec = model.decoder.net.head
    w, b = dec.weight[:D, 0].detach(), dec.bias[:D].detach()
    r = x - m[:, None] * w - b
    rec = -0.5 * (math.log(2 * math.pi * SIGMA2) + (r**2 + w**2 * s2[:, None]) / SIGMA2).sum(-1)
    kl = 0.5 * (m**2 + s2 - logvar - 1.0)
    return (rec - kl).mean()


@pytest.fixture(scope="module")
def measured():
    """Each estimator's gradient, 1 500 draws, at the linear-Gaussian model; the exact one.

    Common random numbers: every estimator draws the same noise, so its variances compare paired.
    """
    model, x = linear_gaussian_vae()
    params = dict(model.encoder.named_parameters())
    grads = torch.autograd.grad(exact_elbo(model, x), list(params.values()))
    exact = dict(zip(params, grads, strict=True))
    res = {}
    for est in GRADIENT_ESTIMATORS:
        g = torch.Generator().manual_seed(100)
        res[est] = gradient_moments(model.encoder, model.decoder, model.prior, x, est, 1500, g)
    return res, exact


def test_every_estimator_is_unbiased_for_the_exact_gradient(measured):
    res, exact = measured
    for est, r in res.items():
        se = r.standard_error()
        for name, truth in exact.items():
            z = (r.mean[name] - truth).abs() / se[name]
            assert float(z.max()) < 4.0, (est, name, r.mean[name], truth, se[name])
    # the check has teeth: the reparameterized means pin the gradient to a few per cent
    for est in ("A", "B"):
        se = res[est].standard_error()
        for name, truth in exact.items():
            assert float(se[name].max()) < 0.05 * float(truth.abs().max()), (est, name)


def test_variances_are_ordered_as_the_theory_says(measured):
    """Per parameter tensor and in all:

    - Var(score) >> Var(reparameterized): the score function multiplies the zero-mean score
      (z - m)/s^2 by f ~ -80 nats, where reparameterization uses f's slope (~ W s, W = sum w^2 /
      sigma^2 ~ 8); measured ratio to B ~110 (asserted > 10);
    - Var(score) > Var(score with the per-point baseline): subtracting b_i ~ E[f_i] removes the
      -80 nats, leaving f's spread (measured ratio ~10; asserted > 3);
    - Var(B) <= Var(A): per datapoint A's extra term grad[log p(z) - log q(z|x)] adds -s eps to
      the mean's gradient noise (-(W + 1) s eps against -W s eps) and, to the log-variance's,
      noise that raises its variance whenever m^2 - 2 R m + 2 s^2 (2W + 1) >= 0 (R =
      sum w_d r_d / sigma^2), which holds here since m < 0.25 and s^2 ~ 0.8 (measured A/B 1.11,
      paired by the common noise).
    """
    tv = {est: r.summary() for est, r in measured[0].items()}
    for group in tv["A"]:
        score = tv["score-function"][group]["total_variance"]
        base = tv["score-function-baseline"][group]["total_variance"]
        a, b = tv["A"][group]["total_variance"], tv["B"][group]["total_variance"]
        assert score > 10 * a and score > 10 * b, group
        assert score > 3 * base, group
        assert b <= a, group
        for est in tv:  # E||g||^2 = ||E g||^2 + the total variance
            s = tv[est][group]
            assert s["mean_squared_norm"] == pytest.approx(
                s["squared_norm_of_mean"] + s["total_variance"] * (1 - 1 / 1500), rel=1e-9
            )


def test_too_few_draws_is_an_error():
    model, x = linear_gaussian_vae()
    with pytest.raises(ValueError, match="too few draws"):
        gradient_moments(model.encoder, model.decoder, model.prior, x, "B", 1, torch.Generator())


# --------------------------------------------------------------------------- aevb gradients


def test_gradients_command_writes_json_and_figure(reference_run, tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["gradients", str(reference_run), "--out", str(out), "--draws", "30", "--quiet"]
    assert main([*argv, "--batch-size", "50"]) == 0
    text = capsys.readouterr().out
    assert "score-function/B" in text and "net.head.weight" in text
    res = json.loads((out / "gradients_trained.json").read_text())
    assert (out / "gradients_trained.png").read_bytes()[:4] == b"\x89PNG"
    assert res["draws"] == 30 and res["batch_size"] == 50 and res["at"] == "trained"
    assert list(res["estimators"]) == list(GRADIENT_ESTIMATORS)
    for name in ("score-function/B", "score-function/A", "score-function-baseline/B", "A/B"):
        assert res["ratios"][name]["all"] > 1, name
    runs.verify_run(reference_run)  # the run's own files are untouched
    # at the initialisation, from the Python API, written nowhere
    init = aevb.gradients(
        reference_run, at="init", draws=5, estimators=["B", "score-function"], write=False
    )
    assert init["ratios"]["score-function/B"]["all"] > 1 and "json" not in init
    assert not (reference_run / "gradients").exists()


def test_gradients_bad_input(reference_run, tmp_path, monkeypatch, capsys):
    base = ["gradients", str(reference_run), "--out", str(tmp_path), "--quiet"]
    for extra, expect in (
        (["--draws", "1"], "too few draws to estimate a variance"),
        (["--estimators", "A,reinforce"], "unknown gradient estimator 'reinforce'"),
        (["--batch-size", "100000"], "needs that many points"),
    ):
        assert main(base + extra) == 2
        (line,) = error_lines(capsys)
        assert expect in line
    with pytest.raises(ConfigError, match="too few draws"):
        aevb.gradients(reference_run, draws=0, write=False)
    real = runs.read_config
    for alg in ("mcem", "autoencoder"):

        def read(d, alg=alg):
            cfg = real(d)
            return {**cfg, "train": {**cfg["train"], "algorithm": alg}}

        monkeypatch.setattr(runs, "read_config", read)
        assert main(base) == 2
        (line,) = error_lines(capsys)
        assert f"--algorithm {alg}" in line


# --------------------------------------------------------------------------- training with it


def test_score_function_options_are_checked():
    assert TrainConfig(estimator="score-function", score_baseline=True).score_baseline
    for kw, expect in (
        (dict(estimator="score-function", algorithm="wake-sleep"), "trains AEVB only"),
        (dict(estimator="score-function", algorithm="full-vb"), "trains AEVB only"),
        (dict(estimator="B", score_baseline=True), "--score-baseline is for"),
        (dict(estimator="score-function", kl_warmup=100), "--kl-warmup"),
    ):
        with pytest.raises(ConfigError, match=expect):
            TrainConfig(**kw)
    with pytest.raises(ConfigError, match="gradient, not its value"):
        VAE(ModelConfig(x_dim=3, latent_dim=1, hidden=2)).elbo(torch.rand(2, 3), "score-function")


def test_score_function_training_resumes_its_baseline_bitwise(tmp_path, monkeypatch):
    kw = dict(TINY, estimator="score-function", score_baseline=True, budget=2000, seed=2)
    kw.update(checkpoint_samples=500, eval_per_decade=2)
    full = aevb.train("digits", tmp_path / "full", **kw)
    assert full.final["train_bound"] < 0  # a bound (the ELBO), not the surrogate's value
    state = runs.load_tensors(tmp_path / "full" / runs.STATE)[0]
    assert state["alg.score_baseline"].shape == () and state["alg.score_baseline"] < 0

    with crash_after_checkpoint(2), pytest.raises(Crash):
        aevb.train("digits", tmp_path / "cut", **kw)
    assert 0 < runs.load_tensors(tmp_path / "cut" / runs.STATE)[1]["samples_seen"] < 2000
    aevb.train(resume=tmp_path / "cut", progress=False, draw_figures=False)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_score_function_runs_on_autograd_and_says_why():
    model = VAE(ModelConfig(x_dim=6, latent_dim=2, hidden=5))
    alg = AEVB(model, TrainConfig(estimator="score-function", lr=0.02), 100, 0.02)
    assert alg.engine == "autograd" and "reparameterization gradient" in alg.engine_note
    with pytest.raises(ConfigError, match="engine 'fast' cannot"):
        AEVB(model, TrainConfig(estimator="score-function", lr=0.02, engine="fast"), 100, 0.02)


def test_score_function_training_crawls_behind_estimator_b():
    """The same budget, model and noise seed: B's test bound ends well above the score
    function's (measured at 20 000 samples: -25.5 against -28.5 nats; over seeds 0-3 the margin
    was 1.7 to 3.1 nats; asserted: 1 nat).

    The decoder starts at the data's mean (--decoder-bias-init), so every gain has to come
    through the latent code, which only the encoder's gradient can open.
    """
    kw = dict(TINY, latent_dim=3, hidden=30, decoder_bias_init=True, optimizer="adam", lr=0.01)
    kw.update(budget=20_000, eval_per_decade=1, eval_size=300, seed=0)
    b = aevb.train("digits", estimator="B", **kw).final["test_bound"]
    score = aevb.train("digits", estimator="score-function", **kw).final["test_bound"]
    assert b > score + 1.0, (b, score)
