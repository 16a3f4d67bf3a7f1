"""The command line end to end, and bad input: exit code 2 with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb import runs
from aevb.cli import main

SMALL = ["--latent-dim", "2", "--hidden", "40", "--lr", "0.02", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), "--budget", "20000", *SMALL]) == 0
    return out


def _errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_train_writes_a_complete_run(run_dir):
    for name in (runs.CONFIG, runs.MODEL, runs.STATE, runs.METRICS):
        assert (run_dir / name).is_file()
    for fig in ("curves.png", "samples.png", "reconstructions.png", "manifold.png"):
        assert (run_dir / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((run_dir / runs.CONFIG).read_text())
    assert cfg["model"]["latent_dim"] == 2 and cfg["model"]["image_shape"] == [8, 8]
    assert cfg["train"]["lr"] == 0.02 and cfg["data"]["n_train"] == 1500


def test_evaluate_json(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["points"] == 297 and res["split"] == "test"
    assert -45 < res["bound"] < -20 and 0 < res["bound_se"] < 1
    assert main(["evaluate", str(run_dir), "--split", "train", "--json", "--samples", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["points"] == 1500


def test_sample_manifold_reconstruct_encode(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "--n", "16", "--out", str(tmp_path / "s.npy")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 's.npy'}\n"  # the file written
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (16, 64) and s.min() >= 0 and s.max() <= 1
    assert main(["sample", str(run_dir), "--n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["manifold", str(run_dir), "--grid", "5", "--out", str(tmp_path / "m.npy")]) == 0
    m = np.load(tmp_path / "m.npy")
    assert m.shape == (25, 64)
    assert main(["reconstruct", str(run_dir), "--out", str(tmp_path / "r.png")]) == 0
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "z.npy")]) == 0
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (297, 4)  # [mu (2), logvar (2)] per test image
    assert main(["encode", str(run_dir), "--split", "train", "--out", str(tmp_path / "z.npz")]) == 0
    with np.load(tmp_path / "z.npz") as f:
        assert f["mu"].shape == (1500, 2) and f["logvar"].shape == (1500, 2)
    # The manifold grid decodes the inverse-CDF grid: corners differ, the picture is not constant.
    assert np.abs(m[0] - m[-1]).max() > 0.05


def test_encode_matches_the_python_api(run_dir, tmp_path):
    import aevb

    main(["encode", str(run_dir), "--out", str(tmp_path / "z.npy")])
    z = np.load(tmp_path / "z.npy")
    x = aevb.data.load_dataset("digits").test
    mu, logvar = aevb.load(run_dir).encode(x)
    assert np.allclose(z[:, :2], mu.detach().numpy()) and np.allclose(
        z[:, 2:], logvar.detach().numpy()
    )


def _write(path: Path, arr: np.ndarray) -> str:
    np.save(path, arr)
    return str(path)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "no such file"),
        ("shape", "expected a 2-d array"),
        ("nan", "is nan"),
        ("range", "needs [0, 1]"),
        ("nonbinary", "not binary"),
        ("truncated", "cannot read"),
    ],
)
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, case, expect):
    rng = np.random.default_rng(0)
    extra: list[str] = []
    if case == "missing":
        data = str(tmp_path / "nope.npy")
    elif case == "shape":
        data = _write(tmp_path / "x.npy", rng.random((4, 3, 2, 2, 2)))
    elif case == "nan":
        a = rng.random((50, 6))
        a[7, 3] = np.nan
        data = _write(tmp_path / "x.npy", a)
    elif case == "range":
        data = _write(tmp_path / "x.npy", rng.random((50, 6)) * 255)
    elif case == "nonbinary":
        data = _write(tmp_path / "x.npy", rng.random((50, 6)))
        extra = ["--binarize", "none"]
    else:
        p = Path(_write(tmp_path / "x.npy", rng.random((50, 6))))
        p.write_bytes(p.read_bytes()[:100])
        data = str(p)
    out = tmp_path / "run"
    code = main(["train", "--data", data, "--out", str(out), "--budget", "100", *SMALL, *extra])
    err = _errors(capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("aevb: error:") and expect in err[0].lower(), err
    assert not (out / runs.CONFIG).exists()


def test_user_csv_and_npz_train(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = (rng.random((120, 6)) < 0.3).astype(float)
    csv = tmp_path / "x.csv"
    csv.write_text("a,b,c,d,e,f\n" + "\n".join(",".join(str(v) for v in r) for r in x))
    assert (
        main(
            [
                "train",
                "--data",
                str(csv),
                "--out",
                str(tmp_path / "c"),
                "--budget",
                "500",
                "--batch-size",
                "20",
                "--binarize",
                "none",
                *SMALL,
            ]
        )
        == 0
    )
    cfg = json.loads((tmp_path / "c" / runs.CONFIG).read_text())
    assert cfg["data"]["n_train"] == 108 and cfg["data"]["n_test"] == 12
    np.savez(tmp_path / "x.npz", train=rng.random((80, 2, 3)), test=rng.random((20, 2, 3)))
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "x.npz"),
                "--out",
                str(tmp_path / "z"),
                "--budget",
                "200",
                "--batch-size",
                "20",
                "--likelihood",
                "gaussian",
                *SMALL,
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "z" / runs.CONFIG).read_text())["model"]["image_shape"] == [2, 3]


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train", "--out", "X", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--out", "X", "--estimator", "C"], "invalid choice"),
        (["train", "--out", "X", "--budget", "-5"], "positive integer"),
        (["train", "--out", "X", "--device", "cuda"], None),
        (["train"], "--out"),
        (["evaluate", "NOPE"], "not a directory"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, expect):
    argv = [str(tmp_path / a) if a in ("X", "NOPE") else a for a in argv]
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = _errors(capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("aevb: error:"), err
    assert expect is None or expect in err[0]
    if "cuda" in argv:
        assert "no CUDA GPU" in err[0] and "--device cpu" in err[0]


def test_run_errors_exit_2(run_dir, tmp_path, capsys):
    assert main(["manifold", str(tmp_path), "--out", str(tmp_path / "m.png")]) == 2
    # a 20-D model has no dimension 20 to vary
    other = tmp_path / "r20"
    main(
        [
            "train",
            "--out",
            str(other),
            "--budget",
            "200",
            "--hidden",
            "10",
            "--lr",
            "0.02",
            "--quiet",
        ]
    )
    capsys.readouterr()
    assert (
        main(["manifold", str(other), "--dims", "0", "20", "--out", str(tmp_path / "m.png")]) == 2
    )
    assert "--dims takes two different dimensions from 0 to 19" in _errors(capsys)[0]
    # a truncated weights file is named, never a traceback
    w = other / runs.MODEL
    w.write_bytes(w.read_bytes()[:50])
    assert main(["sample", str(other), "--out", str(tmp_path / "s.png")]) == 2
    assert "model.safetensors" in _errors(capsys)[0]
    # data of the wrong dimension for the model
    np.save(tmp_path / "w.npy", np.random.default_rng(0).random((30, 7)))
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "w.npy")]) == 2
    assert "columns" in _errors(capsys)[0]
    # an existing run is never overwritten by a new one
    before = (run_dir / runs.MODEL).read_bytes()
    assert main(["train", "--out", str(run_dir), "--budget", "100", *SMALL]) == 2
    assert "--resume" in _errors(capsys)[0]
    assert (run_dir / runs.MODEL).read_bytes() == before


def test_installed_command_runs(tmp_path):
    """The `aevb` entry point (as a user types it), in its own process."""
    exe = Path(sys.executable).with_name("aevb")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "aevb"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    ok = subprocess.run([*cmd, "--version"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("aevb ")
    bad = subprocess.run([*cmd, "train", "--nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
