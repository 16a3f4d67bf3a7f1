"""aevb.compat: private torch functions where they work, public fallbacks with the same results.

Each fallback is forced by removing the private name from torch (monkeypatch) and re-choosing;
the fast engine must then still match the autograd engine and resume bitwise.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from fast_checks import M, assert_resume_is_bitwise_exact, make_data, make_model
from helpers import Crash, assert_same_run, crash_after_checkpoint

import aevb
from aevb import compat, runs
from aevb.algorithms import AEVB, make_optimizer
from aevb.fast import FastStep
from aevb.training import TrainConfig, Trainer

# key of compat.PATHS -> the private names whose removal forces its fallback
PRIVATE_NAMES = {
    "fused_adagrad": [(torch, "_fused_adagrad_")],
    "fused_adam": [(torch, "_fused_adam_")],
    "softplus": [(torch._C._nn, "softplus")],
    "flatten": [(torch._utils, "_flatten_dense_tensors")],
}
# without the fused kernels torch's fused optimizers do not work either
IMPLIED = {"fused_adagrad": ["optim_fused_adagrad"], "fused_adam": ["optim_fused_adam"]}
ALL_PRIVATE = [x for names in PRIVATE_NAMES.values() for x in names] + [
    (torch._utils, "_unflatten_dense_tensors")
]


@contextlib.contextmanager
def without(names):
    """torch without ``names`` ((module, attribute) pairs), compat re-chosen; restored after."""
    try:
        with pytest.MonkeyPatch.context() as mp:
            for mod, attr in names:
                mp.delattr(mod, attr)
            compat.choose()
            yield compat.PATHS
    finally:
        compat.choose()


@pytest.fixture
def fallbacks():
    """Every private path removed: compat on its public fallbacks throughout the test."""
    with without(ALL_PRIVATE) as paths:
        assert set(paths.values()) == {compat.FALLBACK}, paths
        yield paths


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ------------------------------------------------------------------ the choice
def test_private_paths_are_chosen_on_this_torch():
    """The default stays the fast one: on torch 2.13 every private path exists and works."""
    assert compat.PATHS == {
        "fused_adagrad": "private",
        "fused_adam": "private",
        "softplus": "private",
        "flatten": "private",
        "optim_fused_adagrad": "private",
        "optim_fused_adam": "private",
    }
    assert compat.fused_adagrad_ is torch._fused_adagrad_
    assert compat.fused_adam_ is torch._fused_adam_
    assert compat.softplus is torch._C._nn.softplus
    assert compat.flatten is torch._utils._flatten_dense_tensors
    assert compat.unflatten is torch._utils._unflatten_dense_tensors
    # the fast engine binds the private functions themselves: no wrapper per step
    model = make_model()
    fast = FastStep(model, make_optimizer(model.parameters(), "adagrad", 0.01, 0.001))
    assert fast._fused_adagrad_ is torch._fused_adagrad_ and fast._softplus is torch._C._nn.softplus
    for name in ("adagrad", "adam"):
        opt = make_optimizer(make_model().parameters(), name, 0.01, 0.001)
        assert opt.param_groups[0]["fused"] is True
    assert "all private fast paths" in compat.describe()


@pytest.mark.parametrize("key", list(PRIVATE_NAMES))
def test_each_missing_private_name_falls_back_alone(key):
    with without(PRIVATE_NAMES[key]) as paths:
        fallen = {k for k, v in paths.items() if v == compat.FALLBACK}
        assert fallen == {key, *IMPLIED.get(key, [])}
        assert "fallbacks for" in compat.describe()
        assert all(k in compat.describe() for k in fallen)
        if key.startswith("fused_"):
            kind = key.removeprefix("fused_")
            opt = make_optimizer(make_model().parameters(), kind, 0.01, 0.001)
            assert not opt.param_groups[0]["fused"] and opt.param_groups[0]["foreach"] is False
    assert set(compat.PATHS.values()) == {compat.PRIVATE}  # restored


def test_a_private_function_that_misbehaves_is_not_chosen(monkeypatch):
    """'Works', not just 'exists': a kernel that leaves the parameters alone is refused."""
    try:
        monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: None)
        monkeypatch.setattr(torch._C._nn, "softplus", lambda x, b, t, out: out.copy_(x))
        paths = compat.choose()
        assert paths["fused_adam"] == paths["softplus"] == compat.FALLBACK
        assert paths["fused_adagrad"] == compat.PRIVATE
    finally:
        monkeypatch.undo()
        compat.choose()


# ------------------------------------------------------------------ bitwise fallbacks
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_softplus_fallback_is_bitwise_the_private_one(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 40, generator=g, dtype=dtype) * 15  # across the threshold (20)
    x.view(-1)[:6] = torch.tensor([0.0, 20.0, -20.0, 1e-30, -1e4, 1e4], dtype=dtype)
    a, b = torch.empty_like(x), torch.empty_like(x)
    ra = torch._C._nn.softplus(x, 1.0, 20.0, out=a)
    rb = compat.softplus_fallback(x, 1.0, 20.0, out=b)
    assert ra is a and rb is b and torch.equal(a, b) and a.dtype == dtype
    assert torch.equal(b, F.softplus(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_flatten_fallback_is_bitwise_the_private_one(dtype):
    g = torch.Generator().manual_seed(1)
    ts = [
        torch.randn(5, 7, generator=g, dtype=dtype),
        torch.randn(7, generator=g, dtype=dtype),
        torch.randn(4, 3, generator=g, dtype=dtype).t(),  # not contiguous
        torch.randn((), generator=g, dtype=dtype),
    ]
    private = torch._utils._flatten_dense_tensors(ts)
    flat = compat.flatten_fallback(ts)
    assert flat.dtype == dtype and flat.shape == private.shape and torch.equal(flat, private)
    flat.mul_(3)  # as all_reduce_mean_ changes it in place
    private.mul_(3)
    pairs = zip(
        compat.unflatten_fallback(flat, ts),
        torch._utils._unflatten_dense_tensors(private, ts),
        strict=True,
    )
    for (a, b), t in zip(pairs, ts, strict=True):
        assert a.shape == b.shape == t.shape and torch.equal(a, b) and torch.equal(a, 3 * t)
    for t in ts:  # a single tensor, which the private function returns as a view of itself
        assert torch.equal(compat.flatten_fallback([t]), torch._utils._flatten_dense_tensors([t]))


# ------------------------------------------------------------------ the fast engine on fallbacks
def _algorithms(optimizer, likelihood, estimator="B", samples=1):
    out = []
    for engine in ("fast", "autograd"):
        cfg = TrainConfig(
            optimizer=optimizer, engine=engine, estimator=estimator, samples=samples, lr=0.02
        )
        out.append(AEVB(make_model(likelihood), cfg, 600, 0.02))
    assert out[0].engine == "fast" and out[1].engine == "autograd"
    return out


@pytest.mark.parametrize(
    "optimizer,likelihood,estimator,samples",
    [("adagrad", "bernoulli", "B", 1), ("adam", "bernoulli", "A", 2), ("adam", "gaussian", "B", 1)],
)
def test_fallback_fast_engine_matches_autograd(
    fallbacks, optimizer, likelihood, estimator, samples
):
    fast, ref = _algorithms(optimizer, likelihood, estimator, samples)
    assert fast.fast._fused_adagrad_ is compat.adagrad_fallback_
    assert fast.fast._fused_adam_ is compat.adam_fallback_
    assert fast.fast._softplus is compat.softplus_fallback
    for alg in (fast, ref):  # torch's single-tensor optimizers, whose update the fallbacks copy
        assert not alg.optimizer.param_groups[0]["fused"]
        assert alg.optimizer.param_groups[0]["foreach"] is False
    data = make_data(likelihood, torch.float64, n=10 * M, seed=4)
    g_fast, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    p_init = [p.detach().clone() for p in fast.model.parameters()]
    for k in range(10):
        xb = data[k * M : (k + 1) * M]
        b_fast, b_ref = fast.step(xb, g_fast), ref.step(xb, g_ref)
        assert abs(float(b_fast - b_ref)) < 1e-10 * abs(float(b_ref))
    # gradients of the last step: the fast engine's buffer against autograd's .grad
    for (name, gf), p in zip(
        fast.fast.named_gradients().items(), ref.model.parameters(), strict=True
    ):
        assert rel_err(gf, p.grad) < 1e-10, name
    for (name, p), q, p0 in zip(
        fast.model.named_parameters(), ref.model.parameters(), p_init, strict=True
    ):
        assert rel_err(p.detach(), q.detach()) < 1e-10, name
        assert not torch.equal(p.detach(), p0)
    sd_fast, sd_ref = fast.optimizer.state_dict(), ref.optimizer.state_dict()
    for i, st in sd_ref["state"].items():
        for key, v in st.items():
            assert rel_err(sd_fast["state"][i][key].double(), v.double()) < 1e-10, (i, key)


def test_fallback_updates_match_the_fused_kernels_to_rounding():
    """The fallback kernels compute torch's fused formulas (same state, same step count)."""
    g = torch.Generator().manual_seed(2)
    p, grad, s = (torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(3))
    s = s.abs()
    step = torch.tensor(4.0)
    kw = {"lr": 0.02, "lr_decay": 0.01, "weight_decay": 1 / 600, "eps": 1e-10, "maximize": False}
    a, b = [p.clone(), s.clone()], [p.clone(), s.clone()]
    torch._fused_adagrad_([a[0]], [grad], [a[1]], [step], **kw)
    compat.adagrad_fallback_([b[0]], [grad], [b[1]], [step], **kw)
    assert all(rel_err(x, y) < 1e-15 for x, y in zip(a, b, strict=True))
    kw = {"lr": 0.02, "beta1": 0.9, "beta2": 0.999, "weight_decay": 1 / 600, "eps": 1e-8}
    kw |= {"amsgrad": False, "maximize": False}
    a, b = [p.clone(), s.clone(), s * s], [p.clone(), s.clone(), s * s]
    torch._fused_adam_([a[0]], [grad], [a[1]], [a[2]], [], [step], **kw)
    compat.adam_fallback_([b[0]], [grad], [b[1]], [b[2]], [], [step], **kw)
    assert all(rel_err(x, y) < 1e-15 for x, y in zip(a, b, strict=True))
    assert float(step) == 4.0  # the caller counts steps, as with torch's fused kernels


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_fallback_checkpoint_resume_is_bitwise_exact(fallbacks, tmp_path, optimizer):
    data = make_data("bernoulli", torch.float32, n=240, seed=7)
    cfg = TrainConfig(optimizer=optimizer, lr=0.02, budget=1200, batch_size=M, engine="fast")

    def trainer(budget):
        c = TrainConfig(**{**cfg.to_dict(), "budget": budget})
        alg = AEVB(make_model(dtype=torch.float32), c, len(data), 0.02)
        assert alg.engine == "fast" and alg.fast._fused_adam_ is compat.adam_fallback_
        return Trainer(alg, data, None, c, progress=False, evaluate_points=False)

    assert_resume_is_bitwise_exact(trainer, tmp_path)


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_fallback_run_resumes_to_the_uninterrupted_run(fallbacks, tmp_path, monkeypatch, optimizer):
    """``aevb.train(out=...)`` cut after its 3rd checkpoint, then ``aevb.train(resume=...)``: the
    model and metrics equal an uninterrupted run's, bitwise, on the fallback paths."""
    kw = dict(latent_dim=5, hidden=50, lr=0.02, progress=False, draw_figures=False)
    kw |= dict(budget=6_000, seed=3, optimizer=optimizer, eval_per_decade=8)
    full = aevb.train("digits", tmp_path / "full", **kw)
    assert full.metrics[-1]["samples_seen"] == 6_000

    def on_the_fallback(trainer):
        assert trainer.alg.engine == "fast"
        assert trainer.alg.fast._fused_adagrad_ is compat.adagrad_fallback_

    with crash_after_checkpoint(3, check=on_the_fallback), pytest.raises(Crash):
        aevb.train("digits", tmp_path / "cut", **kw)
    assert 0 < runs.load_tensors(tmp_path / "cut" / runs.STATE)[1]["samples_seen"] < 6_000
    aevb.train(resume=tmp_path / "cut", progress=False, draw_figures=False)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize("private", [True, False])
def test_average_gradients_goes_through_compat(monkeypatch, private):
    """distributed.average_gradients flattens with compat's function, private or fallback; the
    all-reduce is stood in for by halving the flat buffer in place."""
    from aevb import distributed

    model = make_model()
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]
    for p, gr in zip(model.parameters(), grads, strict=True):
        p.grad = gr.clone()
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "all_reduce_mean_", lambda t: t.mul_(0.5))
    names = [] if private else ALL_PRIVATE
    with without(names) as paths:
        assert paths["flatten"] == (compat.PRIVATE if private else compat.FALLBACK)
        distributed.average_gradients(model.parameters())
    for p, gr in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, gr * 0.5)
