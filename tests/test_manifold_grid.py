"""The manifold's grid over the data's codes, its dimensions for N_z > 2, and model snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CHECKPOINTED_RUN

import aevb
from aevb import figures, runs
from aevb.cli import main
from aevb.errors import ConfigError, RunError


@pytest.fixture(scope="module")
def run(reference_run):
    """A trained 2-D Bernoulli model on the digits (8 x 8 images), read-only."""
    return reference_run


@pytest.fixture(scope="module")
def run5(tmp_path_factory, small_run):
    """A 5-D model that kept snapshots at 500, 1 000 and 1 003 samples (of 2 000). Read-only."""
    out = tmp_path_factory.mktemp("nz5") / "run"
    small_run(out, latent_dim=5, snapshots=[1003, 500, 1000], eval_per_decade=2, seed=3)
    return out


def test_codes_grid_spans_the_quantiles_of_the_training_codes(run):
    k = 5
    m = aevb.manifold(run, k, grid_over="codes")
    centers = aevb.encode(run, split="train").center  # an independent path to the same codes
    lo, hi = np.quantile(centers.astype(np.float64), [0.01, 0.99], axis=0)
    step = (hi - lo) / k
    assert m.grid_over == "codes" and m.dims == (0, 1)
    # every tile lies in the box; the corners are the outer cell centers (z2 grows upwards)
    assert np.all(m.latents >= lo - 1e-5) and np.all(m.latents <= hi + 1e-5)
    np.testing.assert_allclose(m.latents[0], [lo[0] + step[0] / 2, hi[1] - step[1] / 2], rtol=1e-5)
    np.testing.assert_allclose(m.latents[-1], [hi[0] - step[0] / 2, lo[1] + step[1] / 2], rtol=1e-5)
    with torch.no_grad():
        expect = aevb.load(run).decode_mean(torch.from_numpy(m.latents)).numpy()
    np.testing.assert_array_equal(m.decoded, expect)
    wide = aevb.manifold(run, k, grid_over="codes", quantiles=(0.0, 1.0))
    assert np.ptp(wide.latents, 0).min() > np.ptp(m.latents, 0).min()
    prior = aevb.manifold(run, k)  # the paper's grid stays the default
    np.testing.assert_array_equal(prior.latents, figures.manifold_latents(k).numpy())


def test_codes_grid_differs_from_the_prior_grid_where_the_codes_do_not_fill_the_prior(run):
    centers = aevb.encode(run, split="train").center
    codes = aevb.manifold(run, 4, grid_over="codes").latents
    spread = np.ptp(codes, 0) / np.ptp(figures.manifold_latents(4).numpy(), 0)
    # the codes' 1-99 % box is not the prior's: its width follows the codes' own spread
    np.testing.assert_allclose(
        np.ptp(codes, 0) * 4 / 3,
        np.diff(np.quantile(centers.astype(np.float64), [0.01, 0.99], axis=0), axis=0)[0],
        rtol=1e-5,
    )
    assert not np.allclose(spread, 1.0, atol=0.05)


def test_higher_dimensional_manifold_varies_the_two_with_the_largest_kl(run5):
    kl = runs.read_metrics(run5)[-1]["train_kl_per_dim"]
    top = sorted(np.argsort(kl)[-2:].tolist())
    m = aevb.manifold(run5, 3)
    assert m.dims == tuple(top) and m.latents.shape == (9, 5)
    rest = [d for d in range(5) if d not in top]
    assert np.all(m.latents[:, rest] == 0)
    np.testing.assert_array_equal(m.latents[:, top], figures.manifold_latents(3).numpy())
    chosen = aevb.manifold(run5, 3, dims=(4, 1), grid_over="codes")
    assert chosen.dims == (4, 1) and np.all(chosen.latents[:, [0, 2, 3]] == 0)
    for bad in [(0, 0), (0, 5), (-1, 2), (1,)]:
        with pytest.raises(ConfigError, match="--dims"):
            aevb.manifold(run5, 3, dims=bad)
    with pytest.raises(ConfigError, match="--grid-over"):
        aevb.manifold(run5, 3, grid_over="codez")


def test_manifold_command_names_the_varied_dimensions(run5, tmp_path, capsys):
    out = tmp_path / "m.png"
    argv = ["manifold", str(run5), "--grid", "3", "--grid-over", "codes", "--out", str(out)]
    assert main(argv) == 0
    top = aevb.manifold(run5, 3).dims
    assert f"varied z{top[0] + 1} and z{top[1] + 1}" in capsys.readouterr().out
    assert main(["manifold", str(run5), "--dims", "0", "3", "--out", str(out)]) == 0
    assert "varied z1 and z4" in capsys.readouterr().out and out.is_file()
    assert main(["manifold", str(run5), "--dims", "0", "7", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dims takes two different dimensions from 0 to 4" in err[0]


def test_snapshots_keep_the_model_as_it_was_at_each_count(run5, tmp_path, small_run):
    assert runs.snapshots(run5) == [500, 1000, 1003]
    # batches of 100: the first step at or past 1 003 samples is at 1 100; the file says so
    _, meta = runs.load_run_tensors(run5, runs.snapshot_name(1003))
    assert meta["samples_seen"] == 1100
    # the snapshot at 1 000 is the model of the same run stopped at 1 000 samples
    short = small_run(tmp_path / "short", latent_dim=5, budget=1000, eval_per_decade=2, seed=3)
    snap = aevb.load(run5, which=1000)
    for name, p in snap.state_dict().items():
        assert torch.equal(p, short.model.state_dict()[name]), name
    early = aevb.load(run5, which=500).state_dict()
    assert any(not torch.equal(early[k], v) for k, v in snap.state_dict().items())
    assert aevb.encode(run5, split="test", which="1000").center.shape[1] == 5
    assert main(["evaluate", str(run5), "--which", "1000", "--quiet"]) == 0
    assert main(["evaluate", str(run5), "--which", "999", "--quiet"]) == 2
    with pytest.raises(RunError, match="no snapshot at 7 samples; it kept 500, 1,000, 1,003"):
        aevb.load(run5, which=7)
    with pytest.raises(ConfigError, match="unknown model"):
        aevb.load(run5, which="newest")


def test_snapshots_survive_a_resume_and_are_checked_as_options(tmp_path, small_run):
    out = tmp_path / "r"
    kw = dict(CHECKPOINTED_RUN, snapshots=[600, 3000], budget=1500)
    small_run(out, **kw)
    assert runs.snapshots(out) == [600]
    aevb.train(resume=out, budget=4000, progress=False, draw_figures=False)
    assert runs.snapshots(out) == [600, 3000]
    assert runs.verify_run(out)  # every file, snapshots included, matches the manifest
    with pytest.raises(ConfigError, match="--snapshots"):
        small_run(tmp_path / "bad", snapshots=[0])


def test_snapshots_flag_takes_counts_in_any_order(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--out", str(out), "--budget", "1000", "--hidden", "10", "--lr", "0.02"]
    assert main([*argv, "--latent-dim", "2", "--snapshots", "6e2,3e2", "--quiet"]) == 0
    assert runs.read_config(out)["train"]["snapshots"] == [300, 600]
    assert runs.snapshots(out) == [300, 600]
    with pytest.raises(SystemExit) as e:  # argparse's own exit
        main([*argv[:2], str(tmp_path / "x"), "--snapshots", "1e3,zero", "--quiet"])
    assert e.value.code == 2
    assert "--snapshots" in capsys.readouterr().err
