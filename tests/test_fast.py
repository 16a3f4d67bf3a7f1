"""The fast engine (aevb.fast) computes the same estimator and update as autograd.

References are independent of aevb.fast: the estimators of aevb.estimators differentiated by
autograd, and torch's own per-parameter optimizers stepping on those gradients.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from fast_checks import M, assert_resume_is_bitwise_exact, make_data, make_model

from aevb.algorithms import AEVB, make_optimizer
from aevb.errors import ConfigError
from aevb.fast import FastStep, tune_allocator, unsupported_reason
from aevb.training import TrainConfig, Trainer


def reference_gradients(model, x, estimator, samples, seed, device="cpu"):
    """d(-mean bound)/d(theta) by autograd through aevb.estimators, and the mean bound."""
    model.zero_grad(set_to_none=True)
    g = torch.Generator(device=device).manual_seed(seed)
    bound = model.elbo(x, estimator, samples, g).mean()
    (-bound).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads, bound.detach()


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


CASES = list(
    itertools.product(("bernoulli", "gaussian"), ("tanh", "relu"), ("A", "B"), (1, 3), (1, 2, 3))
)


@pytest.mark.parametrize("likelihood,activation,estimator,samples,depth", CASES)
def test_gradients_match_autograd_float64(likelihood, activation, estimator, samples, depth):
    model = make_model(likelihood, activation, depth=depth)
    x = make_data(likelihood, torch.float64)
    ref, ref_bound = reference_gradients(model, x, estimator, samples, seed=5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    fast = FastStep(model, opt, estimator, samples)
    bound = fast.gradients(x, torch.Generator().manual_seed(5))
    got = fast.named_gradients()
    assert set(got) == set(ref)
    for name in ref:
        assert rel_err(got[name], ref[name]) < 1e-10, name
    assert abs(float(bound) - float(ref_bound)) < 1e-10 * abs(float(ref_bound))
    # a different noise seed gives different gradients: the noise is really used
    fast.gradients(x, torch.Generator().manual_seed(6))
    assert rel_err(got["encoder.net.head.weight"], ref["encoder.net.head.weight"]) > 1e-6


@pytest.mark.parametrize(
    "likelihood,estimator,samples,depth",
    [("bernoulli", "B", 1, 1), ("gaussian", "A", 2, 1), ("bernoulli", "B", 1, 2)],
)
def test_gradients_match_autograd_float32(likelihood, estimator, samples, depth):
    model = make_model(likelihood, "tanh", torch.float32, depth=depth)
    x = make_data(likelihood, torch.float32)
    ref, _ = reference_gradients(model, x, estimator, samples, seed=5)
    fast = FastStep(model, torch.optim.Adagrad(model.parameters()), estimator, samples)
    fast.gradients(x, torch.Generator().manual_seed(5))
    for name, g in fast.named_gradients().items():
        assert g.dtype == torch.float32
        assert rel_err(g, ref[name]) < 1e-5, name


def _algorithms(
    optimizer, likelihood, estimator="B", samples=1, n_train=600, depth=1, activation="tanh"
):
    """The same model twice: AEVB on the fast engine and AEVB on autograd."""
    out = []
    for engine in ("fast", "autograd"):
        cfg = TrainConfig(
            optimizer=optimizer, engine=engine, estimator=estimator, samples=samples, lr=0.02
        )
        model = make_model(likelihood, activation, depth=depth)
        out.append(AEVB(model, cfg, n_train, 0.02))
    assert out[0].engine == "fast" and out[1].engine == "autograd"
    return out


@pytest.mark.parametrize(
    "optimizer,likelihood,estimator,samples,depth,activation",
    [
        ("adagrad", "bernoulli", "B", 1, 1, "tanh"),
        ("adam", "gaussian", "A", 2, 1, "tanh"),
        ("adam", "bernoulli", "B", 1, 1, "tanh"),
        ("adam", "bernoulli", "B", 1, 2, "relu"),
        ("adagrad", "gaussian", "B", 1, 2, "tanh"),
        ("adagrad", "bernoulli", "A", 3, 3, "relu"),
        ("adam", "gaussian", "A", 1, 3, "tanh"),
    ],
)
def test_k_steps_match_autograd_and_torch_optimizer(
    optimizer, likelihood, estimator, samples, depth, activation
):
    fast, ref = _algorithms(optimizer, likelihood, estimator, samples, 600, depth, activation)
    g_fast, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    data = make_data(likelihood, torch.float64, n=10 * M, seed=4)
    for k in range(10):
        xb = data[k * M : (k + 1) * M]
        b_fast, b_ref = fast.step(xb, g_fast), ref.step(xb, g_ref)
        assert b_fast.shape == () and abs(float(b_fast - b_ref)) < 1e-9 * abs(float(b_ref))
    moved = 0.0
    p_init = dict(make_model(likelihood, activation, depth=depth).named_parameters())
    for (name, p), q in zip(fast.model.named_parameters(), ref.model.parameters(), strict=True):
        assert rel_err(p.detach(), q.detach()) < 1e-9, name
        moved = max(moved, float((q.detach() - p_init[name].detach()).abs().max()))
    assert moved > 0.05  # the steps did change the parameters (lr 0.02, ten steps)
    # the optimizer state the checkpoints save is the same as torch's own
    sd_fast, sd_ref = fast.optimizer.state_dict(), ref.optimizer.state_dict()
    for i, st in sd_ref["state"].items():
        for key, v in st.items():
            assert rel_err(sd_fast["state"][i][key].double(), v.double()) < 1e-9, (i, key)


def test_state_dict_reflects_training_and_saves():
    fast, _ = _algorithms("adagrad", "bernoulli")
    before = fast.model.state_dict()
    fast.step(make_data("bernoulli", torch.float64), torch.Generator().manual_seed(0))
    after = fast.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    # parameters are views into one flat buffer, but the state dict owns its tensors
    w = after["decoder.net.head.weight"]
    assert w.untyped_storage().nbytes() == w.numel() * w.element_size()
    torch.testing.assert_close(w, fast.model.decoder.net.head.weight.detach(), rtol=0, atol=0)
    # parameters moved to new memory (as model.to() does) and reloaded: the engine re-adopts them
    x = make_data("bernoulli", torch.float64)
    for p in fast.model.parameters():
        p.data = p.data.clone()
    fast.model.load_state_dict(before)
    ref = AEVB(make_model(), TrainConfig(engine="autograd", lr=0.02), 600, 0.02)
    ref.model.load_state_dict(before)
    ref.optimizer.load_state_dict(copy.deepcopy(fast.optimizer.state_dict()))  # no aliasing
    fast.step(x, torch.Generator().manual_seed(1))
    ref.step(x, torch.Generator().manual_seed(1))
    for p, q in zip(fast.model.parameters(), ref.model.parameters(), strict=True):
        assert rel_err(p.detach(), q.detach()) < 1e-9


@pytest.mark.parametrize(
    "optimizer,depth,activation",
    [("adagrad", 1, "tanh"), ("adam", 1, "tanh"), ("adam", 2, "relu"), ("adagrad", 3, "tanh")],
)
def test_checkpoint_resume_is_bitwise_exact(tmp_path, optimizer, depth, activation):
    """Trainer state through safetensors and back: the resumed run equals the uninterrupted one."""
    data = make_data("bernoulli", torch.float32, n=240, seed=7)
    cfg = TrainConfig(optimizer=optimizer, lr=0.02, budget=1200, batch_size=M, engine="fast")

    def trainer(budget):
        c = TrainConfig(**{**cfg.to_dict(), "budget": budget})
        model = make_model(activation=activation, dtype=torch.float32, depth=depth)
        alg = AEVB(model, c, len(data), 0.02)
        assert alg.engine == "fast"
        return Trainer(alg, data, None, c, progress=False, evaluate_points=False)

    assert_resume_is_bitwise_exact(trainer, tmp_path)


def test_fast_checkpoint_continues_on_autograd():
    """The saved optimizer state has torch's per-parameter layout: engines can be swapped."""
    fast, ref = _algorithms("adam", "bernoulli")
    data = make_data("bernoulli", torch.float64, n=4 * M, seed=8)
    g = torch.Generator().manual_seed(9)
    for k in range(2):
        ref.step(data[k * M : (k + 1) * M], g)
    fast.model.load_state_dict(ref.model.state_dict())
    fast.optimizer.load_state_dict(copy.deepcopy(ref.optimizer.state_dict()))
    g2 = torch.Generator().manual_seed(10)
    g2.set_state(g.get_state())
    for k in range(2, 4):
        ref.step(data[k * M : (k + 1) * M], g)
        fast.step(data[k * M : (k + 1) * M], g2)
    for p, q in zip(fast.model.parameters(), ref.model.parameters(), strict=True):
        assert rel_err(p.detach(), q.detach()) < 1e-9


