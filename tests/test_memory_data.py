"""Data from Python (arrays, tensors, pairs, Datasets) and data larger than memory (--memory-map):
the same splits and the same model as from a file, fingerprints that catch changed data, and one
clear error for each kind of bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_RUN, assert_same_run, error_lines
from sklearn.datasets import load_digits

import aevb
from aevb import cli
from aevb.data import MappedRows, load_dataset
from aevb.data.mapped import load_mapped
from aevb.data.memory import IN_MEMORY, dataset_from_memory, fingerprint
from aevb.errors import ConfigError, DataError

RUN = {**SMALL_RUN, "budget": 1_000, "eval_per_decade": 1}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """The 1 797 scikit-learn digits as rows in [0, 1]: real data held in Python."""
    return (load_digits().data / 16.0).astype(np.float32)


@pytest.fixture(scope="module")
def binary(tmp_path_factory, digits) -> Path:
    """The digits thresholded to 0/1 and saved as a uint8 .npy (rows a file of any size holds)."""
    path = tmp_path_factory.mktemp("mm") / "digits01.npy"
    np.save(path, (digits > 0.5).astype(np.uint8))
    return path


def test_array_trains_as_the_same_file_does(tmp_path, digits):
    np.save(tmp_path / "x.npy", digits)
    from_file = aevb.train(str(tmp_path / "x.npy"), tmp_path / "file", **RUN)
    from_array = aevb.train(digits, tmp_path / "array", **RUN)
    assert_same_run(tmp_path / "file", tmp_path / "array")
    assert from_array.config["data"]["spec"] == IN_MEMORY
    # the fingerprint is of the same rows, so it is the same whichever way they came
    assert from_array.config["data"]["fingerprint"] == from_file.config["data"]["fingerprint"]


def test_tensor_pair_and_dataset_match_the_npz_and_the_array(tmp_path, digits):
    tr, te = digits[:1500].reshape(-1, 8, 8), digits[1500:].reshape(-1, 8, 8)
    np.savez(tmp_path / "x.npz", train=tr, test=te)
    aevb.train(str(tmp_path / "x.npz"), tmp_path / "npz", **RUN)
    pair = aevb.train((torch.from_numpy(tr), torch.from_numpy(te)), tmp_path / "pair", **RUN)
    assert_same_run(tmp_path / "npz", tmp_path / "pair")
    assert pair.config["data"]["image_shape"] == [8, 8]
    # a torchvision-style Dataset of (image, label) items is its images, stacked
    items = torch.utils.data.TensorDataset(torch.from_numpy(digits), torch.zeros(len(digits)))
    aevb.train(items, tmp_path / "items", **RUN)
    aevb.train(digits, tmp_path / "array", **RUN)
    assert_same_run(tmp_path / "items", tmp_path / "array")


def test_resume_and_evaluate_need_the_same_data_back(tmp_path, digits):
    aevb.train(digits, tmp_path / "r", **RUN)
    with pytest.raises(DataError, match="trained on data given from Python"):
        aevb.train(resume=tmp_path / "r", budget=2_000)
    other = digits[::-1].copy()
    with pytest.raises(DataError, match="not the data the run was trained on"):
        aevb.train(other, resume=tmp_path / "r", budget=2_000)
    run = aevb.train(digits, resume=tmp_path / "r", budget=2_000, progress=False)
    assert run.metrics[-1]["samples_seen"] == 2_000
    with pytest.raises(DataError, match="pass it"):
        aevb.evaluate(tmp_path / "r")
    # an array is evaluated whole: the bound of its rows, by the run's encoder and decoder
    whole = aevb.evaluate(tmp_path / "r", data=digits[:200], samples=1, seed=3)
    pair = aevb.evaluate(tmp_path / "r", data=(digits, digits[:200]), split="test", seed=3)
    assert whole["points"] == pair["points"] == 200 and whole["bound"] == pair["bound"]
    assert whole["data"] == IN_MEMORY


def test_a_run_on_part_of_its_training_set_resumes(tmp_path):
    """--train-size cuts the training split after its fingerprint is taken, at resume as when
    the run started: the resumed run is given the same data and continues."""
    aevb.train("digits", tmp_path / "r", train_size=500, **RUN)
    run = aevb.train(resume=tmp_path / "r", budget=2_000, progress=False, draw_figures=False)
    assert run.metrics[-1]["samples_seen"] == 2_000 and run.config["data"]["n_train"] == 500


def test_a_file_changed_after_training_is_refused(tmp_path, digits, capsys):
    path = tmp_path / "x.npy"
    np.save(path, digits)
    aevb.train(str(path), tmp_path / "r", **RUN)
    assert aevb.evaluate(tmp_path / "r")["points"] == 180
    changed = digits.copy()
    changed[-1, 0] = 1.0 - changed[-1, 0]  # one pixel of one image
    np.save(path, changed)
    assert cli.main(["evaluate", str(tmp_path / "r")]) == 2
    (line,) = error_lines(capsys)
    assert "not the data the run was trained on" in line and "x.npy" in line
    assert cli.main(["train", "--resume", str(tmp_path / "r"), "--budget", "3000"]) == 2
    (line,) = error_lines(capsys)
    assert "its values differ" in line


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.full((10, 3), np.nan, np.float32), "row 0, column 0 is nan"),
        (np.zeros(5), "got shape (5,)"),
        (torch.zeros(4, 2, dtype=torch.complex64), "real tensor"),
        ([np.zeros((4, 2)), "test"], "expected a string"),
    ],
)
def test_bad_arrays_get_one_specific_error(data, message, tmp_path):
    with pytest.raises(
        (DataError, ConfigError), match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        aevb.train(data, tmp_path / "r", **RUN)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_data_outside_the_likelihoods_support_is_refused(digits):
    with pytest.raises(DataError, match=r"values span \[0, 16\].*Bernoulli"):
        aevb.train(digits * 16, **RUN)


class _Items(torch.utils.data.Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([torch.zeros(3)] * 4)


def test_bad_datasets_name_the_item():
    with pytest.raises(DataError, match="item 1 is a str, not a tensor"):
        dataset_from_memory(_Items([torch.zeros(3), "x", torch.zeros(3)]))
    with pytest.raises(DataError, match=r"item 2 has shape \(4,\) but item 0 \(3,\)"):
        dataset_from_memory(_Items([torch.zeros(3), torch.ones(3), torch.zeros(4)]))
    with pytest.raises(DataError, match="map-style"):
        dataset_from_memory(_Stream())


# ---------------------------------------------------------------- data larger than memory


def test_memory_mapped_training_is_bitwise_the_in_memory_one(tmp_path, binary):
    opts = {**RUN, "binarize": "none"}
    loaded = aevb.train(str(binary), tmp_path / "loaded", **opts)
    mapped = aevb.train(str(binary), tmp_path / "mapped", memory_map=True, **opts)
    assert_same_run(tmp_path / "loaded", tmp_path / "mapped")
    assert mapped.config["data"]["memory_map"] is True
    assert mapped.config["data"]["fingerprint"]["train"]["dtype"] == "uint8"
    # evaluation reloads the mapped file and checks its fingerprint
    a, b = aevb.evaluate(tmp_path / "loaded"), aevb.evaluate(tmp_path / "mapped")
    assert a["bound"] == b["bound"] and a["points"] == b["points"] == 180
    assert loaded.metrics[-1]["samples_seen"] == 1_000


def test_mapped_splits_are_the_loaded_ones(binary):
    loaded = load_dataset(str(binary), validation=True)
    mapped = load_dataset(str(binary), validation=True, memory_map=True)
    assert isinstance(mapped.train, MappedRows)
    for split in ("train", "test", "valid"):
        rows = mapped.split(split)
        assert rows.shape == loaded.split(split).shape
        assert np.array_equal(rows.head(len(rows)), loaded.split(split))
    assert np.allclose(mapped.train.mean(), loaded.train.mean(0, dtype=np.float64))
    assert fingerprint(mapped)["test"]["shape"] == [180, 64]


def test_reading_a_large_file_keeps_resident_memory_bounded(tmp_path):
    """Every row of a 256 MiB file read once in a shuffled order (as minibatches are) and once
    scanned (as the checks are): resident memory grows by far less than the file."""
    path = tmp_path / "big.npy"
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(1 << 18, 1024))
    rows[:] = 1
    rows.flush()
    del rows
    ds = load_mapped(path)

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before, peak = rss(), 0
    order = np.random.default_rng(0).permutation(len(ds.train))
    for lo in range(0, len(order), 2048):
        batch = ds.train.read(order[lo : lo + 2048])
        assert batch.dtype == np.float32 and batch.min() == 1.0
        peak = max(peak, rss() - before)
    for chunk in ds.train.chunks():
        assert chunk.min() == 1.0
        peak = max(peak, rss() - before)
    assert peak < 128 << 20, f"resident memory grew by {peak >> 20} MiB reading a 256 MiB file"


def test_bad_memory_mapped_files(tmp_path, binary, capsys):
    cut = tmp_path / "cut.npy"
    cut.write_bytes(binary.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or damaged"):
        load_mapped(cut)
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((10, 3), np.uint8)))
    with pytest.raises(DataError, match="Fortran order"):
        load_mapped(tmp_path / "f.npy")
    np.savetxt(tmp_path / "x.csv", np.zeros((4, 2)), delimiter=",")
    with pytest.raises(DataError, match="existing .npy file"):
        load_mapped(tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="static"):
        aevb.train(str(binary), memory_map=True, binarize="static", **RUN)
    with pytest.raises(ConfigError, match="--standardize"):
        aevb.train(str(binary), memory_map=True, standardize=True, **RUN)
    # the command line: one line, exit 2
    out = str(tmp_path / "r")
    assert cli.main(["train", "--data", str(cut), "--memory-map", "--out", out]) == 2
    (line,) = error_lines(capsys)
    assert "truncated" in line


def test_a_file_changed_under_the_reader_is_refused(tmp_path, binary):
    path = tmp_path / "x.npy"
    path.write_bytes(binary.read_bytes())
    ds = load_mapped(path)
    ds.train.read(np.arange(10))
    np.save(path, np.zeros((1797, 64), np.uint8))  # same size, new contents
    with pytest.raises(DataError, match="changed while the run was reading it"):
        list(ds.train.chunks())
