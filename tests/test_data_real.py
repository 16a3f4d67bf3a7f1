"""The real datasets from $AEVB_DATA_DIR: shapes, ranges, known statistics, binarization modes,
and training / evaluation on them end to end (small budgets)."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb import figures
from aevb.algorithms import Algorithm
from aevb.cli import main
from aevb.data import DATASETS, load_dataset
from aevb.data import mnist as mnist_mod
from aevb.data.frey import split_indices
from aevb.data.readers import read_idx
from aevb.errors import DataError
from aevb.model import VAE, ModelConfig
from aevb.training import TrainConfig, Trainer

# Class counts of the official MNIST label files (LeCun et al.; widely tabulated).
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Never touch the network (nor write into the shared folder) from these tests."""
    monkeypatch.setenv("AEVB_OFFLINE", "1")
    monkeypatch.delenv("AEVB_VERIFY", raising=False)


@pytest.fixture(scope="module")
def mnist_test(shared_data_dir):
    return load_dataset("mnist", data_dir=shared_data_dir, splits=("test",))


@pytest.fixture(scope="module")
def binarized(shared_data_dir):
    return load_dataset("binarized-mnist", data_dir=shared_data_dir)


@pytest.fixture(scope="module")
def frey(shared_data_dir):
    return load_dataset("frey", data_dir=shared_data_dir)


def test_registered_names():
    assert {"digits", "mnist", "binarized-mnist", "frey"} <= set(DATASETS)


# --------------------------------------------------------------------------- MNIST


def test_mnist_test_split(mnist_test):
    x = mnist_test.test
    assert x.shape == (10_000, 784) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert mnist_test.image_shape == (28, 28)
    assert mnist_test.default_likelihood == "bernoulli" and mnist_test.default_hidden == 500
    # values are k/255 exactly
    k = x * 255
    assert np.abs(k - np.round(k)).max() < 1e-4
    assert np.bincount(mnist_test.labels["test"]).tolist() == TEST_LABEL_COUNTS
    # the first test digits are 7 2 1 0 4: their images have the most ink where those shapes do
    assert mnist_test.labels["test"][:5].tolist() == [7, 2, 1, 0, 4]
    one = x[2].reshape(28, 28)  # a "1": a vertical stroke, ink concentrated in central columns
    assert one[:, 10:18].sum() > 0.8 * one.sum()


def test_mnist_train_labels_file(shared_data_dir):
    labels, _ = read_idx(shared_data_dir / "mnist" / "train-labels-idx1-ubyte.gz", 1)
    assert np.bincount(labels).tolist() == TRAIN_LABEL_COUNTS


def test_mnist_grey_mean_matches_the_larochelle_murray_draw(mnist_test, binarized):
    """Binarized MNIST's test split is a Bernoulli draw of MNIST's test images: equal means
    within the draw's standard error."""
    p = mnist_test.test.astype(np.float64)
    se = math.sqrt(float((p * (1 - p)).sum())) / p.size
    diff = float(binarized.test.mean(dtype=np.float64)) - float(p.mean())
    assert abs(diff) < 4 * se, (diff, se)