@pytest.mark.parametrize("depth,activation", [(1, "tanh"), (2, "relu"), (3, "tanh")])
def test_deterministic_under_seed(depth, activation):
    runs_ = []
    for _ in range(2):
        fast, _ = _algorithms("adagrad", "gaussian", depth=depth, activation=activation)
        g = torch.Generator().manual_seed(11)
        x = make_data("gaussian", torch.float64)
        bounds = [float(fast.step(x, g)) for _ in range(3)]
        runs_.append((bounds, torch.cat([p.detach().flatten() for p in fast.model.parameters()])))
    assert runs_[0][0] == runs_[1][0]
    assert torch.equal(runs_[0][1], runs_[1][1])


def test_engine_choice_and_fallback():
    for depth in (2, 3):  # deep MLPs train on the fast engine
        assert unsupported_reason(make_model(depth=depth)) is None
        assert AEVB(make_model(depth=depth), TrainConfig(lr=0.01), 600, 0.01).engine == "fast"
    shallow = make_model(depth=0)  # no hidden layer: autograd
    assert "depth" in unsupported_reason(shallow)
    alg = AEVB(shallow, TrainConfig(lr=0.01), 600, 0.01)
    assert alg.engine == "autograd" and "depth 0" in alg.engine_note
    with pytest.raises(ConfigError, match="depth"):
        AEVB(make_model(depth=0), TrainConfig(lr=0.01, engine="fast"), 600, 0.01)
    assert "softplus" in unsupported_reason(make_model(activation="softplus"))
    odd = make_model(depth=2)  # a trunk whose modules are not the config's: not the standard MLP
    odd.decoder.net.trunk[3] = torch.nn.Softplus()
    assert "standard MLP" in unsupported_reason(odd)
    assert AEVB(make_model(), TrainConfig(lr=0.01, engine="autograd"), 600, 0.01).fast is None
    with pytest.raises(ConfigError, match="engine"):
        TrainConfig(engine="turbo")
    # the weight prior is the optimizer's weight decay 1/N, which the fused update reads
    alg = AEVB(make_model(), TrainConfig(lr=0.01), 600, 0.01)
    assert alg.engine == "fast" and alg.optimizer.param_groups[0]["weight_decay"] == 1 / 600
    sgd = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Adagrad and Adam"):
        FastStep(make_model(), sgd)


