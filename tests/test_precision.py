"""``--precision bf16``: the fast engine's bf16 products on CPU, their accuracy against a float64
reference on the same noise, and one clear error where the CPU lacks bf16 instructions.

This host may lack them (bf16 is then several times slower than float32): the tests force the
path with ``AEVB_FORCE_CPU_BF16=1``, since torch computes bf16 products on every CPU.
"""

from __future__ import annotations

import pytest
import torch
from fast_checks import M, assert_resume_is_bitwise_exact, make_data, make_model
from helpers import error_lines
from test_fast import reference_gradients

from aevb import hardware, runs
from aevb.algorithms import AEVB
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.fast import FastStep
from aevb.training import TrainConfig, Trainer

#: Bounds on the relative error (2-norm over all parameters) of the bf16 step's gradient against
#: float64 on the same noise. bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per product
#: input and output); measured: 0.4 %-0.6 % with tanh, 2.3 %-3.5 % with relu, whose kinks make
#: units whose pre-activation rounds across 0 switch on or off (torch's own CPU autocast of the
#: autograd step errs as much). A lost or doubled term of the gradient errs by tens of %.
BF16_GRADIENT_RTOL = {"tanh": 0.015, "relu": 0.08}


@pytest.fixture
def forced_bf16(monkeypatch):
    monkeypatch.setenv(hardware.FORCE_ENV, "1")


def _on_engine_noise(model, x, estimator, samples, seed, monkeypatch, autocast=False):
    """Autograd's gradients of ``model`` (float64 or float32, under bf16 autocast if asked) on
    the float32 noise that the fast engine draws from ``seed`` (eps of shape (L, M, J))."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.empty(samples, len(x), model.config.latent_dim).normal_(generator=g)
    dtype = next(model.parameters()).dtype
    with monkeypatch.context() as mp:
        mp.setattr(torch, "randn", lambda *a, **k: eps.to(k["dtype"]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return reference_gradients(model, x.to(dtype), estimator, samples, seed)


def _total_err(got, ref):
    """Relative error of the whole gradient (all parameters as one vector)."""
    flat = [(got[n].double() - ref[n].double()).flatten() for n in ref]
    return float(torch.cat(flat).norm() / torch.cat([r.flatten() for r in ref.values()]).norm())


@pytest.mark.parametrize(
    "likelihood,activation,estimator,samples,depth",
    [
        ("bernoulli", "tanh", "B", 1, 1),
        ("gaussian", "tanh", "A", 2, 1),
        ("bernoulli", "relu", "A", 1, 2),
        ("gaussian", "relu", "B", 3, 3),
    ],
)
def test_bf16_gradients_against_float64_on_the_same_noise(
    likelihood, activation, estimator, samples, depth, monkeypatch
):
    model = make_model(likelihood, activation, torch.float32, depth=depth)
    x = make_data(likelihood, torch.float32)
    m64 = make_model(likelihood, activation, depth=depth)
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    ref, ref_bound = _on_engine_noise(m64, x, estimator, samples, 5, monkeypatch)
    errors = {}
    for precision in ("float32", "bf16"):
        opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
        fast = FastStep(model, opt, estimator, samples, precision)
        bound = fast.gradients(x, torch.Generator().manual_seed(5))
        got = fast.named_gradients()
        assert all(g.dtype == torch.float32 for g in got.values())  # what the optimizer reads
        errors[precision] = _total_err(got, ref)
        assert abs(float(bound) - float(ref_bound)) < 0.01 * abs(float(ref_bound))
    assert errors["float32"] < 1e-5  # the reference really is on the engine's noise
    # bf16 rounds (its error is far above float32's) but keeps every term ...
    assert 1e-4 < errors["bf16"] < BF16_GRADIENT_RTOL[activation], errors
    # ... and errs no more than torch's bf16 autocast of the autograd step on the same noise
    autocast, _ = _on_engine_noise(model, x, estimator, samples, 5, monkeypatch, autocast=True)
    assert errors["bf16"] < 1.5 * _total_err(autocast, ref) + 1e-3


@pytest.mark.parametrize(
    "likelihood,activation,estimator,samples,depth",
    [("bernoulli", "tanh", "B", 1, 1), ("gaussian", "relu", "B", 3, 3)],
)
def test_emulated_bf16_products_compute_what_torchs_bf16_kernels_do(
    likelihood, activation, estimator, samples, depth
):
    """AEVB_FORCE_CPU_BF16=emulate's products (float32 kernels, rounded to bf16 once) give the
    step's gradient of torch's bf16 kernels: they differ only where the order of a float32 sum
    changes how a result rounds to bf16, far below bf16's own error."""
    model = make_model(likelihood, activation, torch.float32, depth=depth)
    x = make_data(likelihood, torch.float32)
    grads, bounds = {}, {}
    for kind in ("float32", "bf16", "emulated"):
        opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
        precision = "float32" if kind == "float32" else "bf16"
        fast = FastStep(model, opt, estimator, samples, precision, emulate_bf16=kind == "emulated")
        bounds[kind] = float(fast.gradients(x, torch.Generator().manual_seed(5)))
        grads[kind] = {k: v.clone() for k, v in fast.named_gradients().items()}
    bf16_error = _total_err(grads["bf16"], grads["float32"])  # bf16's rounding, 0.4 % or more
    emulation_error = _total_err(grads["emulated"], grads["bf16"])
    assert bf16_error > 1e-3 and emulation_error < 0.01 * bf16_error, (bf16_error, emulation_error)
    assert abs(bounds["emulated"] - bounds["bf16"]) < 0.02 * abs(bounds["bf16"] - bounds["float32"])
    with pytest.raises(ValueError, match="needs precision=.bf16."):
        FastStep(model, torch.optim.Adagrad(model.parameters()), emulate_bf16=True)


