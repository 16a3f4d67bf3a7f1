"""Importance sampling in bf16 (``aevb evaluate --marginal is --importance-precision bf16``).

The bf16 path must (1) round exactly what it says: the decoder's inputs, weights, biases and each
layer's output to bf16, with float32 accumulation, and nothing else; (2) use the float32 run's
draws, so that the difference between the two estimates is the rounding's alone; (3) be
reproducible; (4) leave the float32 default unchanged; (5) be refused, in one line, on a CPU
without bf16 instructions. The tolerances are derived where they are used.

This machine's CPU may lack bf16 instructions (torch then emulates bf16 products, slowly): the
tests force the path with ``AEVB_FORCE_CPU_BF16=1`` on tiny models, and fake the CPU's
instruction sets where the check itself is tested, so they pass on any host.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import aevb
from aevb import cli, hardware, marginal
from aevb.data import binarize_tensor, load_dataset
from aevb.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
K = 200
U = 2.0**-8  # bf16's unit roundoff: 8 significant bits, round to nearest


@pytest.fixture(autouse=True)
def forced(monkeypatch):
    """Every test runs bf16 on this CPU unless it removes the variable itself."""
    monkeypatch.setenv(hardware.FORCE_ENV, "1")


@pytest.fixture(scope="module")
def run_dir(base_run):
    return base_run  # conftest's finished run: digits, 64-16-2, tanh, Bernoulli (read only)


@pytest.fixture(scope="module")
def model_x(run_dir):
    model = aevb.load(run_dir).eval()
    x = binarize_tensor(torch.from_numpy(load_dataset("digits").test[:40]), "static", 1)
    return model, x


def is_run(model, x, precision: str, seed: int = 3, **kw) -> marginal.ISResult:
    g = torch.Generator().manual_seed(seed)
    return marginal.importance_sampling(model, x, K, generator=g, precision=precision, **kw)


def the_draws(model, x, seed: int = 3) -> torch.Tensor:
    """The z_k that importance_sampling draws for <= 64 points in one chunk: (K, N, J)."""
    (batch_seed,) = marginal._batch_seeds(1, torch.Generator().manual_seed(seed), x.device)
    with torch.no_grad():
        q = model.encoder.posterior(x)
        return q.rsample(K, torch.Generator().manual_seed(batch_seed))


def emulated_log_joint(model, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """log p(x, z) with the decoder rounded by hand as bf16 autocast rounds it (inputs, weights,
    biases and each layer's output; sums in float32), and the tolerance for one bf16 ulp of
    difference in any rounding: sum_d 2^-7 (|l_d| + sum_h |W2_dh| |h_h|)."""

    def r(t):
        return t.bfloat16().float()

    lin1, lin2 = model.decoder.net.trunk[0], model.decoder.net.head
    with torch.no_grad():
        h = r(torch.tanh(r(r(z) @ r(lin1.weight).T + r(lin1.bias))))
        logits = r(h @ r(lin2.weight).T + r(lin2.bias))
        log_lik = (logits * x).sum(-1) - torch.nn.functional.softplus(logits).sum(-1)
        ulp = 2.0**-7 * (logits.abs() + h.abs() @ r(lin2.weight).abs().T).sum(-1)
    return model.prior.log_prob(z) + log_lik, ulp


def test_bf16_log_joint_rounds_the_decoder_only(model_x):
    model, x = model_x
    assert type(model.decoder.net.trunk[1]) is torch.nn.Tanh  # what the emulation assumes
    z = the_draws(model, x)
    with torch.no_grad():
        lj32 = marginal.log_joint(model, x, z)
        lj16 = marginal.log_joint(model, x, z, precision="bf16")
    emu, ulp = emulated_log_joint(model, x, z)
    assert lj16.dtype == torch.float32
    assert bool(((lj16 - emu).abs() <= ulp).all())
    # the emulation explains the difference from float32, not just lies within a tolerance
    off = float((lj16 - lj32).abs().mean())
    assert off > 0 and float((lj16 - emu).abs().mean()) <= 0.1 * off


def test_bf16_estimate_is_the_float32_one_on_the_same_draws(model_x):
    """Both estimates are log-mean-exps over the same z_k; |LME(a) - LME(b)| <= max_k |a_k - b_k|
    bounds their difference per point by the largest change of a log-weight."""
    model, x = model_x
    f32, b16 = is_run(model, x, "float32"), is_run(model, x, "bf16")
    assert (f32.precision, b16.precision) == ("float32", "bf16")
    z = the_draws(model, x)
    with torch.no_grad():
        log_q = model.encoder.posterior(x).log_prob(z)
        lw32 = marginal.log_joint(model, x, z) - log_q
        lw16 = marginal.log_joint(model, x, z, precision="bf16") - log_q
    lme = [torch.logsumexp(w.double(), 0) - math.log(K) for w in (lw32, lw16)]
    torch.testing.assert_close(f32.log_px.double(), lme[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(b16.log_px.double(), lme[1], atol=1e-4, rtol=0)
    d = (b16.log_px - f32.log_px).double()
    assert bool((d.abs() <= (lw16 - lw32).abs().max(0).values + 1e-4).all())
    assert float(d.abs().max()) > 0  # bf16 ran
    # and the rounding is small: |d| is at most a few ulps of the log-likelihood (~ U * 40 nats)
    assert float(d.abs().max()) < 64 * U


def test_bf16_estimate_is_reproducible(model_x):
    model, x = model_x
    a, b = is_run(model, x, "bf16"), is_run(model, x, "bf16")
    assert torch.equal(a.log_px, b.log_px) and torch.equal(a.ess, b.ess)
    assert torch.equal(is_run(model, x, "bf16", workers=2).log_px, a.log_px)
    assert not torch.equal(is_run(model, x, "bf16", seed=4).log_px, a.log_px)


def test_float32_default_is_unchanged(run_dir, model_x, monkeypatch):
    """On a CPU without bf16 instructions "auto" (the default) is float32, bit for bit."""
    monkeypatch.setattr(hardware, "bf16_instructions", lambda: [])
    model, x = model_x
    g = torch.Generator().manual_seed(3)
    plain = marginal.importance_sampling(model, x, K, generator=g)
    assert torch.equal(plain.log_px, is_run(model, x, "float32").log_px)
    kw = dict(marginal="is", points=30, importance_samples=K, workers=1)
    a = aevb.evaluate(run_dir, **kw)["marginal"]["is"]
    b = aevb.evaluate(run_dir, importance_precision="float32", **kw)["marginal"]["is"]
    assert a.pop("seconds") >= 0 and b.pop("seconds") >= 0
    assert a == b and a["precision"] == "float32" and "bf16_instructions" not in a


def test_cli_bf16_json_and_text(run_dir, capsys):
    base = ["evaluate", str(run_dir), "--marginal", "is", "--importance-samples", str(K)]
    base += ["--points", "30", "--workers", "1", "--quiet"]
    assert cli.main([*base, "--json"]) == 0
    f32 = json.loads(capsys.readouterr().out)["marginal"]["is"]
    assert cli.main([*base, "--importance-precision", "bf16", "--json"]) == 0
    b16 = json.loads(capsys.readouterr().out)["marginal"]["is"]
    assert b16["precision"] == "bf16" and b16["bf16_instructions"] == "forced"
    assert b16["log_likelihood"] != f32["log_likelihood"]
    assert abs(b16["log_likelihood"] - f32["log_likelihood"]) < 64 * U  # as on the same draws
    assert cli.main([*base, "--importance-precision", "bf16"]) == 0
    assert "bf16 (forced)" in capsys.readouterr().out


def test_bf16_refused_on_a_cpu_without_bf16(run_dir, model_x, monkeypatch, capsys):
    model, x = model_x
    monkeypatch.delenv(hardware.FORCE_ENV)
    monkeypatch.setattr(hardware, "bf16_instructions", lambda: [])
    with pytest.raises(ConfigError, match="bf16 dot-product instructions"):
        aevb.evaluate(run_dir, marginal="is", importance_precision="bf16", points=5)
    with pytest.raises(ConfigError, match="bf16 dot-product instructions"):
        is_run(model, x, "bf16")
    rc = cli.main(["evaluate", str(run_dir), "--marginal", "is", "--importance-precision", "bf16"])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and err.startswith("aevb: error: --importance-precision bf16")
        and (err.count("\n") == 1)
    )
    # a CPU that has them runs it, and the result names what ran it
    monkeypatch.setattr(hardware, "bf16_instructions", lambda: ["avx512_bf16"])
    res = aevb.evaluate(
        run_dir, marginal="is", importance_precision="bf16", importance_samples=20, points=5
    )
    assert res["marginal"]["is"]["bf16_instructions"] == "avx512_bf16"
    # and there "auto", the default, is bf16 (its bias is below 0.02 nats: docs/EVALUATION.md)
    res = aevb.evaluate(run_dir, marginal="is", importance_samples=20, points=5)
    assert res["marginal"]["is"]["precision"] == "bf16"


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(importance_precision="bf16"), "add --marginal is"),
        (dict(importance_precision="bf16", marginal="hmc"), "add --marginal is"),
        (dict(importance_precision="float16", marginal="is"), "choose float32 or bf16"),
    ],
)
def test_bad_precision_requests(run_dir, kw, message):
    with pytest.raises(ConfigError, match=message):
        aevb.evaluate(run_dir, points=5, **kw)


def test_cli_rejects_an_unknown_precision(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", str(run_dir), "--importance-precision", "fp8"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_bench_eval_precision_reports_the_paired_bias(run_dir, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("bench_eval_precision", None)
    import bench_eval_precision as bench

    argv = ["--run", str(run_dir), "--points", "30", "--samples", str(K), "--workers", "1"]
    assert bench.main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (
        res["model"] == "64-16-2" and res["points"] == 30 and res["bf16_instructions"] == "forced"
    )
    # the float32 column is aevb evaluate's estimate: the same points and draws
    ev = aevb.evaluate(run_dir, marginal="is", points=30, importance_samples=K, workers=1)
    assert res["log_px_float32"] == pytest.approx(ev["marginal"]["is"]["log_likelihood"], abs=1e-9)
    assert res["bias"] == pytest.approx(res["log_px_bf16"] - res["log_px_float32"], abs=1e-9)
    assert 0 < res["max_abs_diff"] < 64 * U and res["verdict"] in ("below", "above", "unsure")
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "| 64-16-2 | 200 | 30 |" in out and "bf16 by forced" in out
