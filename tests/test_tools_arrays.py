"""The Python tools return arrays (issue 17): the right values, not just the right shapes; they
take data as arrays; and they write a file only when given ``out=``, holding what they return."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import aevb
from aevb import figures
from aevb.data import load_dataset
from aevb.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def run(reference_run):
    """A trained 2-D Bernoulli model on the digits (8 x 8 images), read-only."""
    return reference_run


@pytest.fixture(scope="module")
def model(run):
    return aevb.load(run)


@pytest.fixture(scope="module")
def test_x():
    return load_dataset("digits").test


def test_sample_is_the_models_sample_with_the_same_generator(run, model, tmp_path):
    s = aevb.sample(run, 7, seed=3)
    assert isinstance(s, np.ndarray) and s.shape == (7, 64) and s.dtype == np.float32
    np.testing.assert_array_equal(s, model.sample(7, torch.Generator().manual_seed(3)).numpy())
    assert not np.array_equal(s, aevb.sample(run, 7, seed=4))
    np.testing.assert_array_equal(aevb.sample(run, 7, seed=3, out=tmp_path / "s.npy"), s)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), s)


def test_encode_returns_the_encoders_output(run, model, test_x, tmp_path):
    enc = aevb.encode(run, out=tmp_path / "z.npz")  # the run's test split by default
    with torch.no_grad():
        mu, logvar = (p.numpy() for p in model.encode(test_x))
    np.testing.assert_array_equal(enc.mu, mu)
    np.testing.assert_array_equal(enc.logvar, logvar)
    assert list(enc.params) == ["mu", "logvar"]
    np.testing.assert_array_equal(enc.center, mu)  # the Gaussian posterior's center is its mean
    with np.load(tmp_path / "z.npz") as f:
        np.testing.assert_array_equal(f["mu"], enc.mu)
        np.testing.assert_array_equal(f["logvar"], enc.logvar)
    # the same data as an array, as rows or as 8 x 8 images
    for x in (test_x[:20], test_x[:20].reshape(20, 8, 8), torch.from_numpy(test_x[:20])):
        np.testing.assert_array_equal(aevb.encode(run, x=x).mu, mu[:20])
    # an array is binarized as the split is (one fixed draw)
    dyn = aevb.encode(run, binarize="dynamic").mu
    assert not np.array_equal(dyn, mu)
    np.testing.assert_array_equal(aevb.encode(run, x=test_x, binarize="dynamic").mu, dyn)
    with pytest.raises(AttributeError, match=r"no 'mu'; its parameters are \['loc'\]"):
        _ = aevb.api.Encoding({"loc": mu}, mu).mu


def test_reconstruct_is_the_decoder_mean_at_the_posterior_mean(run, model, test_x, tmp_path):
    rec = aevb.reconstruct(run, x=test_x[:5], out=tmp_path / "r.npy")
    np.testing.assert_array_equal(rec.x, test_x[:5])
    with torch.no_grad():
        expect = model.decode_mean(model.encode(test_x[:5])[0]).numpy()  # Bernoulli: sigmoid
    np.testing.assert_allclose(rec.reconstruction, expect, atol=1e-7)
    pairs = np.load(tmp_path / "r.npy")  # data and reconstruction, row by row
    np.testing.assert_array_equal(pairs[0::2], rec.x)
    np.testing.assert_array_equal(pairs[1::2], rec.reconstruction)
    split = aevb.reconstruct(run)  # the first 50 rows of the test split
    assert split.x.shape == split.reconstruction.shape == (50, 64)
    np.testing.assert_array_equal(split.x, test_x[:50])
    np.testing.assert_allclose(split.reconstruction[:5], rec.reconstruction, atol=1e-7)
    assert aevb.reconstruct(run, x=test_x[:70]).x.shape == (70, 64)  # all of x by default
    assert aevb.reconstruct(run, n=3).x.shape == (3, 64)


def test_manifold_decodes_the_figure_grid(run, model, tmp_path):
    m = aevb.manifold(run, 4, out=tmp_path / "m.npy")
    np.testing.assert_array_equal(m.latents, figures.manifold_latents(4).numpy())
    with torch.no_grad():
        expect = model.decode_mean(figures.manifold_latents(4)).numpy()
    np.testing.assert_array_equal(m.decoded, expect)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), m.decoded)
    same = aevb.manifold(run, 4, model=model)  # a loaded model is used as it is
    np.testing.assert_array_equal(same.decoded, m.decoded)


def test_interpolation_paths_run_between_the_points_decodes(run, model, test_x, tmp_path):
    x = test_x[:30]
    res = aevb.interpolate(run, x=x, pairs=2, steps=5, seed=1, out=tmp_path / "p.npz")
    assert res.methods == ("linear", "spherical")
    assert res.decoded.shape == (2, 2, 5, 64) and res.latents.shape == (2, 2, 5, 2)
    assert res.index.shape == (4,) and res.index.max() < 30
    with torch.no_grad():
        mu = model.encode(x[res.index])[0]
        ends = model.decode_mean(mu).numpy()
    for p in range(2):
        for k in range(2):
            np.testing.assert_allclose(res.latents[p, k, 0], mu[2 * p].numpy(), atol=1e-6)
            np.testing.assert_allclose(res.latents[p, k, -1], mu[2 * p + 1].numpy(), atol=1e-6)
            np.testing.assert_allclose(res.decoded[p, k, 0], ends[2 * p], atol=1e-6)
            np.testing.assert_allclose(res.decoded[p, k, -1], ends[2 * p + 1], atol=1e-6)
    with np.load(tmp_path / "p.npz") as f:
        np.testing.assert_array_equal(f["x"], res.decoded)
        np.testing.assert_array_equal(f["z"], res.latents)
        np.testing.assert_array_equal(f["index"], res.index)
    with pytest.raises(ConfigError, match="x has 3"):
        aevb.interpolate(run, x=x[:3], pairs=2)


def test_decode_takes_arrays_and_encodings(run, model, test_x, tmp_path):
    enc = aevb.encode(run, x=test_x[:6])
    dec = aevb.decode(run, enc, out=tmp_path / "d.npy")
    with torch.no_grad():
        np.testing.assert_array_equal(dec, model.decode_mean(torch.from_numpy(enc.mu)).numpy())
    np.testing.assert_array_equal(aevb.decode(run, enc.mu), dec)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), dec)


def test_no_file_is_written_without_out(run, test_x, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    aevb.sample(run, 4)
    aevb.manifold(run, 3)
    aevb.reconstruct(run, n=4)
    enc = aevb.encode(run, x=test_x[:4])
    aevb.decode(run, enc.mu)
    aevb.interpolate(run, pairs=1, steps=3)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((3, 10)), r"shape \(3, 10\); this model takes \(N, 64\) rows or \(N, 8, 8\)"),
        (np.zeros(64), r"x\[None\]"),
        (np.zeros((0, 64)), "no rows"),
        (np.full((2, 64), np.nan), "row 0, column 0 is nan"),
        (np.full((2, 64), 2.0), r"needs \[0, 1\]"),
        (np.array([["a"] * 64]), "numeric"),
        ([[0.0] * 64, [0.0]], "not an array"),
    ],
)
def test_bad_arrays_are_data_errors_naming_the_problem(run, x, match):
    with pytest.raises(DataError, match=match):
        aevb.encode(run, x=x)


def test_data_given_twice_is_refused(run, test_x):
    with pytest.raises(ConfigError, match="not both"):
        aevb.reconstruct(run, x=test_x[:4], split="train")
