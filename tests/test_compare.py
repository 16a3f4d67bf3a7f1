"""`aevb evaluate --per-point` and `aevb compare`: each point's values on disk, and two models
compared on the same points with the paired standard error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import aevb
from aevb.api.comparing import read_per_point
from aevb.cli import main
from aevb.data import load_dataset
from aevb.errors import ConfigError, DataError

KW = dict(points=40, spread=True, iwae_samples=5, marginal="is", importance_samples=50, workers=1)


@pytest.fixture(scope="module")
def two(tmp_path_factory, reference_run, base_run):
    """Two models of the digits evaluated on the same 40 test points, each with its file."""
    d = tmp_path_factory.mktemp("cmp")
    out = []
    for name, run in (("a", reference_run), ("b", base_run)):
        res = aevb.evaluate(run, per_point=d / f"{name}.csv", **KW)
        out.append((res, d / f"{name}.csv"))
    return out


def _se(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / math.sqrt(len(v)))


def test_per_point_file_holds_the_values_behind_each_mean(two):
    n_test = len(load_dataset("digits").test)
    for res, path in two:
        assert res["per_point"] == str(path)
        header = path.read_text().splitlines()[0]
        assert header == "index,bound,reconstruction,kl,iwae_bound,log_likelihood_is"
        cols = read_per_point(path)
        # --points 40 --spread: 40 points evenly spaced through the test split, by their index
        assert np.array_equal(cols["index"], (np.arange(40) * n_test) // 40)
        marginal = res["marginal"]["is"]
        for column, mean, se in (
            ("bound", res["bound"], res["bound_se"]),
            ("kl", res["kl"], res["kl_se"]),
            ("iwae_bound", res["iwae_bound"], res["iwae_bound_se"]),
            ("log_likelihood_is", marginal["log_likelihood"], marginal["se"]),
        ):
            assert cols[column].mean() == pytest.approx(mean, abs=1e-5), column
            assert _se(cols[column]) == pytest.approx(se, rel=1e-4), column
        np.testing.assert_allclose(cols["bound"], cols["reconstruction"] - cols["kl"], atol=1e-3)


def test_compare_pairs_the_points(two):
    (ra, a), (rb, b) = two
    r = aevb.compare(a, b)
    assert r["column"] == "log_likelihood_is" and r["points"] == 40
    la, lb = read_per_point(a)["log_likelihood_is"], read_per_point(b)["log_likelihood_is"]
    assert r["a_mean"] == pytest.approx(ra["marginal"]["is"]["log_likelihood"], abs=1e-5)
    assert r["b_mean"] == pytest.approx(rb["marginal"]["is"]["log_likelihood"], abs=1e-5)
    assert r["difference"] == pytest.approx(r["a_mean"] - r["b_mean"], abs=1e-9)
    assert r["difference_se"] == pytest.approx(_se(la - lb), rel=1e-9)
    assert r["independent_se"] == pytest.approx(math.hypot(_se(la), _se(lb)), rel=1e-9)
    # two models of the same digits find the same points hard: pairing removes that spread
    assert np.corrcoef(la, lb)[0, 1] > 0.5
    assert r["difference_se"] < 0.7 * r["independent_se"]
    bound = aevb.compare(a, b, column="bound")
    assert bound["difference"] == pytest.approx(ra["bound"] - rb["bound"], abs=1e-5)
    same = aevb.compare(a, a)
    assert same["difference"] == 0.0 and same["difference_se"] == 0.0


def test_compare_refuses_what_cannot_be_paired(two, tmp_path, reference_run, capsys):
    (_, a), (_, b) = two
    fewer = tmp_path / "fewer.csv"
    aevb.evaluate(reference_run, points=30, spread=True, per_point=fewer)
    with pytest.raises(DataError, match="hold different points"):
        aevb.compare(a, fewer)
    with pytest.raises(ConfigError, match="unknown --column 'log_likelihood_hmc': both files"):
        aevb.compare(a, b, column="log_likelihood_hmc")
    with pytest.raises(DataError, match="no such file"):
        aevb.compare(a, tmp_path / "missing.csv")
    broken = tmp_path / "broken.csv"
    lines = a.read_text().splitlines()
    broken.write_text("\n".join([*lines[:5], lines[5].rsplit(",", 1)[0] + ",nan", *lines[6:]]))
    with pytest.raises(DataError, match="line 6 holds a value that is not a finite number"):
        aevb.compare(a, broken)
    broken.write_text("bound\n1.0\n")
    with pytest.raises(DataError, match="not a per-point file"):
        aevb.compare(broken, a)
    assert main(["compare", str(a), str(fewer)]) == 2
    err = capsys.readouterr().err
    assert "hold different points" in err and err.count("\n") == 1


def test_cli_per_point_and_compare(two, reference_run, tmp_path, capsys):
    (_, a), (_, b) = two
    out = tmp_path / "cli.csv"
    argv = ["evaluate", str(reference_run), "--points", "40", "--spread", "--per-point", str(out)]
    assert main(argv) == 0
    assert f"per point: {out}" in capsys.readouterr().out
    assert np.array_equal(read_per_point(out)["bound"], read_per_point(a)["bound"])
    assert main(["compare", str(a), str(b), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r == aevb.compare(a, b)
    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "log_likelihood_is on 40 points (the same in both files)" in text
    assert f"{r['difference']:+.3f} ± {r['difference_se']:.3f} (paired; " in text
    # without log p(x) in one file, the tightest value both hold: the bound
    assert main(["compare", str(a), str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["column"] == "bound"


def test_a_bad_per_point_path_is_refused_before_the_work(
    reference_run, tmp_path, capsys, monkeypatch
):
    """A folder or an unmakeable folder: refused in one line before any estimate is computed."""
    from aevb import marginal

    def not_now(*args, **kwargs):
        raise AssertionError("importance sampling ran before the bad path was refused")

    monkeypatch.setattr(marginal, "importance_sampling", not_now)
    with pytest.raises(ConfigError, match="is a folder; give a file name"):
        aevb.evaluate(reference_run, marginal="is", points=5, per_point=tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    with pytest.raises(ConfigError, match="cannot make its folder"):
        aevb.evaluate(reference_run, points=5, per_point=blocker / "x.csv")
    assert blocker.read_text() == "mine"
    argv = ["evaluate", str(reference_run), "--marginal", "is", "--per-point", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and err.count("\n") == 1
    kept = tmp_path / "kept.csv"
    kept.write_text("old")
    with pytest.raises(ConfigError):  # a failure before the write leaves an existing file alone
        aevb.evaluate(reference_run, points=0, per_point=kept)
    assert kept.read_text() == "old"