def test_mnist_without_training_images(mnist_test, shared_data_dir, tmp_path, capsys):
    assert mnist_test.test is not None and "train" in mnist_test.missing
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is missing"):
        mnist_test.split("train")
    rc = main(
        ["train", "--data", "mnist", "--data-dir", str(shared_data_dir), "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("aevb: error: ")]
    assert len(lines) == 1, err
    err = lines[0]  # the whole message is on that one line
    assert "train-images-idx3-ubyte.gz" in err and str(shared_data_dir / "mnist") in err
    assert "download" in err
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- binarized MNIST


def test_binarized_mnist(binarized):
    # mean pixels listed in ../shared/data/README.md
    for split, n, mean in (
        ("train", 50_000, 0.13056),
        ("valid", 10_000, 0.13113),
        ("test", 10_000, 0.13251),
    ):
        x = binarized.split(split)
        assert x.shape == (n, 784) and x.dtype == np.float32
        assert abs(float(x.mean(dtype=np.float64)) - mean) < 5e-6
    assert np.isin(binarized.train[:2000], (0.0, 1.0)).all()
    assert binarized.image_shape == (28, 28) and binarized.default_hidden == 500


# --------------------------------------------------------------------------- Frey Face


def test_frey(frey):
    assert frey.train.shape == (1769, 560) and frey.test.shape == (196, 560)
    assert frey.image_shape == (28, 20)
    assert frey.default_likelihood == "gaussian" and frey.default_hidden == 200
    allx = np.concatenate([frey.train, frey.test])
    # ../shared/data/README.md: values 8...238 (as uint8)
    assert round(float(allx.min()) * 255) == 8 and round(float(allx.max()) * 255) == 238
    tr, te = split_indices()
    assert te.tolist()[:3] == [9, 19, 29] and len(te) == 196 and len(tr) == 1769
    assert not set(tr) & set(te)


def test_frey_faces_are_upright(frey):
    """The mean face is left-right symmetric and has its bright forehead at the top."""
    mean = np.concatenate([frey.train, frey.test]).mean(0)
    face = mean.reshape(28, 20)
    assert np.corrcoef(face.ravel(), face[:, ::-1].ravel())[0, 1] > 0.6
    wrong = mean.reshape(20, 28).T  # column-major reading: not a face
    assert np.corrcoef(wrong.ravel(), wrong[:, ::-1].ravel())[0, 1] < 0.3
    blocks = [face[r : r + 4].mean() for r in range(0, 28, 4)]
    assert int(np.argmax(blocks)) == 0  # forehead (rows 0-3) brightest, chin/neck below


# --------------------------------------------------------------------------- binarization


class _Recorder(Algorithm):
    """Records per-pixel sums of each minibatch the Trainer feeds it (no learning)."""

    name = "recorder"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sums: list[torch.Tensor] = []
        self.values: set[float] = set()

    def step(self, x, generator, index=None):
        self.sums.append(x.double().sum(0))
        self.values |= set(torch.unique(x[:50]).tolist())
        return torch.zeros((), device=x.device)


def _epochs(x: np.ndarray, mode: str, epochs: int = 3) -> _Recorder:
    cfg = TrainConfig(batch_size=len(x), epochs=epochs, binarize=mode, lr=0.01, seed=3)
    model = VAE(ModelConfig(x_dim=x.shape[1], latent_dim=2, hidden=4))
    alg = _Recorder(model, cfg, len(x), 0.01)
    Trainer(alg, torch.from_numpy(x), None, cfg, progress=False, evaluate_points=False).run()
    assert len(alg.sums) == epochs
    return alg


@pytest.mark.parametrize("mode", ["dynamic", "static", "grey"])
def test_binarization_modes_on_mnist(mnist_test, mode):
    x = mnist_test.test
    rec = _epochs(x, mode)
    p = torch.from_numpy(x).double()
    grey_sum = p.sum(0)
    var = (p * (1 - p)).sum(0)
    if mode == "grey":
        for s in rec.sums:
            torch.testing.assert_close(s, grey_sum)
        assert len(rec.values) > 2
        return
    assert rec.values <= {0.0, 1.0}
    # column sums are permutation-invariant: equal across epochs only if the draw is the same
    same = [torch.equal(rec.sums[0], s) for s in rec.sums[1:]]
    assert all(same) if mode == "static" else not any(same)
    # every pixel's mean over the 10 000 images matches the grey intensity within 5 standard
    # errors of the Bernoulli draw; pixels that are 0 or 1 everywhere match exactly
    for s in rec.sums:
        det = var == 0
        torch.testing.assert_close(s[det], grey_sum[det])
        z = (s[~det] - grey_sum[~det]) / var[~det].sqrt()
        assert z.abs().max() < 5, float(z.abs().max())
        assert abs(float(z.mean())) < 5 / math.sqrt(len(z))  # no bias overall


# --------------------------------------------------------------------------- end to end


def _train(args: list[str], capsys) -> None:
    rc = main(["train", "--quiet", "--lr", "0.02", "--hidden", "16", "--eval-size", "500", *args])
    out = capsys.readouterr()
    assert rc == 0, out.err


def test_binarized_model_evaluates_on_mnist_test(shared_data_dir, tmp_path, capsys):
    run = tmp_path / "bm"
    d = str(shared_data_dir)
    _train(
        ["--data", "binarized-mnist", "--data-dir", d, "--budget", "1000", "--out", str(run)],
        capsys,
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["image_shape"] == [28, 28] and cfg["data"]["n_train"] == 50_000
    results = []
    for mode in ("dynamic", "dynamic", "grey"):
        rc = main(
            ["evaluate", str(run), "--data", "mnist", "--data-dir", d, "--split", "test"]
            + ["--binarize", mode, "--json"]
        )
        results.append(json.loads(capsys.readouterr().out))
        assert rc == 0
    dyn, dyn2, grey = results
    assert dyn["points"] == 10_000 and dyn["binarize"] == "dynamic" and dyn["data"] == "mnist"
    assert dyn["bound"] == dyn2["bound"]  # one fixed draw: repeatable
    assert math.isfinite(dyn["bound"]) and dyn["bound"] != grey["bound"]
    # the binarized-MNIST test split is drawn like MNIST test with dynamic binarization: bounds
    # agree within a few standard errors of their difference
    rc = main(["evaluate", str(run), "--split", "test", "--json"])
    own = json.loads(capsys.readouterr().out)
    assert abs(own["bound"] - dyn["bound"]) < 4 * math.hypot(own["bound_se"], dyn["bound_se"])
    rc = main(
        ["encode", str(run), "--data", "mnist", "--data-dir", d, "--out", str(tmp_path / "z.npy")]
    )
    capsys.readouterr()
    assert rc == 0 and np.load(tmp_path / "z.npy").shape == (10_000, 2 * 20)


def _small_mnist_dir(shared_data_dir: Path, tmp_path: Path, n: int, raw: bool) -> Path:
    """A data dir whose mnist/ holds the real test files and a training file made of n test
    images (the real train-images file is not in the shared folder)."""
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data_dir / "mnist" / name, d / name)
    images, _ = read_idx(d / "t10k-images-idx3-ubyte.gz", 3, (28, 28))
    idx = np.arange(n) % len(images)
    body = b"\x00\x00\x08\x03" + struct.pack(">III", n, 28, 28) + images[idx].tobytes()
    if raw:
        (d / "train-images-idx3-ubyte").write_bytes(body)
    else:
        (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(body, 1))
    return d.parent


def test_mnist_trains_with_dynamic_binarization(shared_data_dir, tmp_path, capsys, monkeypatch):
    data_dir = _small_mnist_dir(shared_data_dir, tmp_path, 1000, raw=False)
    args = ["--data", "mnist", "--data-dir", str(data_dir), "--binarize", "dynamic"]
    # the home-made file is not the published one: refused by checksum, naming the file
    rc = main(["train", *args, "--out", str(tmp_path / "r0")])
    err = capsys.readouterr().err
    assert rc == 2 and "train-images-idx3-ubyte.gz" in err and "sha256" in err
    monkeypatch.setenv("AEVB_VERIFY", "0")
    run = tmp_path / "r"
    _train([*args, "--budget", "2000", "--latent-dim", "2", "--out", str(run)], capsys)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["binarize"] == "dynamic"
    assert cfg["data"]["n_train"] == 1000 and cfg["data"]["n_test"] == 10_000
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["samples_seen"] == 2000
    assert metrics[-1]["train_bound"] > metrics[0]["train_bound"] + 50  # it learned
    assert (run / "figures" / "manifold.png").is_file()
    # evaluating on test reads only the test files (the home-made training file would fail)
    monkeypatch.delenv("AEVB_VERIFY")
    assert main(["evaluate", str(run), "--split", "test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["points"] == 10_000 and res["binarize"] == "dynamic"
    assert main(["evaluate", str(run), "--split", "train"]) == 2
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_mnist_validation_split(shared_data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AEVB_VERIFY", "0")
    data_dir = _small_mnist_dir(shared_data_dir, tmp_path, 10_500, raw=True)
    ds = load_dataset("mnist", data_dir=data_dir, validation=True)
    assert len(ds.train) == 500 and ds.split("valid").shape == (mnist_mod.N_VALID, 784)
    assert len(ds.labels.get("valid", ())) == 0  # no training labels file here
    run = tmp_path / "r"
    _train(
        ["--data", "mnist", "--data-dir", str(data_dir), "--validation", "--budget", "500"]
        + ["--out", str(run)],
        capsys,
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["validation"] is True and cfg["data"]["n_train"] == 500
    assert main(["evaluate", str(run), "--split", "valid", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["points"] == 10_000
    rc = main(["train", "--data", "frey", "--validation", "--out", str(tmp_path / "x")])
    assert rc == 2 and "--validation" in capsys.readouterr().err


def test_frey_trains_with_gaussian_and_28x20_tiles(shared_data_dir, tmp_path, capsys):
    run = tmp_path / "frey"
    args = ["--data", "frey", "--data-dir", str(shared_data_dir), "--latent-dim", "2"]
    _train([*args, "--budget", "500", "--out", str(run)], capsys)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["likelihood"] == "gaussian" and cfg["model"]["image_shape"] == [28, 20]
    assert cfg["data"]["n_train"] == 1769
    assert (run / "figures" / "manifold.png").is_file()
    x = np.zeros((4, 560), np.float32)
    x[:, :20] = 1.0  # the first 20 values are the top row of a 28 x 20 tile
    grid = figures.image_grid(x, tuple(cfg["model"]["image_shape"]), 2)
    assert grid.shape == (2 * 29 + 1, 2 * 21 + 1)
    assert grid[1, 1:21].min() == 1.0 and grid[2, 1:21].max() == 0.0