def test_emulation_is_chosen_by_the_environment_where_bf16_instructions_lack(monkeypatch):
    model = make_model("bernoulli", "tanh", torch.float32)
    cfg = TrainConfig(lr=0.02, precision="bf16")
    for setting, emulated in (("1", False), (hardware.EMULATE, True)):
        monkeypatch.setenv(hardware.FORCE_ENV, setting)
        for flags, has in (([], False), (["avx512_bf16"], True)):
            monkeypatch.setattr(hardware, "bf16_instructions", lambda f=flags: f)
            fast = AEVB(model, cfg, 600, 0.02).fast
            assert fast.bf16 and fast.emulate_bf16 == (emulated and not has)


def test_bf16_master_weights_and_optimizer_state_stay_float32(forced_bf16):
    model = make_model("bernoulli", "tanh", torch.float32)
    # Adagrad's first step moves every weight by lr: 1e-5, below bf16's resolution of them
    alg = AEVB(model, TrainConfig(lr=1e-5, precision="bf16"), 600, 1e-5)
    assert alg.engine == "fast" and alg.fast.bf16
    x = make_data("bernoulli", torch.float32)
    before = alg.fast.flat.clone()
    alg.step(x, torch.Generator().manual_seed(0))
    assert alg.fast.flat.dtype == alg.fast.state_a.dtype == torch.float32
    assert alg.fast.flat_m.dtype == torch.bfloat16
    # an update far below bf16's resolution of the weights still moves the float32 masters
    moved, big = (alg.fast.flat - before).abs(), before.abs() > 0.01
    assert bool(((moved > 0) & (moved < before.abs() * 2**-9))[big].all())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_trains_resumes_bitwise_and_matches_float32(forced_bf16, tmp_path):
    data = make_data("bernoulli", torch.float32, n=10 * M)

    def trainer(budget, precision="bf16", points=False):
        model = make_model("bernoulli", "tanh", torch.float32)
        cfg = TrainConfig(lr=0.02, budget=budget, batch_size=M, precision=precision)
        alg = AEVB(model, cfg, len(data), 0.02)
        assert alg.engine == "fast" and alg.fast.bf16 == (precision == "bf16")
        return Trainer(alg, data, None, cfg, progress=False, evaluate_points=points)

    assert_resume_is_bitwise_exact(trainer, tmp_path)
    bf16, f32 = (trainer(3000, p, points=True).run() for p in ("bf16", "float32"))
    a, b = bf16[-1]["train_bound"], f32[-1]["train_bound"]
    assert a > bf16[0]["train_bound"] + 1  # it learns
    assert a != b and abs(a - b) < 0.02 * abs(b)  # as float32 does, within bf16's rounding


def test_bf16_without_instructions_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(hardware.FORCE_ENV, raising=False)
    monkeypatch.setattr(hardware, "bf16_instructions", lambda: [])
    argv = ["train", "--out", str(tmp_path / "b"), "--precision", "bf16", "--device", "cpu"]
    assert main([*argv, "--quiet"]) == 2
    (line,) = error_lines(capsys)
    assert "bf16" in line and hardware.cpu_model() in line and "drop" in line
    assert not (tmp_path / "b" / runs.CONFIG).exists()
    monkeypatch.setattr(hardware, "bf16_instructions", lambda: ["avx512_bf16"])
    assert hardware.check_cpu_bf16() == "avx512_bf16"


def test_bf16_is_refused_for_an_algorithm_without_it(forced_bf16, small_run):
    with pytest.raises(ConfigError, match="covers the algorithms aevb, autoencoder"):
        small_run(algorithm="wake-sleep", precision="bf16")


def test_bf16_on_the_autograd_engine_autocasts_on_cpu(forced_bf16, small_run):
    # softplus hidden units are not the fast engine's: the autograd step, under CPU autocast
    f32 = small_run(activation="softplus")
    bf16 = small_run(activation="softplus", precision="bf16")
    a, b = bf16.metrics[-1]["test_bound"], f32.metrics[-1]["test_bound"]
    assert a != b and abs(a - b) < 0.05 * abs(b)
    assert a > bf16.metrics[0]["test_bound"] + 3


def test_cpu_description_names_the_model_and_its_vector_sets(monkeypatch):
    text = hardware.describe_cpu()
    assert hardware.cpu_model() in text and "cores" in text
    x86 = (
        "processor\t: 0\nmodel name\t: Intel Xeon 8480\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n"
    )
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n"
    assert hardware.parse_cpuinfo(x86) == (
        "Intel Xeon 8480",
        {"fpu", "avx2", "avx512_bf16", "amx_bf16"},
    )
    assert hardware.parse_cpuinfo(arm)[1] == {"fp", "asimd", "bf16", "i8mm"}
    for flags, best in ((x86, "amx_bf16"), (arm, "bf16")):  # the best set found, first
        monkeypatch.setattr(hardware, "cpu_flags", lambda f=flags: hardware.parse_cpuinfo(f)[1])
        assert hardware.bf16_instructions()[0] == best


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_trains_on_cuda(small_run):
    run = small_run(budget=5000, precision="bf16", device="cuda")
    assert run.metrics[-1]["test_bound"] > run.metrics[0]["test_bound"] + 3
    assert isinstance(run.metrics[-1]["test_bound"], float)
