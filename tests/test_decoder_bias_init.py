"""``decoder_bias_init``: the decoder's mean bias starts at logit(data mean) (Burda et al.)."""

from __future__ import annotations

import numpy as np
import torch

from aevb.api.training import _build_model
from aevb.data import load_dataset
from aevb.model import ModelConfig
from aevb.training import TrainConfig


def test_decoder_bias_init_starts_at_the_data_mean(small_run):
    train_x = torch.from_numpy(load_dataset("digits").train)
    mcfg = ModelConfig(x_dim=64, latent_dim=3, hidden=30)
    tcfg = TrainConfig(decoder_bias_init=True, lr=0.02)
    model = _build_model(mcfg, tcfg, torch.device("cpu"), train_x)
    bias = model.decoder.net.head.bias.detach().double()
    mean = train_x.double().mean(0)
    np.testing.assert_allclose(bias, torch.logit(mean.clamp(1e-3, 1 - 1e-3)), atol=1e-6)
    assert torch.equal(
        model.encoder.net.head.bias, _build_model(mcfg, tcfg, "cpu").encoder.net.head.bias
    )
    plain = small_run(budget=100)
    init = small_run(budget=100, decoder_bias_init=True)
    assert init.config["train"]["decoder_bias_init"] is True
    # at initialisation the decoder predicts the mean image: a much better bound than 0.5 pixels
    assert init.metrics[0]["test_bound"] > plain.metrics[0]["test_bound"] + 5.0
