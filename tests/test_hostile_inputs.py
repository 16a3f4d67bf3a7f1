"""Hostile inputs (docs/RELIABILITY.md): property tests over every data reader and the CLI.

Every malformed input must end in the documented error (DataError, one line naming the file;
through the command line: exit code 2 and one line), never in another exception, a hang or a
large allocation. Each call runs under a time limit and tracemalloc, which sees numpy's and
Python's allocations: the peak must stay within a small multiple of the input's size.

With ``AEVB_RELIABILITY_TALLY=FILE`` the number of inputs tried is added to that JSON file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import shutil
import signal
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fault_injection import TALLY
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aevb.data import load_dataset
from aevb.data.frey import read_frey
from aevb.data.readers import read_amat, read_idx
from aevb.errors import DataError

FAST = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same inputs on every run of the suite
    database=None,
)


class Hang(Exception):
    pass


@contextlib.contextmanager
def guarded(input_bytes: int | None, seconds: float = 20.0):
    """No hang (a SIGALRM after ``seconds``) and, given the input's size, no large allocation
    (tracemalloc's peak, which counts numpy's arrays and Python's objects)."""

    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    if input_bytes is not None:
        tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1] if input_bytes is not None else 0
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    limit = 64 * (input_bytes or 0) + (32 << 20)
    assert peak <= limit, f"allocated {peak:,} bytes for a {input_bytes:,}-byte input"


def _read(kind: str, reader, path: Path, data: bytes):
    """reader(path) under guard; returns its value or the DataError, checked to be one line."""
    path.write_bytes(data)
    TALLY[f"hostile_{kind}"] += 1
    with guarded(len(data)):
        try:
            out = reader(path)
        except DataError as e:
            out = e
    if isinstance(out, DataError):
        msg = str(out)
        assert "\n" not in msg and path.name in msg, msg
        TALLY[f"hostile_{kind}_rejected"] += 1
    return out


def _gzip_variant(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(["raw", "raw", "gzip", "gzip-cut", "gzip-flip"]))
    if how == "raw":
        return data
    z = gzip.compress(data, 1, mtime=0)
    if how == "gzip-cut":
        return z[: draw(st.integers(0, len(z) - 1))]
    if how == "gzip-flip":
        i = draw(st.integers(0, len(z) - 1))
        return z[:i] + bytes([z[i] ^ draw(st.integers(1, 255))]) + z[i + 1 :]
    return z


# --------------------------------------------------------------------------- IDX (MNIST)

DIM = st.one_of(st.integers(0, 3), st.sampled_from([28, 60_000, 10**9, 2**32 - 1]))


@st.composite
def idx_files(draw):
    ndim = draw(st.sampled_from([1, 3]))
    good_magic = bytes([0, 0, 8, ndim])
    magic = draw(
        st.one_of(
            st.just(good_magic),
            st.just(good_magic),
            st.sampled_from([bytes([0, 0, 9, ndim]), bytes([0, 0, 8, 2]), b"\x1f\x8b\x08\x00"]),
            st.binary(max_size=4),
        )
    )
    items = draw(DIM)
    dims = [items] + ([28, 28] if ndim == 3 and draw(st.booleans()) else draw(st.lists(DIM)))
    dims = dims[: draw(st.integers(0, ndim + 1))] if draw(st.integers(0, 4)) == 0 else dims
    header = magic + b"".join(struct.pack(">I", d) for d in dims)
    want = int(np.prod(dims, dtype=object)) if len(dims) == ndim else -1
    n_body = draw(st.one_of(st.integers(0, 40), st.just(want if 0 <= want <= 50_000 else 0)))
    body = bytes(draw(st.integers(0, 255)) for _ in range(min(n_body, 4))) * (n_body // 4)
    body += b"\x07" * (n_body - len(body))
    tail = draw(st.sampled_from([b"", b"", b"\0"]))
    return _gzip_variant(draw, header + body + tail), ndim


def _content(data: bytes) -> bytes | None:
    """What a reader should see in the file: gzip decompressed (None where gzip fails)."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except Exception:  # BadGzipFile, EOFError, zlib.error: not a complete gzip stream
        return None


def _idx_expected(content: bytes | None, ndim: int) -> np.ndarray | None:
    """The array an IDX file of unsigned bytes holds, by the format's definition (None: bad)."""
    head = 4 + 4 * ndim
    if content is None or len(content) < head or content[:4] != bytes([0, 0, 8, ndim]):
        return None
    dims = struct.unpack(f">{ndim}I", content[4:head])
    if dims[0] < 1 or (ndim == 3 and dims[1:] != (28, 28)):
        return None
    if len(content) != head + int(np.prod(dims, dtype=object)):
        return None
    return np.frombuffer(content[head:], dtype=np.uint8).reshape(dims)


@FAST
@given(case=idx_files())
@example(case=(bytes([0, 0, 8, 3]) + struct.pack(">III", 4_000_000_000, 28, 28), 3))
@example(case=(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 28, 28)), 3))
def test_idx_reader(tmp_path_factory, case):
    data, ndim = case
    path = tmp_path_factory.mktemp("idx") / "t10k-images-idx3-ubyte"
    out = _read("idx", lambda p: read_idx(p, ndim, (28, 28) if ndim == 3 else ()), path, data)
    want = _idx_expected(_content(data), ndim)
    if want is None:
        assert isinstance(out, DataError)
    else:
        assert not isinstance(out, DataError), out
        assert np.array_equal(out[0], want) and out[0].dtype == np.uint8


