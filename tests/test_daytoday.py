"""Day-to-day options (issue 11): config files, selection, early stopping, interpolation, KL
warm-up / beta, decoder bias init, bf16, tabular CSV with standardisation, TensorBoard, plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import aevb
from aevb import api, runs, selection, tracking, training
from aevb.cli import main
from aevb.data import load_dataset
from aevb.errors import ConfigError, DataError, RunError
from aevb.fast import FastStep
from aevb.model import VAE, ModelConfig
from aevb.training import AEVB, TrainConfig, Trainer

SMALL = dict(latent_dim=3, hidden=30, lr=0.02, progress=False, draw_figures=False)


def _errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def overfit_npz(tmp_path_factory) -> Path:
    """Real digits: 60 training images (easy to overfit), a separate validation and test set."""
    ds = load_dataset("digits")
    path = tmp_path_factory.mktemp("npz") / "digits_small.npz"
    np.savez(path, train=ds.train[:60], valid=ds.train[1000:1300], test=ds.test[:200])
    return path


# A model large enough to overfit the small set: the validation bound peaks, then falls.
OVERFIT_TRAIN = dict(
    latent_dim=10,
    hidden=200,
    optimizer="adam",
    lr=0.02,
    budget=60_000,
    batch_size=30,
    eval_per_decade=10,
    weight_prior=False,
    validation=True,
)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, overfit_npz) -> Path:
    out = tmp_path_factory.mktemp("sel") / "run"
    aevb.train(
        str(overfit_npz),
        out,
        **OVERFIT_TRAIN,
        keep="best",
        progress=False,
        draw_figures=False,
    )
    return out


# --------------------------------------------------------------------------- config files


def _model_and_train(cfg: dict) -> tuple[dict, dict]:
    t = {k: v for k, v in cfg["train"].items() if k not in ("lr_search",)}
    return cfg["model"], t


def test_config_file_round_trip_and_override_order(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'data = "digits"\nlatent-dim = 3\nhidden = 30\nbudget = 2000\nlr = 0.02\nseed = 5\n'
        f'out = "{(tmp_path / "from_file").as_posix()}"\n'
    )
    # the file alone
    assert main(["train", "--config", str(toml), "--quiet"]) == 0
    a = json.loads((tmp_path / "from_file" / runs.CONFIG).read_text())
    assert a["model"]["latent_dim"] == 3 and a["model"]["hidden"] == 30
    assert a["train"]["seed"] == 5 and a["train"]["budget"] == 2000
    assert a["train"]["batch_size"] == 100  # not in the file: the default
    # flags override the file (seed, out, and --epochs replaces the file's budget)
    out_b = tmp_path / "flags"
    argv = ["train", "--config", str(toml), "--seed", "7", "--epochs", "1", "--out", str(out_b)]
    assert main([*argv, "--quiet"]) == 0
    b = json.loads((out_b / runs.CONFIG).read_text())
    assert b["train"]["seed"] == 7 and b["train"]["epochs"] == 1 and b["train"]["budget"] is None
    assert b["model"]["latent_dim"] == 3
    # a run's config.json fed back repeats the run exactly
    out_c = tmp_path / "again"
    cfg_a = tmp_path / "from_file" / runs.CONFIG
    assert main(["train", "--config", str(cfg_a), "--out", str(out_c), "--quiet"]) == 0
    c = json.loads((out_c / runs.CONFIG).read_text())
    assert _model_and_train(c) == _model_and_train(a)
    wa, wc = load_file(tmp_path / "from_file" / runs.MODEL), load_file(out_c / runs.MODEL)
    assert wa.keys() == wc.keys() and all(torch.equal(wa[k], wc[k]) for k in wa)
    # the Python twin reads the same keywords
    opts = aevb.load_config(toml)
    assert opts["latent_dim"] == 3 and opts["seed"] == 5
    assert aevb.load_config(cfg_a)["lr"] == 0.02
    capsys.readouterr()


def test_config_unknown_key_names_the_closest(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("latent_dimm = 2\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    (line,) = _errors(capsys)
    assert "'latent_dimm'" in line and "did you mean 'latent_dim'" in line
    bad.write_text('hidden = "many"\n')
    with pytest.raises(ConfigError, match="hidden"):
        aevb.load_config(bad)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"kl_betta": 0.5}))
    with pytest.raises(ConfigError, match="'kl_beta'"):
        aevb.load_config(js)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- model selection


def _reevaluate(run_dir: Path, samples_seen: int, model: VAE) -> dict:
    """The Trainer's own evaluation of ``model`` as at ``samples_seen``, on the run's data."""
    cfg = runs.read_config(run_dir)
    tcfg = TrainConfig(**cfg["train"])
    ds = load_dataset(cfg["data"]["spec"], validation=True)
    tx, vx, sx = (torch.from_numpy(a) for a in (ds.train, ds.split("valid"), ds.test))
    alg = AEVB(model, tcfg, len(tx), float(tcfg.lr))
    t = Trainer(alg, tx, sx, tcfg, progress=False, evaluate_points=False, valid_x=vx)
    t.step_count = samples_seen // tcfg.batch_size
    return t.evaluate()


def test_best_checkpoint_has_the_best_validation_bound(overfit_run):
    recs = runs.read_metrics(overfit_run)
    valid = [r["valid_bound"] for r in recs]
    best = recs[int(np.argmax(valid))]
    # the run overfits: its validation bound peaks before the end (so "best" is not "last")
    assert best["samples_seen"] < recs[-1]["samples_seen"]
    assert max(valid) > valid[-1] + 0.5
    _, meta = runs.load_tensors(overfit_run / selection.BEST_MODEL)
    assert meta["samples_seen"] == best["samples_seen"]
    model = aevb.load(overfit_run, which="best")
    again = _reevaluate(overfit_run, best["samples_seen"], model)
    assert again["valid_bound"] == best["valid_bound"]  # the very model that scored it
    last = aevb.load(overfit_run)
    assert _reevaluate(overfit_run, best["samples_seen"], last)["valid_bound"] < max(valid)
    res_best = aevb.evaluate(overfit_run, "valid", model="best", samples=10)
    res_last = aevb.evaluate(overfit_run, "valid", samples=10)
    assert res_best["model"] == "best" and res_best["bound"] > res_last["bound"]


def test_keep_best_needs_a_validation_split(overfit_npz):
    with pytest.raises(ConfigError, match="--validation"):
        aevb.train(str(overfit_npz), keep="best", budget=1000, **SMALL)
    with pytest.raises(ConfigError, match="--validation"):
        aevb.train(str(overfit_npz), patience=3, budget=1000, **SMALL)


def test_early_stopping_stops_after_patience(tmp_path, overfit_npz, overfit_run):
    full = runs.read_metrics(overfit_run)
    patience = 3
    out = tmp_path / "es"
    run = aevb.train(
        str(overfit_npz),
        out,
        **OVERFIT_TRAIN,
        patience=patience,
        progress=False,
        draw_figures=False,
    )
    recs = run.metrics
    valid = [r["valid_bound"] for r in recs]
    assert recs[-1]["samples_seen"] < 60_000  # it stopped early
    i_best = int(np.argmax(valid))
    # exactly `patience` evaluations without progress, counted after the first epoch (60 rows)
    assert sum(r["samples_seen"] >= 60 for r in recs[i_best + 1 :]) == patience
    assert all(v <= valid[i_best] for v in valid[i_best + 1 :])
    # the same trajectory as the run without early stopping, up to the stop
    assert [r["valid_bound"] for r in full[: len(recs)]] == valid
    # resuming a stopped run trains no further
    again = aevb.train(resume=out, progress=False, draw_figures=False)
    assert again.metrics[-1]["samples_seen"] == recs[-1]["samples_seen"]


# --------------------------------------------------------------------------- interpolation


def test_interpolation_endpoints_decode_the_points_means(tmp_path, overfit_run):
    out = tmp_path / "paths.npz"
    api.interpolate(overfit_run, out, pairs=3, steps=6, split="test", seed=1)
    with np.load(out) as f:
        x, z, index, methods = f["x"], f["z"], f["index"], list(f["methods"])
    assert methods == ["linear", "spherical"] and x.shape == (3, 2, 6, 64)
    model = aevb.load(overfit_run)
    data = load_dataset("digits").test[:200]
    pts = torch.from_numpy(data[index])
    with torch.no_grad():
        mu, _ = model.encode(pts)
    ends = model.reconstruct(pts).numpy()  # decoder mean at the posterior mean
    for p in range(3):
        for k in range(2):
            assert np.array_equal(z[p, k, 0], mu[2 * p].numpy())
            assert np.array_equal(z[p, k, -1], mu[2 * p + 1].numpy())
            np.testing.assert_allclose(x[p, k, 0], ends[2 * p], atol=1e-6)
            np.testing.assert_allclose(x[p, k, -1], ends[2 * p + 1], atol=1e-6)
        # the linear path is straight; the spherical one keeps off the origin
        lin, sph = z[p, 0], z[p, 1]
        np.testing.assert_allclose(lin[1] - lin[0], lin[2] - lin[1], atol=1e-5)
        mid = 6 // 2
        assert np.linalg.norm(sph[mid]) > np.linalg.norm(lin[mid])
    png = api.interpolate(overfit_run, tmp_path / "paths.png", pairs=2, steps=5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="--pairs"):
        api.interpolate(overfit_run, tmp_path / "p.png", pairs=500, split="test")


# --------------------------------------------------------------------------- KL weight


def test_beta_one_reproduces_the_plain_run_exactly():
    for engine_kw in ({}, {"depth": 2}):  # the fast engine, and an autograd model
        plain = aevb.train("digits", budget=3000, seed=2, **engine_kw, **SMALL)
        beta1 = aevb.train("digits", budget=3000, seed=2, kl_beta=1.0, **engine_kw, **SMALL)
        a, b = plain.model.state_dict(), beta1.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)

        def drop_time(recs):
            return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]

        assert drop_time(plain.metrics) == drop_time(beta1.metrics)
        assert "kl_weight" not in beta1.metrics[-1]


def _model(likelihood="bernoulli", seed=1):
    cfg = ModelConfig(x_dim=30, latent_dim=4, hidden=16, likelihood=likelihood)
    model = VAE(cfg).double()
    model.init_parameters(0.3, torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize("estimator", ["A", "B"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fast_kl_weight_matches_autograd(estimator, likelihood):
    model = _model(likelihood)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(12, 30, generator=g, dtype=torch.float64)
    if likelihood == "bernoulli":
        x = (x > 0.6).double()
    beta = 0.3
    rec, kl = model.elbo_terms(x, estimator, 2, torch.Generator().manual_seed(5))
    (beta * kl - rec).mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref_bound = float((rec - kl).mean().detach())
    model.zero_grad(set_to_none=True)
    opt = training.make_optimizer(model.parameters(), "adagrad", 0.01, 0.0)
    fast = FastStep(model, opt, estimator, 2)
    bound = fast.gradients(x, torch.Generator().manual_seed(5), kl_weight=beta)
    assert abs(float(bound) - ref_bound) < 1e-10 * abs(ref_bound)  # the beta = 1 bound
    for name, grad in fast.named_gradients().items():
        err = float((grad - ref[name]).norm() / ref[name].norm())
        assert err < 1e-10, (name, err)
    # and beta = 1 is the plain gradient, bit for bit
    fast.gradients(x, torch.Generator().manual_seed(5))
    plain = {k: v.clone() for k, v in fast.named_gradients().items()}
    fast.gradients(x, torch.Generator().manual_seed(5), kl_weight=1.0)
    assert all(torch.equal(plain[k], v) for k, v in fast.named_gradients().items())


def test_warmup_run_reports_the_true_bound(tmp_path):
    run = aevb.train(
        "digits", tmp_path / "w", budget=6000, kl_warmup=10_000, eval_per_decade=2, **SMALL
    )
    recs = run.metrics
    weights = [r["kl_weight"] for r in recs]
    assert weights[0] == 0.0 and all(0 < w < 1 for w in weights[1:])
    assert weights == sorted(weights)
    assert recs[-1]["kl_weight"] == pytest.approx(6000 / 10_000)
    cfg = runs.read_config(tmp_path / "w")
    assert cfg["train"]["kl_warmup"] == 10_000
    # the recorded bounds are the beta = 1 bound of the model at that point
    tcfg = TrainConfig(**{**cfg["train"], "kl_warmup": None})  # a plain config, same seed
    ds = load_dataset("digits")
    tx, sx = torch.from_numpy(ds.train), torch.from_numpy(ds.test)
    model = aevb.load(tmp_path / "w")
    t = Trainer(AEVB(model, tcfg, len(tx), 0.02), tx, sx, tcfg, progress=False)
    t.step_count = 6000 // tcfg.batch_size
    again = t.evaluate()
    assert again["test_bound"] == recs[-1]["test_bound"]
    assert again["train_bound"] == recs[-1]["train_bound"]
    # the figure is marked
    assert "KL warm-up" in api.kl_mark(cfg["train"])
    # and the value a weighted step returns is the beta = 1 bound of its minibatch
    m = _model()
    c = TrainConfig(kl_beta=0.0, lr=0.01, estimator="B", engine="autograd")
    alg = AEVB(m, c, 100, 0.01)
    x = torch.rand(8, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) > 0.5
    with torch.no_grad():
        expect = float(m.elbo(x.double(), "B", 1, torch.Generator().manual_seed(9)).mean())
    got = float(alg.step(x.double(), torch.Generator().manual_seed(9)))
    assert got == pytest.approx(expect, rel=1e-12)


def test_kl_weight_is_rejected_where_it_does_not_apply():
    with pytest.raises(ConfigError, match="kl"):
        TrainConfig(algorithm="aevb", estimator="iwae", kl_beta=0.5)
    with pytest.raises(ConfigError, match="kl-beta"):
        TrainConfig(kl_beta=-1.0)


# --------------------------------------------------------------------------- init and precision


def test_decoder_bias_init_starts_at_the_data_mean():
    train_x = torch.from_numpy(load_dataset("digits").train)
    mcfg = ModelConfig(x_dim=64, latent_dim=3, hidden=30)
    tcfg = TrainConfig(decoder_bias_init=True, lr=0.02)
    model = api._build_model(mcfg, tcfg, torch.device("cpu"), train_x)
    bias = model.decoder.net.head.bias.detach().double()
    mean = train_x.double().mean(0)
    np.testing.assert_allclose(bias, torch.logit(mean.clamp(1e-3, 1 - 1e-3)), atol=1e-6)
    assert torch.equal(
        model.encoder.net.head.bias, api._build_model(mcfg, tcfg, "cpu").encoder.net.head.bias
    )
    plain = aevb.train("digits", budget=100, **SMALL)
    init = aevb.train("digits", budget=100, decoder_bias_init=True, **SMALL)
    assert init.config["train"]["decoder_bias_init"] is True
    # at initialisation the decoder predicts the mean image: a much better bound than 0.5 pixels
    assert init.metrics[0]["test_bound"] > plain.metrics[0]["test_bound"] + 5.0


def test_bf16_on_cpu_is_a_clear_error(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "b"), "--precision", "bf16", "--device", "cpu"]
    assert main([*argv, "--quiet"]) == 2
    (line,) = _errors(capsys)
    assert "bf16" in line and "cuda" in line.lower()
    assert not (tmp_path / "b" / runs.CONFIG).exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_trains_on_cuda():
    run = aevb.train("digits", budget=5000, precision="bf16", device="cuda", **SMALL)
    assert run.metrics[-1]["test_bound"] > run.metrics[0]["test_bound"] + 3
    assert isinstance(run.metrics[-1]["test_bound"], float)


# --------------------------------------------------------------------------- tabular data


def _write_csv(path: Path, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    h = rng.normal(170, 10, n)
    cols = np.stack([h, 0.5 * h + rng.normal(0, 3, n), rng.normal(50, 20, n), np.arange(n)], 1)
    with open(path, "w") as f:
        f.write("height,weight,income,id\n")
        for row in cols:
            f.write(",".join(f"{v:.4f}" for v in row) + "\n")
    return cols


def test_csv_standardisation_round_trips(tmp_path):
    csv = tmp_path / "people.csv"
    raw = _write_csv(csv)
    out = tmp_path / "tab"
    aevb.train(str(csv), out, columns=["income", "height"], standardize=True, budget=3000, **SMALL)
    cfg = runs.read_config(out)
    assert cfg["model"]["likelihood"] == "gaussian-linear"
    assert cfg["data"]["column_names"] == ["income", "height"]
    mean, std = (
        np.array(cfg["data"]["standardize"]["mean"]),
        np.array(cfg["data"]["standardize"]["std"]),
    )
    sel = raw[:, [2, 0]]
    train_rows = load_dataset(str(csv), columns=["income", "height"]).train.astype(np.float64)
    np.testing.assert_allclose(mean, train_rows.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, train_rows.std(0), rtol=1e-9)
    assert abs(mean[1] - 170) < 2 and abs(std[0] - 20) < 3
    # encode standardises the file's rows; decode undoes it
    model = aevb.load(out)
    api.encode(out, tmp_path / "z.npz", data=str(csv), split="train")
    with np.load(tmp_path / "z.npz") as z:
        mu = z["mu"]
    x_std = (train_rows - mean) / std
    expect_mu, _ = model.encode(torch.from_numpy(x_std.astype(np.float32)))
    np.testing.assert_allclose(mu, expect_mu.detach().numpy(), atol=1e-5)
    dec = api.decode(out, mu, tmp_path / "x.csv")
    model_space = model.decode_mean(torch.from_numpy(mu)).detach().numpy()
    np.testing.assert_allclose(dec, model_space * std + mean, rtol=1e-5)
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert lines[0] == "income,height" and len(lines) == len(mu) + 1
    np.testing.assert_allclose(np.loadtxt(tmp_path / "x.csv", delimiter=",", skiprows=1), dec,
                               rtol=1e-5)  # fmt: skip
    # the reconstructions are in data units: heights near 170, not near 0
    assert abs(dec[:, 1].mean() - 170) < 10
    assert sel.shape[1] == 2
    # a sample written as CSV is in data units too
    api.sample(out, 50, tmp_path / "s.csv")
    s = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert s.shape == (50, 2) and abs(s[:, 1].mean() - 170) < 15


def test_csv_column_errors(tmp_path):
    csv = tmp_path / "people.csv"
    _write_csv(csv, 50)
    with pytest.raises(DataError, match="did you mean 'height'"):
        load_dataset(str(csv), columns=["heigth"])
    with pytest.raises(DataError, match="Bernoulli"):  # raw columns, no --standardize
        aevb.train(str(csv), columns=["height"], budget=100, **SMALL)
    with pytest.raises(ConfigError, match="--columns"):
        load_dataset("digits", columns=["0"])
    ds = load_dataset(str(csv), columns=[3, "height"], validation=True)
    assert ds.column_names == ["id", "height"] and len(ds.split("valid")) > 0
    assert len(ds.train) + len(ds.split("valid")) + len(ds.test) == 50


# --------------------------------------------------------------------------- tracking and plot


def test_crc32c_known_value():
    assert tracking.crc32c(b"123456789") == 0xE3069283


def test_tensorboard_events_hold_the_metrics(tmp_path):
    run = aevb.train("digits", tmp_path / "tb", budget=2000, tensorboard=True, **SMALL)
    (events_file,) = (tmp_path / "tb" / tracking.TENSORBOARD_DIR).glob("events.out.tfevents.*")
    events = tracking.read_events(events_file)
    assert events[0]["file_version"] == "brain.Event:2"
    scal = {e["step"]: e["scalars"] for e in events if e["scalars"]}
    assert sorted(scal) == [r["samples_seen"] for r in run.metrics]
    for r in run.metrics:
        s = scal[r["samples_seen"]]
        assert s["bound/test"] == pytest.approx(r["test_bound"], rel=1e-6)
        assert s["train/learning_rate"] == pytest.approx(0.02)
    pairs = zip(run.metrics[:-1], run.metrics[1:], strict=True)
    timed = [b for a, b in pairs if b["seconds"] > a["seconds"]]
    assert timed and all("train/samples_per_second" in scal[r["samples_seen"]] for r in timed)
    imgs = [e["images"] for e in events if e["images"]]
    assert {"samples", "reconstructions"} <= {k for i in imgs for k in i}
    assert all(v["png"][:8] == b"\x89PNG\r\n\x1a\n" for i in imgs for v in i.values())
    # TensorBoard's own reader agrees, where it is installed
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    ea = ea_mod.EventAccumulator(str(events_file.parent))
    ea.Reload()
    got = [(e.step, e.value) for e in ea.Scalars("bound/test")]
    want = [(r["samples_seen"], r["test_bound"]) for r in run.metrics]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(got, want, strict=True))
    assert "samples" in ea.Tags()["images"]


def test_damaged_event_file_is_detected(tmp_path):
    w = tracking.EventWriter(tmp_path)
    w.add_scalars(5, {"a": 1.5})
    data = bytearray(w.path.read_bytes())
    assert tracking.read_events(w.path)[1]["scalars"] == {"a": 1.5}
    data[-6] ^= 0xFF
    w.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        tracking.read_events(w.path)


def test_plot_several_runs_from_metrics_alone(tmp_path, overfit_run, capsys):
    only = tmp_path / "copy"
    only.mkdir()
    (only / runs.METRICS).write_bytes((overfit_run / runs.METRICS).read_bytes())
    out = tmp_path / "curves.png"
    assert main(["plot", str(overfit_run), str(only), "--out", str(out), "--labels", "a,b"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "nope"), "--out", str(out)]) == 2
    (line,) = _errors(capsys)
    assert "metrics.jsonl" in line
    with pytest.raises(ConfigError, match="labels"):
        aevb.plot([overfit_run], out, labels=["a", "b"])
    # --since keeps the end of the runs; past the last evaluation it is one clear error
    last = runs.read_metrics(overfit_run)[-1]["samples_seen"]
    zoom = tmp_path / "zoom.png"
    assert main(["plot", str(overfit_run), "--out", str(zoom), "--since", str(last // 2)]) == 0
    assert zoom.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and zoom.read_bytes() != out.read_bytes()
    capsys.readouterr()
    assert main(["plot", str(overfit_run), "--out", str(zoom), "--since", str(last + 1)]) == 2
    (line,) = _errors(capsys)
    assert "no evaluation at or after" in line and "smaller --since" in line
    with pytest.raises(RunError):
        aevb.load(only, which="best")
