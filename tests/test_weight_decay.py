"""--weight-decay: an L2 penalty (lambda/2)|theta|^2 per datapoint on top of the weight prior.

Reference, independent of the optimizers' weight_decay: the penalty written into the objective
and differentiated by autograd, stepped by torch's Adam without weight decay.
"""

from __future__ import annotations

import pytest
import torch
from fast_checks import M, make_data, make_model

from aevb.algorithms import AEVB
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.training import TrainConfig


@pytest.mark.parametrize("weight_prior", [True, False])
def test_steps_equal_the_penalised_objective(weight_prior):
    lam, n_train = 0.03, 600
    cfg = TrainConfig(
        optimizer="adam", lr=0.01, weight_decay=lam, weight_prior=weight_prior, engine="fast"
    )
    alg = AEVB(make_model(), cfg, n_train, 0.01)
    assert alg.engine == "fast"
    decay = lam + (1.0 / n_train if weight_prior else 0.0)
    assert alg.optimizer.param_groups[0]["weight_decay"] == pytest.approx(decay, rel=1e-15)
    ref = make_model()
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    data = make_data("bernoulli", torch.float64, n=5 * M, seed=4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for i in range(5):
        xb = data[i * M : (i + 1) * M]
        alg.step(xb, g1)
        opt.zero_grad()
        bound = ref.elbo(xb, "B", 1, g2).mean()
        penalty = 0.5 * decay * sum((p**2).sum() for p in ref.parameters())
        (penalty - bound).backward()
        opt.step()
    plain = AEVB(make_model(), TrainConfig(optimizer="adam", lr=0.01), n_train, 0.01)
    g3 = torch.Generator().manual_seed(3)
    for i in range(5):
        plain.step(data[i * M : (i + 1) * M], g3)
    for p, q in zip(alg.model.parameters(), ref.parameters(), strict=True):
        assert float((p - q).detach().norm() / q.detach().norm()) < 1e-9
    with torch.no_grad():
        shrunk = sum(float(p.norm()) for p in alg.model.parameters())
        assert shrunk < sum(float(r.norm()) for r in plain.model.parameters())  # decay acts


def test_bad_weight_decay_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--weight-decay must be a number >= 0"):
        TrainConfig(weight_decay=-0.1)
    rc = main(["train", "--weight-decay", "nan", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "--weight-decay must be a number >= 0" in err and err.count("\n") == 1
