"""Tabular data: CSV files with named columns (``--columns``), standardised (``--standardize``)
for training and mapped back to data units by encode, decode and sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import aevb
from aevb import api, runs
from aevb.data import load_dataset
from aevb.errors import ConfigError, DataError


def _write_csv(path: Path, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    h = rng.normal(170, 10, n)
    cols = np.stack([h, 0.5 * h + rng.normal(0, 3, n), rng.normal(50, 20, n), np.arange(n)], 1)
    with open(path, "w") as f:
        f.write("height,weight,income,id\n")
        for row in cols:
            f.write(",".join(f"{v:.4f}" for v in row) + "\n")
    return cols


def test_csv_standardisation_round_trips(tmp_path, small_run):
    csv = tmp_path / "people.csv"
    raw = _write_csv(csv)
    out = tmp_path / "tab"
    small_run(out, data=str(csv), columns=["income", "height"], standardize=True, budget=3000)
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
    enc = api.encode(out, data=str(csv), split="train", out=tmp_path / "z.npz")
    with np.load(tmp_path / "z.npz") as z:
        mu = z["mu"]
    np.testing.assert_array_equal(enc.mu, mu)
    # rows given as an array are in data units too: standardised by the run's statistics
    np.testing.assert_allclose(api.encode(out, x=train_rows).mu, mu, atol=1e-6)
    rec = api.reconstruct(out, x=train_rows[:5])
    np.testing.assert_allclose(rec.x, train_rows[:5], rtol=1e-5)
    assert abs(rec.reconstruction[:, 1].mean() - 170) < 15
    x_std = (train_rows - mean) / std
    expect_mu, _ = model.encode(torch.from_numpy(x_std.astype(np.float32)))
    np.testing.assert_allclose(mu, expect_mu.detach().numpy(), atol=1e-5)
    dec = api.decode(out, mu, out=tmp_path / "x.csv")
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
    drawn = api.sample(out, 50, out=tmp_path / "s.csv")
    s = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(drawn, s, rtol=1e-5)
    assert s.shape == (50, 2) and abs(s[:, 1].mean() - 170) < 15


def test_csv_column_errors(tmp_path, small_run):
    csv = tmp_path / "people.csv"
    _write_csv(csv, 50)
    with pytest.raises(DataError, match="did you mean 'height'"):
        load_dataset(str(csv), columns=["heigth"])
    with pytest.raises(DataError, match="Bernoulli"):  # raw columns, no --standardize
        small_run(data=str(csv), columns=["height"], budget=100)
    with pytest.raises(ConfigError, match="--columns"):
        load_dataset("digits", columns=["0"])
    ds = load_dataset(str(csv), columns=[3, "height"], validation=True)
    assert ds.column_names == ["id", "height"] and len(ds.split("valid")) > 0
    assert len(ds.train) + len(ds.split("valid")) + len(ds.test) == 50