def test_an_idx_header_claiming_10_to_the_12_bytes_allocates_nothing(tmp_path):
    """A header claiming 10^12 items (an MNIST-shaped file) is refused before any allocation."""
    for n in (10**12 // 784, 2**32 - 1):
        raw = bytes([0, 0, 8, 3]) + struct.pack(">III", n, 28, 28) + b"\0" * 784
        for data in (raw, gzip.compress(raw)):
            out = _read("idx", lambda p: read_idx(p, 3, (28, 28)), tmp_path / "x-idx3", data)
            assert isinstance(out, DataError) and "header" in str(out)


# --------------------------------------------------------------------------- amat


@st.composite
def amat_files(draw):
    def row() -> str:
        if draw(st.integers(0, 3)):
            seps = draw(st.lists(st.sampled_from([" ", " ", "\t", "  "]), min_size=3, max_size=3))
            vals = draw(st.lists(st.sampled_from("01"), min_size=4, max_size=4))
            return "".join(v + s for v, s in zip(vals, [*seps, ""], strict=True))
        return draw(st.text(alphabet="01 \t\r2x.-", max_size=12))

    rows = [row() for _ in range(draw(st.integers(0, 6)))]
    text = "".join(r + draw(st.sampled_from(["\n", "\n", "\r\n", ""])) for r in rows)
    return _gzip_variant(draw, text.encode())


def _amat_expected(raw: bytes | None) -> np.ndarray | None:
    """What a .amat of 4 columns holds, by a plain reading of the format (None: malformed)."""
    if raw is None:
        return None
    rows = []
    for line in raw.split(b"\n"):
        toks = [t for t in re.split(rb"[ \t\r]+", line) if t]
        if not toks:
            continue
        if len(toks) != 4 or any(t not in (b"0", b"1") for t in toks):
            return None
        rows.append([int(t) for t in toks])
    return np.array(rows, dtype=np.uint8) if rows else None


@FAST
@given(data=amat_files())
def test_amat_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("amat") / "binarized_mnist_test.amat"
    out = _read("amat", lambda p: read_amat(p, 4), path, data)
    want = _amat_expected(_content(data))
    if want is None:
        assert isinstance(out, DataError)
    else:
        assert not isinstance(out, DataError), out
        assert np.array_equal(out[0], want)


# --------------------------------------------------------------------------- mat (Frey Face)


def _frey_mat(frames: int, seed: int) -> bytes:
    from scipy.io import savemat

    ff = np.random.default_rng(seed).integers(0, 256, (560, frames), dtype=np.uint8)
    buf = io.BytesIO()
    savemat(buf, {"ff": ff})
    return buf.getvalue()


@st.composite
def mat_files(draw):
    data = _frey_mat(draw(st.integers(2, 3)), draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "flip", "cut", "insert", "header-field"]))
        if kind == "header-field" and len(data) > 128:  # tags and array headers after byte 128
            i = draw(st.integers(128, min(len(data) - 1, 128 + 64)))
        else:
            i = draw(st.integers(0, len(data) - 1))
        if kind in ("flip", "header-field"):
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
        elif kind == "cut":
            data = data[:i]
        else:
            data = data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    if draw(st.integers(0, 9)) == 0:
        data = b"MATLAB 5.0 MAT-file" + draw(st.binary(max_size=300))
    return data