def test_make_optimizer_is_fused():
    opt = make_optimizer(make_model().parameters(), "adagrad", 0.01, 0.001)
    assert opt.param_groups[0]["fused"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_request_without_gpu_fails_clearly():
    from aevb.api import resolve_device

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("depth", [1, 2])
def test_cuda_matches_cpu(depth):
    model = make_model("gaussian", depth=depth)
    x = make_data("gaussian", torch.float64)
    model = model.cuda()
    fast = FastStep(model, torch.optim.Adagrad(model.parameters(), fused=True), "B", 2)
    # CUDA draws its own noise: compare with autograd on the GPU from the same generator
    gpu_ref, _ = reference_gradients(model, x.cuda(), "B", 2, seed=5, device="cuda")
    fast.gradients(x.cuda(), torch.Generator(device="cuda").manual_seed(5))
    for name, g in fast.named_gradients().items():
        assert g.is_cuda and rel_err(g, gpu_ref[name]) < 1e-10, name
    bound = fast.step(x.cuda(), torch.Generator(device="cuda").manual_seed(6))
    assert bound.is_cuda and bound.shape == ()


def test_tune_allocator_keeps_freed_memory():
    """After tuning, a large tensor freed and allocated again is not faulted back in each time."""
    import resource

    if not tune_allocator():
        pytest.skip("not glibc")
    for _ in range(3):
        t = torch.ones(1 << 20)  # 4 MiB, above glibc's default mmap threshold of 128 KiB
        del t

    def faults() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            t = torch.ones(1 << 20)
            del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # untuned: ~1024 page faults per allocation, 10 240 in all; the best of three rounds, as the
    # process-wide count also takes other threads' faults (earlier tests leave threads behind)
    assert min(faults() for _ in range(3)) < 1000
