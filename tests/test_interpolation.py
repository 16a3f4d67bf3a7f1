"""Latent interpolation (``aevb interpolate``): linear and spherical paths between the posterior
means of pairs of points, written as arrays or a figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import aevb
from aevb import api
from aevb.data import load_dataset
from aevb.errors import ConfigError


def test_interpolation_endpoints_decode_the_points_means(tmp_path, overfit_run):
    out = tmp_path / "paths.npz"
    res = api.interpolate(overfit_run, pairs=3, steps=6, split="test", seed=1, out=out)
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
    np.testing.assert_array_equal(res.decoded, x)  # the arrays returned are those written
    np.testing.assert_array_equal(res.latents, z)
    np.testing.assert_array_equal(res.index, index)
    assert res.methods == ("linear", "spherical")
    png = tmp_path / "paths.png"
    api.interpolate(overfit_run, pairs=2, steps=5, out=png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="--pairs"):
        api.interpolate(overfit_run, pairs=500, split="test", out=tmp_path / "p.png")
