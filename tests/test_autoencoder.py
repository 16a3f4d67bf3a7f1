"""The deterministic auto-encoder baseline (``--algorithm autoencoder``): the VAE's networks,
the encoder's mean as the code, trained on -log p(x | z = mu(x)) alone."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers import error_lines

import aevb
from aevb import api, runs
from aevb.algorithms import ALGORITHMS, AutoEncoder
from aevb.algorithms.autoencoder import reconstruction
from aevb.cli import main
from aevb.data import load_dataset
from aevb.errors import ConfigError
from aevb.model import VAE, ModelConfig
from aevb.training import TrainConfig

TINY = dict(latent_dim=2, hidden=16, budget=2000, eval_per_decade=1, progress=False)


def _model(likelihood: str) -> VAE:
    m = VAE(ModelConfig(x_dim=64, latent_dim=3, hidden=20, likelihood=likelihood))
    m.init_parameters(0.3, torch.Generator().manual_seed(0))
    return m


def _hand_loss(m: VAE, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """-mean log p(x | z = mu(x)), written out layer by layer from the parameters."""
    p = dict(m.named_parameters())
    h = torch.tanh(x @ p["encoder.net.trunk.0.weight"].T + p["encoder.net.trunk.0.bias"])
    mu = (h @ p["encoder.net.head.weight"].T + p["encoder.net.head.bias"])[:, :3]  # not logvar
    hd = torch.tanh(mu @ p["decoder.net.trunk.0.weight"].T + p["decoder.net.trunk.0.bias"])
    out = hd @ p["decoder.net.head.weight"].T + p["decoder.net.head.bias"]
    if likelihood == "bernoulli":  # cross-entropy of the pixels against sigmoid(logits)
        y = torch.sigmoid(out)
        logp = x * torch.log(y) + (1 - x) * torch.log(1 - y)
    else:  # Gaussian: mean sigmoid(.), log-variance the second head
        mean, logvar = torch.sigmoid(out[:, :64]), out[:, 64:]
        logp = -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 / torch.exp(logvar))
    return -logp.sum(1).mean()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_step_minimises_minus_log_p_x_at_the_encoder_mean(likelihood):
    m = _model(likelihood)
    ref = copy.deepcopy(m)
    cfg = TrainConfig(algorithm="autoencoder", lr=0.05, weight_prior=False)
    alg = AutoEncoder(m, cfg, n_train=100, lr=0.05)
    assert alg.engine == "autograd" and "fast engine" in (alg.engine_note or "")
    x = torch.rand(16, 64, generator=torch.Generator().manual_seed(1))
    loss = _hand_loss(ref, x, likelihood)
    value = alg.step(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(value, -loss.detach(), rtol=1e-5, atol=1e-5)  # the mean log p(x|mu)
    grads = torch.autograd.grad(loss, list(ref.parameters()), allow_unused=True)
    for (name, p), g in zip(m.named_parameters(), grads, strict=True):
        if name == "encoder.net.head.weight" or name == "encoder.net.head.bias":
            assert torch.all(p.grad[3:] == 0)  # the log-variance head is not trained
        want = torch.zeros_like(p) if g is None else g
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(alg.evaluate(x, torch.Generator()), reconstruction(m, x))


def test_no_noise_steps_from_the_same_state_agree_whatever_the_generator():
    models = []
    for seed in (3, 4):
        m = _model("bernoulli")
        alg = AutoEncoder(m, TrainConfig(algorithm="autoencoder", lr=0.05), 100, 0.05)
        x = torch.rand(16, 64, generator=torch.Generator().manual_seed(1)).round()
        g = torch.Generator().manual_seed(seed)
        for _ in range(3):
            alg.step(x, g)
        models.append(m)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_it_reconstructs_better_than_a_vae_of_the_same_size_and_budget():
    """On the digits, 60 000 samples: the auto-encoder's test log p(x | mu(x)) climbs from the
    first evaluation by far and ends above the VAE's at its own posterior mean. Seen over seeds
    0-4: -44.4 -> -20.6..-21.7 nats, the VAE -23.3..-23.9; at 3 000-10 000 samples neither has
    learned to use z yet, and the two are within 0.5 nats, so the budget is 60 000."""
    kw = dict(latent_dim=5, hidden=50, budget=60_000, lr=0.05, eval_per_decade=1, progress=False)
    auto = aevb.train("digits", algorithm="autoencoder", draw_figures=False, **kw)
    vae = aevb.train("digits", draw_figures=False, **kw)
    first, last = auto.metrics[0], auto.final
    assert first["samples_seen"] == 0 and "test_bound" not in last
    assert last["test_reconstruction"] > first["test_reconstruction"] + 15  # seen: 23 nats
    assert last["test_reconstruction_se"] > 0
    x = torch.from_numpy(load_dataset("digits").test)
    with torch.no_grad():
        vae_rec = float(reconstruction(vae.model, x).mean())
    assert last["test_reconstruction"] > vae_rec + 1.0  # seen: 2.2 to 2.9 nats
    assert vae_rec > vae.final["test_bound"]  # (the VAE's bound is lower still)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """A tiny auto-encoder run with figures, its step size chosen by the trial (``--lr auto``)."""
    out = tmp_path_factory.mktemp("ae") / "run"
    aevb.train("digits", out, algorithm="autoencoder", lr="auto", **TINY)
    return out


def test_a_run_records_its_reconstruction_figures_and_step_size_trial(ae_run):
    cfg = runs.read_config(ae_run)
    search = cfg["train"]["lr_search"]
    assert all(math.isfinite(v) and v < 0 for v in search["training_bound"].values())
    scores = search["training_bound"]
    assert search["chosen"] == float(max(scores, key=scores.get))
    assert cfg["train"]["lr"] == search["chosen"]
    recs = runs.read_metrics(ae_run)
    assert all("test_reconstruction" in r and "train_bound" not in r for r in recs)
    names = {p.name for p in (ae_run / runs.FIGURES).iterdir()}
    assert {"curves.png", "samples.png", "reconstructions.png", "manifold.png"} <= names
    card = api.info(ae_run)  # aevb info: the reconstruction in place of a bound
    assert card["bounds"] == {} and card["reconstruction"]["test_reconstruction"] == pytest.approx(
        recs[-1]["test_reconstruction"]
    )
    assert "reconstruction log p(x|z=mu(x))" in api.render_info(card)
    assert api.plot([ae_run], ae_run.parent / "curves.png").is_file()  # its reconstruction curve
    model = aevb.load(ae_run)  # the posterior family still gives the encoder its structure
    x = torch.from_numpy(load_dataset("digits").test[:5])
    np.testing.assert_allclose(
        api.reconstruct(ae_run, x=x.numpy()).reconstruction,
        model.decode_mean(model.encode(x)[0]).detach().numpy(),
        atol=1e-6,
    )


def test_sample_and_interpolate_through_the_api_and_the_cli(ae_run, tmp_path):
    s = api.sample(ae_run, 12, seed=1)  # decoder means at z ~ N(0, I), as a user would draw
    assert s.shape == (12, 64) and s.min() >= 0 and s.max() <= 1
    it = api.interpolate(ae_run, pairs=2, steps=5)  # between encoder means
    assert it.decoded.shape == (2, 2, 5, 64) and it.latents.shape == (2, 2, 5, 2)
    assert it.decoded.min() >= 0 and it.decoded.max() <= 1
    assert main(["sample", str(ae_run), "--n", "9", "--out", str(tmp_path / "s.npy")]) == 0
    a = np.load(tmp_path / "s.npy")
    assert a.shape == (9, 64) and a.min() >= 0 and a.max() <= 1
    out = tmp_path / "i.npy"
    argv = ["interpolate", str(ae_run), "--pairs", "3", "--steps", "4", "--out", str(out)]
    assert main(argv) == 0
    b = np.load(out)
    assert b.shape == (3, 2, 4, 64) and b.min() >= 0 and b.max() <= 1


def test_evaluate_refuses_the_bound_in_one_line(ae_run, capsys):
    assert main(["evaluate", str(ae_run)]) == 2
    (line,) = error_lines(capsys)
    assert "auto-encoder, which has no lower bound" in line and "test_reconstruction" in line
    with pytest.raises(ConfigError, match="no lower bound"):
        api.evaluate(ae_run)


@pytest.mark.parametrize(
    "flags, word",
    [
        (["--estimator", "A"], "--estimator"),
        (["--estimator", "iwae"], "--estimator"),
        (["--samples", "2"], "--samples"),
        (["--kl-beta", "0.5"], "--kl-beta"),
        (["--kl-warmup", "100"], "--kl-warmup"),
        (["--validation", "--keep", "best"], "--keep best"),
        (["--eval-marginal", "is"], "--eval-marginal hmc"),
    ],
)
def test_options_without_meaning_for_it_are_refused_in_one_line(tmp_path, capsys, flags, word):
    out = tmp_path / "run"
    argv = ["train", "--algorithm", "autoencoder", "--budget", "200", "--out", str(out), *flags]
    assert main(argv) == 2
    (line,) = error_lines(capsys)
    assert "auto-encoder" in line and word in line
    assert not (out / runs.CONFIG).exists()


def test_it_is_registered_and_refuses_the_fast_engine():
    assert ALGORITHMS["autoencoder"] is AutoEncoder and not AutoEncoder.has_bound
    cfg = TrainConfig(algorithm="autoencoder", lr=0.1, engine="fast")
    with pytest.raises(ConfigError, match="fast"):
        AutoEncoder(_model("bernoulli"), cfg, 100, 0.1)
