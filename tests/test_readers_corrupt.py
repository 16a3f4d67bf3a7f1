"""Damaged, truncated and wrong-format copies of every dataset file end in one clear DataError.

Each test copies a real file from $AEVB_DATA_DIR into a temporary data directory, damages it,
and checks the error names the file and the problem (and, through the CLI, exit code 2).
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from aevb.cli import main
from aevb.data import load_dataset
from aevb.data.readers import read_amat, read_idx
from aevb.errors import DataError

T10K = "t10k-images-idx3-ubyte.gz"
T10K_LABELS = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("AEVB_OFFLINE", "1")
    monkeypatch.delenv("AEVB_VERIFY", raising=False)


@pytest.fixture(scope="module")
def t10k_raw(shared_data_dir) -> bytes:
    """The decompressed MNIST test-image IDX file (7 840 016 bytes)."""
    return gzip.decompress((shared_data_dir / "mnist" / T10K).read_bytes())


def _mnist_dir(tmp_path: Path, images: bytes, name: str = T10K, compress: bool = True) -> Path:
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    (d / name).write_bytes(gzip.compress(images, 1) if compress else images)
    return tmp_path / "data"


def _load_mnist_error(data_dir: Path, verify: bool = True) -> str:
    with pytest.raises(DataError) as e:
        load_dataset("mnist", data_dir=data_dir, splits=("test",))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- IDX (MNIST)


def test_idx_reads_good_file_both_forms(tmp_path, shared_data_dir, t10k_raw):
    gz = shared_data_dir / "mnist" / T10K
    a, sha_gz = read_idx(gz, 3, (28, 28))
    raw = tmp_path / "t10k-images-idx3-ubyte"
    raw.write_bytes(t10k_raw)
    b, sha_raw = read_idx(raw, 3, (28, 28))
    assert a.shape == (10_000, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and sha_gz == sha_raw
    # an uncompressed copy in the data folder is found and accepted by its content digest
    data_dir = _mnist_dir(tmp_path, t10k_raw, raw.name, False)
    ds = load_dataset("mnist", data_dir=data_dir, splits=("test",))
    assert ds.test.shape == (10_000, 784)


def test_idx_truncated_gzip(tmp_path, shared_data_dir):
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    good = (shared_data_dir / "mnist" / T10K).read_bytes()
    (d / T10K).write_bytes(good[: len(good) // 2])
    msg = _load_mnist_error(tmp_path / "data")
    assert str(d / T10K) in msg and "truncated" in msg


def test_idx_flipped_byte_in_gzip_stream(tmp_path, shared_data_dir):
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    bad = bytearray((shared_data_dir / "mnist" / T10K).read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    (d / T10K).write_bytes(bytes(bad))
    msg = _load_mnist_error(tmp_path / "data")
    assert str(d / T10K) in msg and ("gzip" in msg or "truncated" in msg)


def test_idx_wrong_magic(tmp_path, t10k_raw):
    labels_magic = b"\x00\x00\x08\x01" + t10k_raw[4:]
    msg = _load_mnist_error(_mnist_dir(tmp_path, labels_magic))
    assert "wrong magic number 0x00000801" in msg and T10K in msg


def test_idx_not_idx_at_all(tmp_path):
    msg = _load_mnist_error(_mnist_dir(tmp_path, b"<html>404 Not Found</html>" * 10))
    assert "wrong magic number" in msg


def test_idx_header_claiming_huge_count_is_rejected_before_allocating(tmp_path, t10k_raw):
    # 4e9 images of 28x28 would be 3e12 bytes: refused from the header alone
    hdr = b"\x00\x00\x08\x03" + struct.pack(">III", 4_000_000_000, 28, 28)
    msg = _load_mnist_error(_mnist_dir(tmp_path, hdr + t10k_raw[16:]))
    assert "4,000,000,000 items" in msg and "header" in msg
    raw = tmp_path / "huge-idx3-ubyte"
    raw.write_bytes(hdr + t10k_raw[16:1000])
    with pytest.raises(DataError, match="not a plausible dataset"):
        read_idx(raw, 3, (28, 28))


def test_idx_header_count_larger_than_data(tmp_path, t10k_raw):
    hdr = b"\x00\x00\x08\x03" + struct.pack(">III", 10_001, 28, 28)
    msg = _load_mnist_error(_mnist_dir(tmp_path, hdr + t10k_raw[16:]))
    assert "truncated" in msg
    raw = tmp_path / "x-idx3-ubyte"
    raw.write_bytes(hdr + t10k_raw[16:])
    with pytest.raises(DataError, match="header promises"):
        read_idx(raw, 3, (28, 28))


def test_idx_wrong_image_dims(tmp_path, t10k_raw):
    hdr = b"\x00\x00\x08\x03" + struct.pack(">III", 10_000, 28, 29)
    msg = _load_mnist_error(_mnist_dir(tmp_path, hdr + t10k_raw[16:]))
    assert "(28, 29)" in msg and "(28, 28)" in msg


def test_idx_trailing_bytes(tmp_path, t10k_raw):
    msg = _load_mnist_error(_mnist_dir(tmp_path, t10k_raw + b"\0" * 5))
    assert "bytes after the data" in msg


def test_idx_changed_pixel_fails_checksum_unless_verification_is_off(
    tmp_path, t10k_raw, monkeypatch
):
    bad = bytearray(t10k_raw)
    bad[16 + 400] ^= 0x01
    data_dir = _mnist_dir(tmp_path, bytes(bad))
    msg = _load_mnist_error(data_dir)
    assert "sha256" in msg and "AEVB_VERIFY=0" in msg and T10K in msg
    monkeypatch.setenv("AEVB_VERIFY", "0")
    ds = load_dataset("mnist", data_dir=data_dir, splits=("test",))
    assert ds.test.shape == (10_000, 784)


def test_idx_labels_that_do_not_match_images(tmp_path, t10k_raw, monkeypatch):
    data_dir = _mnist_dir(tmp_path, t10k_raw)
    labels = b"\x00\x00\x08\x01" + struct.pack(">I", 9_999) + bytes(9_999)
    (data_dir / "mnist" / T10K_LABELS).write_bytes(gzip.compress(labels))
    monkeypatch.setenv("AEVB_VERIFY", "0")
    msg = _load_mnist_error(data_dir)
    assert "9999 labels for 10000 images" in msg


def test_corrupt_file_through_cli_is_one_line_and_exit_2(tmp_path, frey_bytes, capsys):
    data_dir = _frey_dir(tmp_path, frey_bytes[:-10])
    out = tmp_path / "run"
    rc = main(["train", "--data", "frey", "--data-dir", str(data_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("aevb: error: ")]
    assert len(lines) == 1, err
    err = lines[0]  # the whole message is on that one line
    assert str(data_dir / "frey" / "frey_rawface.mat") in err and "sha256" in err
    assert not (out / "config.json").exists()


# --------------------------------------------------------------------------- .amat (binarized)


@pytest.fixture(scope="module")
def amat_test_text(shared_data_dir) -> bytes:
    p = shared_data_dir / "binarized_mnist" / "binarized_mnist_test.amat.gz"
    return gzip.decompress(p.read_bytes())


def _bin_dir(tmp_path: Path, text: bytes, compress: bool = False) -> Path:
    d = tmp_path / "data" / "binarized_mnist"
    d.mkdir(parents=True)
    name = "binarized_mnist_test.amat" + (".gz" if compress else "")
    (d / name).write_bytes(gzip.compress(text, 1) if compress else text)
    return tmp_path / "data"


def _load_bin_error(data_dir: Path) -> str:
    with pytest.raises(DataError) as e:
        load_dataset("binarized-mnist", data_dir=data_dir, splits=("test",))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_amat_uncompressed_copy_and_general_whitespace(tmp_path, amat_test_text, monkeypatch):
    data_dir = _bin_dir(tmp_path, amat_test_text)
    ds = load_dataset("binarized-mnist", data_dir=data_dir, splits=("test",))
    assert ds.test.shape == (10_000, 784) and "train" in ds.missing
    # CRLF line ends and double spaces take the general parser: same values
    crlf = tmp_path / "crlf.amat"
    crlf.write_bytes(amat_test_text[: 1568 * 50].replace(b"\n", b" \r\n").replace(b" ", b"  "))
    x, _ = read_amat(crlf, 784)
    assert np.array_equal(x, ds.test[:50].astype(np.uint8))


def test_amat_truncated_gzip(tmp_path, shared_data_dir):
    d = tmp_path / "data" / "binarized_mnist"
    d.mkdir(parents=True)
    good = (shared_data_dir / "binarized_mnist" / "binarized_mnist_test.amat.gz").read_bytes()
    (d / "binarized_mnist_test.amat.gz").write_bytes(good[:-1000])
    msg = _load_bin_error(tmp_path / "data")
    assert "binarized_mnist_test.amat.gz" in msg and "truncated" in msg


def test_amat_truncated_text_names_the_short_row(tmp_path, amat_test_text):
    msg = _load_bin_error(_bin_dir(tmp_path, amat_test_text[:-100]))
    assert "row 10000 has 734 values, expected 784" in msg


def test_amat_bad_value(tmp_path, amat_test_text):
    bad = bytearray(amat_test_text)
    bad[1568 * 7 + 2] = ord("2")
    msg = _load_bin_error(_bin_dir(tmp_path, bytes(bad)))
    assert "line 8" in msg and "0 or 1" in msg


def test_amat_wrong_format(tmp_path, t10k_raw):
    msg = _load_bin_error(_bin_dir(tmp_path, t10k_raw[:5000]))
    assert "binarized_mnist_test.amat" in msg and "0 or 1" in msg


def test_amat_flipped_value_fails_checksum(tmp_path, amat_test_text):
    bad = bytearray(amat_test_text)
    i = 1568 * 3 + 300
    bad[i] = ord("1") if bad[i] == ord("0") else ord("0")
    msg = _load_bin_error(_bin_dir(tmp_path, bytes(bad), compress=True))
    assert "sha256" in msg and "binarized_mnist_test.amat.gz" in msg


# --------------------------------------------------------------------------- .mat (Frey Face)


@pytest.fixture(scope="module")
def frey_bytes(shared_data_dir) -> bytes:
    return (shared_data_dir / "frey" / "frey_rawface.mat").read_bytes()


def _frey_dir(tmp_path: Path, data: bytes) -> Path:
    d = tmp_path / "data" / "frey"
    d.mkdir(parents=True)
    (d / "frey_rawface.mat").write_bytes(data)
    return tmp_path / "data"


def _load_frey_error(data_dir: Path) -> str:
    with pytest.raises(DataError) as e:
        load_dataset("frey", data_dir=data_dir)
    assert "\n" not in str(e.value) and "frey_rawface.mat" in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("verify", ["1", "0"])
def test_frey_truncated(tmp_path, frey_bytes, monkeypatch, verify):
    monkeypatch.setenv("AEVB_VERIFY", verify)
    msg = _load_frey_error(_frey_dir(tmp_path, frey_bytes[: len(frey_bytes) // 3]))
    assert ("sha256" if verify == "1" else "cannot read as a .mat file") in msg


@pytest.mark.parametrize("verify", ["1", "0"])
def test_frey_header_flipped(tmp_path, frey_bytes, monkeypatch, verify):
    monkeypatch.setenv("AEVB_VERIFY", verify)
    bad = bytearray(frey_bytes)
    bad[0:6] = b"XXXXXX"
    msg = _load_frey_error(_frey_dir(tmp_path, bytes(bad)))
    assert ("sha256" if verify == "1" else "not a MATLAB 5 .mat file") in msg


def test_frey_wrong_variable_and_shape(tmp_path, monkeypatch):
    from scipy.io import savemat

    monkeypatch.setenv("AEVB_VERIFY", "0")
    p = tmp_path / "data" / "frey" / "frey_rawface.mat"
    p.parent.mkdir(parents=True)
    savemat(p, {"x": np.zeros((560, 10), np.uint8)})
    assert "no variable 'ff'" in _load_frey_error(tmp_path / "data")
    savemat(p, {"ff": np.ones((28, 20), np.float64)})
    assert "expected uint8 of shape (560, 1965)" in _load_frey_error(tmp_path / "data")


def test_frey_gzipped_copy_is_refused_with_the_fix(tmp_path, frey_bytes):
    d = tmp_path / "data" / "frey"
    d.mkdir(parents=True)
    (d / "frey_rawface.mat.gz").write_bytes(gzip.compress(frey_bytes, 1))
    assert "gunzip" in _load_frey_error(tmp_path / "data")


def test_copy_of_shared_folder_loads(tmp_path, shared_data_dir):
    """Control for the tests above: an undamaged copy loads without error."""
    shutil.copytree(shared_data_dir / "frey", tmp_path / "frey")
    assert load_dataset("frey", data_dir=tmp_path).train.shape == (1769, 560)
