"""The convolutional encoder and decoder: shapes, locality, configuration errors and training."""

from __future__ import annotations

import pytest
import torch

import aevb
from aevb.algorithms import AEVB
from aevb.conv import ConvDecoder, ConvEncoder
from aevb.distributions import POSTERIORS
from aevb.errors import ConfigError
from aevb.model import VAE, ModelConfig
from aevb.networks import LIKELIHOODS
from aevb.training import TrainConfig


@pytest.mark.parametrize("shape", [(28, 28), (28, 20), (7, 9), (4, 4)])
@pytest.mark.parametrize("posterior", ["normal", "exponential"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_with_leading_sample_dimensions(shape, posterior, likelihood):
    torch.manual_seed(0)
    d = shape[0] * shape[1]
    family, lik = POSTERIORS[posterior], LIKELIHOODS[likelihood]
    enc = ConvEncoder(family, shape, 5, 16, channels=(4, 6))
    dec = ConvDecoder(lik, 5, shape, 16, channels=(4, 6))
    x = torch.rand(3, d)
    params = enc(x)
    assert len(params) == family.n_params and all(p.shape == (3, 5) for p in params)
    z = enc.posterior(x).rsample(2)
    assert z.shape == (2, 3, 5)
    out = dec(z)
    assert len(out) == lik.n_params and all(o.shape == (2, 3, d) for o in out)
    # a draw decodes the same alone as in a batch (no mixing across the flattened dimensions)
    torch.testing.assert_close(dec(z[1, 2])[0], out[0][1, 2])
    assert dec.log_prob(x, z).shape == (2, 3)


def test_encoder_features_are_local():
    """Changing one pixel of the input moves the encoder's first feature maps only nearby."""
    torch.manual_seed(0)
    enc = ConvEncoder(POSTERIORS["normal"], (16, 16), 3, 8, channels=(2, 2))
    x = torch.zeros(1, 256, requires_grad=True)
    first = enc.net.features[1](enc.net.features[0](x.reshape(1, 1, 16, 16)))  # conv + act
    first[0, :, 0, 0].sum().backward()  # the top-left output cell sees a 3 x 3 input patch
    grad = x.grad.reshape(16, 16)
    assert grad[:3, :3].abs().sum() > 0 and grad[3:, :].abs().sum() == 0
    assert grad[:, 3:].abs().sum() == 0


def test_config_errors():
    with pytest.raises(ConfigError, match="needs the image shape"):
        ModelConfig(x_dim=64, architecture="conv")
    with pytest.raises(ConfigError, match="at least 4 x 4"):
        ModelConfig(x_dim=9, architecture="conv", image_shape=(3, 3))
    with pytest.raises(ConfigError, match="unknown architecture 'rnn'"):
        ModelConfig(x_dim=64, architecture="rnn", image_shape=(8, 8))


def test_conv_model_runs_on_the_autograd_step():
    model = VAE(ModelConfig(x_dim=64, architecture="conv", image_shape=(8, 8), hidden=16))
    alg = AEVB(model, TrainConfig(), 100, 0.01)
    assert alg.engine == "autograd" and "MLP" in alg.engine_note


def test_short_training_run_raises_the_bound(tmp_path, small_run):
    run = small_run(
        tmp_path / "conv",
        architecture="conv",
        posterior="gumbel",
        latent_dim=4,
        hidden=32,
        budget=10_000,
        lr=0.05,
        eval_per_decade=1,
        eval_size=300,
    )
    first, last = run.metrics[0], run.metrics[-1]
    assert last["test_bound"] > first["test_bound"] + 10, (first, last)
    assert run.config["model"]["architecture"] == "conv"
    model = aevb.load(tmp_path / "conv")  # rebuilt from config.json
    assert isinstance(model.encoder, ConvEncoder) and isinstance(model.decoder, ConvDecoder)
    res = aevb.evaluate(tmp_path / "conv", points=50, marginal="is", importance_samples=100)
    assert res["marginal"]["is"]["log_likelihood"] > res["bound"] - 0.05
