"""The fast wake-sleep step (aevb.fast.FastWakeSleepStep) equals the autograd WakeSleep step.

The reference is :class:`aevb.algorithms.WakeSleep` on autograd with torch's own optimizer, from
the same parameters, data and generator state.
"""

from __future__ import annotations

import pytest
import torch
from fast_checks import M, assert_resume_is_bitwise_exact, make_data, make_model

from aevb.algorithms import WakeSleep
from aevb.errors import ConfigError
from aevb.fast import FastWakeSleepStep
from aevb.training import TrainConfig, Trainer


def make_alg(
    engine, likelihood="bernoulli", optimizer="adagrad", dtype=torch.float64, depth=1, **kw
):
    cfg = TrainConfig(algorithm="wake-sleep", optimizer=optimizer, engine=engine, lr=0.02, **kw)
    alg = WakeSleep(make_model(likelihood, dtype=dtype, depth=depth), cfg, 600, 0.02)
    assert alg.engine == engine
    return alg


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def autograd_gradients(likelihood, activation, dtype, x, seed, depth=1):
    """One autograd WakeSleep step: its gradients, bound and the generator's state after it."""
    cfg = TrainConfig(algorithm="wake-sleep", engine="autograd", lr=0.02)
    alg = WakeSleep(make_model(likelihood, activation, dtype, depth), cfg, 600, 0.02)
    g = torch.Generator().manual_seed(seed)
    bound = alg.step(x, g)
    grads = {n: p.grad.detach().clone() for n, p in alg.model.named_parameters()}
    return grads, bound, g.get_state()


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(
    "likelihood,activation",
    [("bernoulli", "tanh"), ("gaussian", "tanh"), ("bernoulli", "relu"), ("gaussian", "relu")],
)
def test_gradients_match_autograd_float64(likelihood, activation, depth):
    x = make_data(likelihood, torch.float64)
    ref, ref_bound, ref_state = autograd_gradients(
        likelihood, activation, torch.float64, x, 5, depth
    )
    model = make_model(likelihood, activation, depth=depth)
    fast = FastWakeSleepStep(model, torch.optim.Adagrad(model.parameters(), lr=0.02))
    g = torch.Generator().manual_seed(5)
    bound = fast.gradients(x, g)
    assert torch.equal(g.get_state(), ref_state)  # the same draws, in the same order and shapes
    got = fast.named_gradients()
    assert set(got) == set(ref)
    for name in ref:
        assert rel_err(got[name], ref[name]) < 1e-10, name
    assert abs(float(bound) - float(ref_bound)) < 1e-10 * abs(float(ref_bound))
    # another seed gives other gradients on both sides: the wake noise and the dreams are used
    fast.gradients(x, torch.Generator().manual_seed(6))
    assert rel_err(got["decoder.net.head.weight"], ref["decoder.net.head.weight"]) > 1e-6
    assert rel_err(got["encoder.net.head.weight"], ref["encoder.net.head.weight"]) > 1e-6


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_gradients_match_autograd_float32(likelihood):
    x = make_data(likelihood, torch.float32)
    ref, ref_bound, _ = autograd_gradients(likelihood, "tanh", torch.float32, x, 7)
    model = make_model(likelihood, dtype=torch.float32)
    fast = FastWakeSleepStep(model, torch.optim.Adagrad(model.parameters(), lr=0.02))
    bound = fast.gradients(x, torch.Generator().manual_seed(7))
    for name, g in fast.named_gradients().items():
        assert g.dtype == torch.float32
        assert rel_err(g, ref[name]) < 1e-5, name
    assert abs(float(bound) - float(ref_bound)) < 1e-5 * abs(float(ref_bound))