@FAST
@given(data=mat_files())
def test_mat_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("mat") / "frey_rawface.mat"
    out = _read("mat", lambda p: read_frey(p, verify=False), path, data)
    if not isinstance(out, DataError):
        assert out.dtype == np.uint8 and out.ndim == 2 and out.shape[1] == 560


# --------------------------------------------------------------------------- npy, npz, csv

DESCRS = ["<f4", "<f8", "|u1", "<i8", "|b1", "<f2", ">f4", "<c8", "|O", "<U3", "|V8", "<M8[s]"]


def _npy_header(descr: str, shape, fortran: bool = False, version: int = 1) -> bytes:
    d = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    size_fmt = "<H" if version == 1 else "<I"
    pre = 6 + 2 + struct.calcsize(size_fmt)
    d += " " * ((64 - (pre + len(d) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(size_fmt, len(d)) + d.encode()


SHAPES = st.one_of(
    st.tuples(st.integers(0, 6), st.integers(0, 5)),
    st.tuples(st.integers(0, 4), st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.integers(0, 8)),
    st.just(()),
    st.sampled_from([(10**12,), (2**40, 2), (10**6, 10**6), (-1, 3), (3, -2)]),
)


@st.composite
def npy_bytes(draw):
    if draw(st.booleans()):  # a real array, then maybe damaged
        shape = draw(st.tuples(st.integers(0, 6), st.integers(0, 5)))
        dtype = draw(st.sampled_from(["f4", "f8", "u1", "i2", "bool", "c8", "f2"]))
        a = (np.arange(int(np.prod(shape))).reshape(shape) % 3).astype(dtype)
        if draw(st.booleans()) and a.size and a.dtype.kind == "f":
            a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 9]))
        buf = io.BytesIO()
        np.save(buf, a)
        data = buf.getvalue()
    else:  # a handmade header over some bytes
        data = _npy_header(
            draw(st.sampled_from(DESCRS)),
            draw(SHAPES),
            draw(st.booleans()),
            draw(st.sampled_from([1, 1, 2])),
        )
        data += b"\0" * draw(st.sampled_from([0, 4, 8, 24, 64]))
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip" and data:
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
        elif kind == "cut":
            data = data[:i]
        else:
            data = data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]
    return data


def _dataset_reader(p: Path):
    ds = load_dataset(str(p))
    assert ds.train.dtype == np.float32 and np.isfinite(ds.train).all()
    assert ds.train.ndim == 2 and len(ds.train) >= 1
    return ds


@FAST
@given(data=npy_bytes())
@example(data=_npy_header("<f8", (10**12,)) + b"\0" * 16)
@example(data=_npy_header("<f8", (10**8,)) + b"\0" * 16)
def test_npy_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    _read("npy", _dataset_reader, path, data)


@st.composite
def npz_bytes(draw):
    buf = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name in draw(
            st.lists(
                st.sampled_from(["train", "test", "valid", "data", "x", "z.txt"]),
                max_size=3,
                unique=True,
            )
        ):
            member = name if name.endswith(".txt") else name + ".npy"
            zf.writestr(member, draw(npy_bytes()))
    data = buf.getvalue()
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if draw(st.booleans()) and data:
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
        else:
            data = data[:i]
    return data


@FAST
@given(data=npz_bytes())
def test_npz_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("npz") / "x.npz"
    _read("npz", _dataset_reader, path, data)


def test_a_zip_bomb_npz_is_refused_without_inflating_it(tmp_path):
    """A member that inflates to far more than this machine's memory is refused unread."""
    buf = io.BytesIO()
    n = 1 << 20  # 1 MiB of zeros deflates to ~1 KiB; the header claims 1 TiB
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train.npy", _npy_header("<f8", (2**37,)) + b"\0" * n)
    out = _read("npz", _dataset_reader, tmp_path / "bomb.npz", buf.getvalue())
    assert isinstance(out, DataError) and "header promises" in str(out)


CSV_ALPHABET = st.sampled_from(
    ["0", "1", "0.5", "-1", "1e3", "1e999", "nan", "inf", "", " ", "a", '"x"', "1_0", "0x1"]
)


@st.composite
def csv_bytes(draw):
    width = draw(st.integers(1, 4))
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        n = width if draw(st.integers(0, 3)) else draw(st.integers(0, 6))
        if draw(st.integers(0, 3)):
            cells = [draw(st.sampled_from(["0", "1", "0.25", "0.75"])) for _ in range(n)]
        else:
            cells = [draw(CSV_ALPHABET) for _ in range(n)]
        lines.append(",".join(cells))
    text = "\n".join(lines).encode()
    if draw(st.integers(0, 6)) == 0:
        text = draw(st.binary(max_size=40))
    return text


