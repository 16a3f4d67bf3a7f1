"""--dropout: hidden units dropped in training only, masks from the run's noise stream.

Off at evaluation (the model in eval mode computes what the same weights without dropout
compute), on in training (the share of dropped units is p, in standard errors), the same results
from the same seed, bitwise resume, and one-line errors where it does not apply.
"""

from __future__ import annotations

import math

import pytest
import torch

from aevb import api, runs
from aevb.algorithms import AEVB
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.model import VAE, ModelConfig
from aevb.networks import Dropout
from aevb.training import TrainConfig


def _model(dropout: float, seed: int = 0) -> VAE:
    cfg = ModelConfig(x_dim=30, latent_dim=4, hidden=64, depth=2, dropout=dropout)
    model = VAE(cfg).double()
    model.init_parameters(0.3, torch.Generator().manual_seed(seed))
    return model


def test_off_at_evaluation_same_keys_as_without():
    drop, plain = _model(0.5), _model(0.0)
    assert list(drop.state_dict()) == list(plain.state_dict())  # old runs' keys, unchanged
    plain.load_state_dict(drop.state_dict())
    x = torch.rand(7, 30, dtype=torch.float64)
    drop.eval()
    for a, b in zip(drop.encoder(x), plain.encoder(x), strict=True):
        assert torch.equal(a, b)
    drop.train()  # in training the units are dropped: outputs differ
    with drop.dropout_noise(torch.Generator().manual_seed(1)):
        assert not torch.equal(drop.encoder(x)[0], plain.encoder(x)[0])


def test_masks_drop_a_share_p_and_repeat_under_a_seed():
    layer = Dropout(0.3).train()
    h = torch.ones(400, 250, dtype=torch.float64)
    outs = []
    for _ in range(2):
        layer.generator = torch.Generator().manual_seed(5)
        outs.append(layer(h))
    assert torch.equal(outs[0], outs[1])
    dropped = float((outs[0] == 0).double().mean())
    se = math.sqrt(0.3 * 0.7 / h.numel())
    assert abs(dropped - 0.3) < 4 * se
    assert torch.allclose(outs[0][outs[0] != 0], torch.tensor(1 / 0.7, dtype=torch.float64))
    layer.generator = torch.Generator().manual_seed(6)
    assert not torch.equal(layer(h), outs[0])
    assert torch.equal(layer.eval()(h), h)


def test_steps_run_on_autograd_repeat_and_differ_from_no_dropout():
    x = (torch.rand(40, 30, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    finals = []
    for p in (0.3, 0.3, 0.0):
        alg = AEVB(_model(p), TrainConfig(lr=0.05), 400, 0.05)
        assert alg.engine == ("autograd" if p else "fast")
        if p:
            assert "dropout" in alg.engine_note
        g = torch.Generator().manual_seed(3)
        for i in range(4):
            alg.step(x[i * 10 : (i + 1) * 10], g)
        finals.append(torch.cat([q.detach().flatten() for q in alg.model.parameters()]))
    assert torch.equal(finals[0], finals[1])  # the same seed: the same masks and noise
    assert not torch.allclose(finals[0], finals[2])


def test_training_repeats_and_resumes_bit_for_bit(tmp_path):
    kw = {"dropout": 0.2, "depth": 2, "hidden": 32, "latent_dim": 3, "lr": 0.05}
    kw |= {"batch_size": 50, "eval_size": 100, "progress": False, "draw_figures": False}
    api.train("digits", tmp_path / "a", budget=3000, **kw)
    api.train("digits", tmp_path / "b", budget=1500, **kw)  # stopped half way, then resumed
    api.train(resume=tmp_path / "b", budget=3000, progress=False, draw_figures=False)
    a = runs.load_tensors(tmp_path / "a" / "model.safetensors")[0]
    b = runs.load_tensors(tmp_path / "b" / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # evaluated in eval mode: no masks, so two evaluations (same seed) agree exactly
    first, second = (api.evaluate(tmp_path / "a", points=100) for _ in range(2))
    assert first["bound"] == second["bound"] and first["bound_se"] == second["bound_se"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dropout", "1"], "--dropout must be a number from 0 up to (not including) 1"),
        (["--dropout", "0.2", "--depth", "0"], "it needs --architecture mlp and --depth >= 1"),
        (["--dropout", "0.2", "--algorithm", "wake-sleep"], "--dropout is for AEVB's step"),
    ],
)
def test_bad_dropout_is_one_line(tmp_path, capsys, argv, message):
    rc = main(["train", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    with pytest.raises(ConfigError):
        ModelConfig(x_dim=4, dropout=-0.1)