@pytest.mark.parametrize(
    "optimizer,likelihood,depth",
    [
        ("adagrad", "bernoulli", 1),
        ("adam", "gaussian", 1),
        ("adam", "bernoulli", 1),
        ("adam", "bernoulli", 2),
        ("adagrad", "gaussian", 3),
    ],
)
def test_k_steps_match_autograd(optimizer, likelihood, depth):
    fast = make_alg("fast", likelihood, optimizer, depth=depth)
    ref = make_alg("autograd", likelihood, optimizer, depth=depth)
    g_fast, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    data = make_data(likelihood, torch.float64, n=10 * M, seed=4)
    for k in range(10):
        xb = data[k * M : (k + 1) * M]
        b_fast, b_ref = fast.step(xb, g_fast), ref.step(xb, g_ref)
        assert b_fast.shape == () and abs(float(b_fast - b_ref)) < 1e-9 * abs(float(b_ref))
    p_init = dict(make_model(likelihood, depth=depth).named_parameters())
    moved = 0.0
    for (name, p), q in zip(fast.model.named_parameters(), ref.model.parameters(), strict=True):
        assert rel_err(p.detach(), q.detach()) < 1e-9, name
        moved = max(moved, float((q.detach() - p_init[name].detach()).abs().max()))
    assert moved > 0.05  # the ten steps did change the parameters
    sd_fast, sd_ref = fast.optimizer.state_dict(), ref.optimizer.state_dict()
    for i, st in sd_ref["state"].items():
        for key, v in st.items():
            assert rel_err(sd_fast["state"][i][key].double(), v.double()) < 1e-9, (i, key)


@pytest.mark.parametrize("depth,activation", [(1, "tanh"), (2, "relu")])
def test_checkpoint_resume_is_bitwise_exact(tmp_path, depth, activation):
    """Trainer state through safetensors and back: the resumed run equals the uninterrupted one."""
    data = make_data("bernoulli", torch.float32, n=240, seed=7)

    def trainer(budget):
        c = TrainConfig(algorithm="wake-sleep", lr=0.02, budget=budget, batch_size=M, engine="fast")
        model = make_model(activation=activation, dtype=torch.float32, depth=depth)
        alg = WakeSleep(model, c, len(data), 0.02)
        assert alg.engine == "fast"
        return Trainer(alg, data, None, c, progress=False, evaluate_points=False)

    assert_resume_is_bitwise_exact(trainer, tmp_path)


@pytest.mark.parametrize("likelihood,depth", [("bernoulli", 1), ("gaussian", 1), ("gaussian", 2)])
def test_data_parallel_shards_make_the_global_step(likelihood, depth):
    """Two ranks' shards (shared noise stream, each its slice) average to the one-process step."""
    x = make_data(likelihood, torch.float64, n=2 * M, seed=9)
    whole = make_alg("fast", likelihood, depth=depth).fast
    whole.gradients(x, torch.Generator().manual_seed(4))
    parts = []
    for rank in range(2):
        fast = make_alg("fast", likelihood, depth=depth).fast
        fast.shard = (rank, 2)
        fast.gradients(x[rank * M : (rank + 1) * M], torch.Generator().manual_seed(4))
        parts.append(fast.grad.clone())
    assert rel_err((parts[0] + parts[1]) / 2, whole.grad) < 1e-10
    assert rel_err(parts[0], whole.grad) > 1e-3  # each shard alone is not the global gradient


def test_engine_choice_and_fallback():
    assert make_alg("fast").fast is not None
    auto = WakeSleep(make_model(), TrainConfig(algorithm="wake-sleep", lr=0.01), 600, 0.01)
    assert auto.engine == "fast" and auto.engine_note is None
    assert auto.optimizer.param_groups[0]["weight_decay"] == 1 / 600  # the weight prior, fused
    deep = WakeSleep(make_model(depth=3), TrainConfig(algorithm="wake-sleep", lr=0.01), 600, 0.01)
    assert deep.engine == "fast"
    flat = WakeSleep(make_model(depth=0), TrainConfig(algorithm="wake-sleep", lr=0.01), 600, 0.01)
    assert flat.engine == "autograd" and "depth 0" in flat.engine_note
    with pytest.raises(ConfigError, match="depth"):
        cfg = TrainConfig(algorithm="wake-sleep", lr=0.01, engine="fast")
        WakeSleep(make_model(depth=0), cfg, 600, 0.01)
    assert make_alg("autograd").fast is None
    with pytest.raises(ValueError, match="KL weight"):
        make_alg("fast").fast.step(make_data("bernoulli", torch.float64), None, kl_weight=0.5)