@FAST
@given(data=csv_bytes())
def test_csv_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("csv") / "x.csv"
    _read("csv", _dataset_reader, path, data)


# --------------------------------------------------------------------------- the command line


def _parser_options() -> dict[str, list]:
    """Every subcommand's arguments (option string or None, arity, choices, type, required),
    read from the parser itself, so new options are fuzzed as soon as they exist."""
    import argparse

    from aevb.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, sp in sub.choices.items():
        opts = []
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            nargs = {None: 1, "?": 1, "+": 1}.get(a.nargs, a.nargs)
            kind = getattr(a.type, "__name__", None)
            first = a.option_strings[0] if a.option_strings else None
            opts.append((first, nargs, a.choices, kind, a.required or first is None, a.dest))
        out[name] = opts
    return out


OPTIONS = _parser_options()
HOSTILE = ["0", "-1", "1e400", "nan", "inf", "-inf", str(10**30), "abc", "", " ", "1.5", "-0"]
VALID = {"_positive_int": ["1", "2", "3", "5"], "int": ["0", "1", "2"], "float": ["0.5", "0.9"]}


@pytest.fixture(scope="module")
def cli_paths(tmp_path_factory, small_run) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    small_run(d / "run", latent_dim=2, hidden=8, budget=300, lr=0.02)
    (d / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    np.save(d / "good.npy", np.random.default_rng(0).random((40, 6)).astype(np.float32))
    (d / "bad.json").write_text("{not json")
    (d / "cfg.json").write_text(json.dumps({"budget": 200, "hidden": 4}))
    np.save(d / "z.npy", np.zeros((3, 2), np.float32))
    (d / "data").mkdir()
    return {
        "run": d / "run",
        "bad.npy": d / "bad.npy",
        "good.npy": d / "good.npy",
        "bad.json": d / "bad.json",
        "cfg.json": d / "cfg.json",
        "z.npy": d / "z.npy",
        "data": d / "data",
        "missing": d / "no" / "such",
        "dir": d,
    }


@st.composite
def argvs(draw, cmd: str, paths: dict, scratch: Path):
    """An argv for ``cmd``: its required arguments, then a few options; values mostly of the
    right kind (to reach the code behind the parser), often hostile."""
    fresh = scratch / f"out{draw(st.integers(0, 10**6))}"
    copy = scratch / f"run{draw(st.integers(0, 10**6))}"  # a run directory the command may write
    texts = ["digits", "mnist", "x", "a,b", "0,1"]
    files = [str(p) for p in paths.values()] + [str(copy), str(fresh)]
    outs = [f"{fresh}.png", f"{fresh}.npy", f"{fresh}.npz", f"{fresh}.txt", str(fresh)]

    def value(opt, choices, kind, dest):
        if draw(st.integers(0, 2)) == 0:
            return draw(st.sampled_from(HOSTILE + files + texts))
        if choices:
            return str(draw(st.sampled_from(sorted(map(str, choices)))))
        if kind in VALID:
            return draw(st.sampled_from(VALID[kind]))
        if dest in ("run_dir", "run_dirs", "resume"):
            return str(copy)
        if dest == "out":
            return draw(st.sampled_from(outs))
        if dest == "data":
            return draw(st.sampled_from(["digits", "mnist", *map(str, paths.values())]))
        return draw(st.sampled_from(files + texts))

    opts = OPTIONS[cmd]
    chosen = [o for o in opts if o[4] and draw(st.integers(0, 9))]  # required, mostly
    chosen += draw(st.lists(st.sampled_from(opts), max_size=5))
    argv = [cmd]
    for opt, nargs, choices, kind, _, dest in chosen:
        if opt is not None:
            argv.append(opt)
        if nargs:
            argv += [value(opt, choices, kind, dest) for _ in range(nargs)]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(["--nope", "-x"])))
    if cmd == "train" and "--out" not in argv and "--resume" not in argv and draw(st.booleans()):
        argv += ["--out", str(fresh)]
    if str(copy) in argv:
        shutil.copytree(paths["run"], copy)
    return argv


