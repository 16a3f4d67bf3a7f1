"""Downloads against a local HTTP server on 127.0.0.1 (never the internet), and data-dir rules.

The server is a thread serving a temporary copy of the shared data files; the mirror URLs are
pointed at it through ``AEVB_MIRROR_<DATASET>``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from aevb.cli import main
from aevb.data import data_root, load_dataset
from aevb.data import frey as frey_mod
from aevb.data.download import RemoteFile, default_cache_dir, download
from aevb.errors import DataError


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server(shared_data_dir, tmp_path_factory):
    """(base URL, served folder): mnist/ and frey/ copied, binarized test split uncompressed."""
    root = tmp_path_factory.mktemp("mirror")
    shutil.copytree(shared_data_dir / "mnist", root / "mnist")
    shutil.copytree(shared_data_dir / "frey", root / "frey")
    (root / "binarized_mnist").mkdir()
    src = shared_data_dir / "binarized_mnist" / "binarized_mnist_test.amat.gz"
    (root / "binarized_mnist" / "binarized_mnist_test.amat").write_bytes(
        gzip.decompress(src.read_bytes())
    )
    bad = bytearray((root / "frey" / "frey_rawface.mat").read_bytes())
    bad[-1] ^= 0xFF  # same size, wrong sha256
    (root / "bad").mkdir()
    (root / "bad" / "frey_rawface.mat").write_bytes(bytes(bad))
    (root / "short").mkdir()
    (root / "short" / "frey_rawface.mat").write_bytes(bytes(bad[:1000]))
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for var in ("AEVB_OFFLINE", "AEVB_VERIFY", "AEVB_MIRROR_MNIST", "AEVB_MIRROR_FREY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("AEVB_MIRROR_BINARIZED_MNIST", raising=False)


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_frey_download_lands_verified(server, tmp_path, monkeypatch, capsys):
    base, root = server
    monkeypatch.setenv("AEVB_MIRROR_FREY", base + "frey")
    ds = load_dataset("frey", data_dir=tmp_path)
    assert _files(tmp_path) == ["frey/frey_rawface.mat"]
    got = (tmp_path / "frey" / "frey_rawface.mat").read_bytes()
    assert hashlib.sha256(got).hexdigest() == frey_mod.FILE.sha256
    assert ds.train.shape == (1769, 560) and ds.test.shape == (196, 560)
    assert "downloading frey_rawface.mat" in capsys.readouterr().err  # the progress bar


def test_mnist_downloads_only_the_needed_split(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("AEVB_MIRROR_MNIST", base + "mnist/")
    ds = load_dataset("mnist", data_dir=tmp_path, splits=("test",), progress=False)
    assert _files(tmp_path) == ["mnist/t10k-images-idx3-ubyte.gz"]
    assert ds.test.shape == (10_000, 784)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is missing"):
        ds.split("train")


def test_uncompressed_amat_download(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("AEVB_MIRROR_BINARIZED_MNIST", base + "binarized_mnist")
    ds = load_dataset("binarized-mnist", data_dir=tmp_path, splits=("test",), progress=False)
    assert _files(tmp_path) == ["binarized_mnist/binarized_mnist_test.amat"]
    assert ds.test.shape == (10_000, 784)
    assert abs(float(ds.test.mean()) - 0.13251) < 5e-6


def test_bad_checksum_is_rejected_and_nothing_is_left(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("AEVB_MIRROR_FREY", base + "bad/")
    with pytest.raises(DataError) as e:
        load_dataset("frey", data_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "frey_rawface.mat" in msg and "sha256" in msg and "\n" not in msg
    assert _files(tmp_path) == []  # no final file, no .part file


def test_short_file_is_rejected_and_nothing_is_left(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("AEVB_MIRROR_FREY", base + "short/")
    with pytest.raises(DataError, match="1,000 bytes but frey_rawface.mat has 1,100,584"):
        load_dataset("frey", data_dir=tmp_path, progress=False)
    assert _files(tmp_path) == []


def test_next_mirror_after_a_missing_file(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("AEVB_MIRROR_FREY", f"{base}nowhere/,{base}frey/")
    ds = load_dataset("frey", data_dir=tmp_path, progress=False)
    assert ds.x_dim == 560 and _files(tmp_path) == ["frey/frey_rawface.mat"]


def test_unreachable_mirror_says_what_to_put_where(tmp_path, monkeypatch, capsys):
    # a port nobody listens on: connection refused, no internet involved
    monkeypatch.setenv("AEVB_MIRROR_FREY", "http://127.0.0.1:9/")
    rc = main(
        ["train", "--data", "frey", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("aevb: error: ")]
    assert len(lines) == 1, err
    err = lines[0]  # the whole message is on that one line
    assert "cannot download frey_rawface.mat" in err and str(tmp_path / "frey") in err
    assert _files(tmp_path / "frey") == []


def test_offline_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("AEVB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_dataset("binarized-mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "AEVB_OFFLINE" in msg and str(tmp_path / "binarized_mnist") in msg
    for split in ("train", "valid", "test"):
        assert f"binarized_mnist_{split}.amat" in msg


@pytest.mark.skipif(os.name != "posix", reason="permission bits")
def test_read_only_folder_is_not_written(tmp_path, monkeypatch):
    (tmp_path / "frey").mkdir()
    os.chmod(tmp_path / "frey", 0o555)
    monkeypatch.setenv("AEVB_MIRROR_FREY", "http://127.0.0.1:9/")
    try:
        with pytest.raises(DataError, match="not writable"):
            load_dataset("frey", data_dir=tmp_path, progress=False)
    finally:
        os.chmod(tmp_path / "frey", 0o755)


def test_download_function_checks_size_and_digest(server, tmp_path):
    base, root = server
    data = (root / "frey" / "frey_rawface.mat").read_bytes()
    wrong = RemoteFile("frey_rawface.mat", "0" * 64, len(data), "0" * 64)
    with pytest.raises(DataError, match="sha256"):
        download(base + "frey/frey_rawface.mat", tmp_path / "f.mat", wrong, progress=False)
    assert _files(tmp_path) == []
    right = RemoteFile("frey_rawface.mat", hashlib.sha256(data).hexdigest(), len(data), "")
    out = download(base + "frey/frey_rawface.mat", tmp_path / "f.mat", right, progress=False)
    assert out.read_bytes() == data and _files(tmp_path) == ["f.mat"]


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("AEVB_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("AEVB_DATA_DIR")
    assert data_root() == tmp_path / "xdg" / "aevb" == default_cache_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_root() == Path.home() / ".cache" / "aevb"


def test_cache_dir_is_used_when_nothing_is_given(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.delenv("AEVB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("AEVB_MIRROR_FREY", base + "frey")
    ds = load_dataset("frey", progress=False)
    assert (tmp_path / "aevb" / "frey" / "frey_rawface.mat").is_file()
    again = load_dataset("frey", progress=False)  # second time from the cache
    assert np.array_equal(ds.train, again.train)