@pytest.fixture
def cli_stubs(monkeypatch, tmp_path_factory):
    """Cut the command line off where the real work would begin: no training steps, step-size
    trial, figures or marginal-likelihood estimates (everything before them is exercised), no
    downloads. What is left must still end in exit 0 or in one error line and exit 2."""
    import aevb.api.evaluation
    import aevb.api.training
    from aevb import training
    from aevb.explorer import ExploreServer

    monkeypatch.setenv("AEVB_OFFLINE", "1")
    monkeypatch.setenv("AEVB_DATA_DIR", str(tmp_path_factory.mktemp("empty-data")))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # default outputs (reproductions/) land here
    monkeypatch.setattr(training.Trainer, "run", lambda self: [])
    monkeypatch.setattr(aevb.api.training, "choose_lr", lambda *a, **k: (0.02, {"stub": True}))
    monkeypatch.setattr(aevb.api.training, "draw_run_figures", lambda *a, **k: [])
    monkeypatch.setattr(ExploreServer, "serve_forever", lambda self, *a, **k: None)  # no serving
    stub = dict(method="is", log_likelihood=0.0, se=0.0, gap=0.0, gap_se=0.0, seconds=0.0)
    stub.update(importance_samples=1, ess_median=1.0, posterior_samples=1, leapfrog_steps=1)
    stub.update(accept_rate=1.0)
    monkeypatch.setattr(aevb.api.evaluation, "_marginal_estimate", lambda *a, **k: dict(stub))


CLI_EXAMPLES = {"train": 60, "evaluate": 25}


@pytest.mark.parametrize("cmd", sorted(OPTIONS))
def test_cli_options(cli_paths, cli_stubs, tmp_path_factory, cmd):
    """Any argv: exit 0, or exit 2 with exactly one line 'aevb: error: ...'; never a traceback,
    a hang, or another exit code."""

    @settings(
        max_examples=CLI_EXAMPLES.get(cmd, 12),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
        database=None,
    )
    @given(data=st.data())
    def run(data):
        argv = data.draw(argvs(cmd, cli_paths, tmp_path_factory.mktemp("argv")))
        _run_cli(argv)

    run()


def test_cli_top_level(cli_stubs):
    for argv in (["--version"], ["--help"], ["bogus"], [], ["--nope"], ["train", "--help"]):
        _run_cli(argv)


def _run_cli(argv: list[str]) -> None:
    from aevb.cli import main

    TALLY["hostile_cli"] += 1
    out, err = io.StringIO(), io.StringIO()
    with guarded(None, 60), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: errors, --help, --version
            code = e.code
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert code in (0, 2), (argv, code, err.getvalue())
    assert "Traceback" not in err.getvalue(), (argv, err.getvalue())
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("aevb: error:"), (argv, lines)
        TALLY["hostile_cli_rejected"] += 1


def _base_argv(cmd: str, paths: dict, scratch: Path) -> list[str]:
    """A minimal valid command line of each kind, to which one extreme option is added."""
    run = scratch / "run"
    if cmd != "train":
        shutil.copytree(paths["run"], run)
    out = str(scratch / "out.npy")
    return {
        "train": ["train", "--out", str(scratch / "new"), "--quiet"],
        "evaluate": ["evaluate", str(run)],
        "sample": ["sample", str(run), "--out", out],
        "manifold": ["manifold", str(run), "--out", out],
        "reconstruct": ["reconstruct", str(run), "--out", str(scratch / "r.png")],
        "encode": ["encode", str(run), "--out", out],
        "decode": ["decode", str(run), "--latents", str(paths["z.npy"]), "--out", out],
        "plot": ["plot", str(run), "--out", str(scratch / "p.png")],
        "interpolate": ["interpolate", str(run), "--out", out],
        "verify": ["verify", str(run)],
    }.get(cmd, [cmd])


@pytest.mark.parametrize("cmd", sorted(OPTIONS))
def test_cli_numeric_options_at_their_extremes(cli_paths, cli_stubs, tmp_path_factory, cmd):
    """Every numeric option of every command, at absurd values: refused in one line, or done
    (or out of memory, in one line), never a crash or a hang."""
    numeric = [o for o in OPTIONS[cmd] if o[0] and o[3] in ("_positive_int", "int", "float")]
    for opt, nargs, *_ in numeric:
        for v in (str(10**30), str(10**15), "nan", "-1"):
            argv = _base_argv(cmd, cli_paths, tmp_path_factory.mktemp("extreme"))
            _run_cli([*argv, opt, *([v] * nargs)])
