"""Reliability (docs/RELIABILITY.md): crash safety, run integrity and formats, numerical faults,
and full or read-only output locations. The fault-injection suite.

Every trial is counted in ``TALLY``; with ``AEVB_RELIABILITY_TALLY=FILE`` the counts are written
there as JSON at the end (the figures in docs/RELIABILITY.md come from such a run).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_kit import add_to_tally_file
from safetensors.torch import load_file

import aevb
from aevb import runs, training
from aevb.cli import main
from aevb.errors import ConfigError, NumericalError, RunError

TESTS = Path(__file__).parent
FIXTURE_V1 = TESTS / "fixtures" / "run_format1"
FIXTURES = {1: FIXTURE_V1, 2: TESTS / "fixtures" / "run_format2"}
"""A small run of every released run format (tests/fixtures/README.md)."""
TALLY: Counter = Counter()

# A small model on the embedded digits data, checkpointed every 5 steps.
SMALL = dict(
    latent_dim=2,
    hidden=16,
    budget=4000,
    lr=0.02,
    seed=5,
    eval_per_decade=3,
    eval_size=200,
    checkpoint_samples=500,
    progress=False,
    draw_figures=False,
)


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    add_to_tally_file(TALLY)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _strip_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _check_readable(run: Path) -> str:
    """Whether a run directory reads completely; "none" where no run was begun there yet."""
    if not (run / runs.MANIFEST).exists():
        # killed before the run's first commit: nothing but temporary leftovers may be there
        assert not run.exists() or all(runs.is_leftover(p) for p in run.iterdir()), list(
            run.iterdir()
        )
        return "none"
    runs.verify_run(run)  # every file the manifest lists: complete, and its checksum matches
    runs.read_config(run)
    if runs.has_file(run, runs.STATE):
        runs.load_run_tensors(run, runs.STATE)
    if runs.has_file(run, runs.MODEL):
        model = aevb.load(run)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    return "ok"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run with SMALL's settings."""
    out = tmp_path_factory.mktemp("ref") / "run"
    aevb.train("digits", out, **SMALL)
    return out


def _assert_matches_reference(run: Path, ref: Path) -> None:
    assert _same_tensors(run / runs.MODEL, ref / runs.MODEL)  # bitwise
    assert _strip_seconds(runs.read_metrics(run)) == _strip_seconds(runs.read_metrics(ref))
    runs.verify_run(run)


# --------------------------------------------------------------------------- kill -9


ARGV = [
    "train",
    "--data",
    "digits",
    "--latent-dim",
    "2",
    "--hidden",
    "16",
    "--budget",
    "3000",
    "--lr",
    "0.02",
    "--seed",
    "5",
    "--eval-per-decade",
    "3",
    "--eval-size",
    "200",
    "--checkpoint-samples",
    "500",
    "--device",
    "cpu",
    "--quiet",
]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _aevb_command() -> list[str]:
    exe = Path(sys.executable).with_name("aevb")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "aevb"]


class ForkServer:
    """tests/reliability_kit.py's server: forks a process per ``aevb`` command."""

    def __init__(self) -> None:
        env = dict(ENV, PYTHONPATH=os.pathsep.join([str(TESTS), ENV.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import reliability_kit as k; k.serve()"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.ready = False

    def _ask(self, **req) -> dict:
        if not self.ready:
            assert json.loads(self.proc.stdout.readline()) == {"ready": True}
            self.ready = True
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], log: Path, fault: tuple | None = None) -> int:
        return self._ask(op="start", argv=argv, log=str(log), fault=fault)["pid"]

    def wait(self, pid: int) -> int:
        return self._ask(op="wait", pid=pid)["code"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- integrity


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished format-2 run with figures (every kind of file a run holds)."""
    out = tmp_path_factory.mktemp("base") / "run"
    kw = dict(SMALL, budget=1000, draw_figures=True)
    aevb.train("digits", out, **kw)
    return out


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_a_run_directory_has_a_manifest_of_every_file(base_run):
    m = json.loads((base_run / runs.MANIFEST).read_text())
    assert m["format_version"] == runs.FORMAT_VERSION == 2
    on_disk = {
        p.relative_to(base_run).as_posix()
        for p in base_run.rglob("*")
        if p.is_file() and p.name not in (runs.MANIFEST, runs.METRICS)
    }
    assert set(m["files"]) == on_disk
    for name, entry in m["files"].items():
        data = (base_run / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    metrics = (base_run / runs.METRICS).read_bytes()
    assert m["metrics"]["sha256"] == hashlib.sha256(metrics).hexdigest()
    assert json.loads((base_run / runs.CONFIG).read_text())["format_version"] == 2


def _corrupt(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    elif kind == "append":
        path.write_bytes(data + b"\0")
    elif kind == "delete":
        path.unlink()


# what reads each file: (python call, command line)
READERS = {
    runs.CONFIG: lambda r: aevb.load(r),
    runs.MODEL: lambda r: aevb.load(r),
    runs.STATE: lambda r: aevb.train(resume=r, progress=False, draw_figures=False),
    runs.METRICS: lambda r: aevb.train(resume=r, progress=False, draw_figures=False),
    runs.MANIFEST: lambda r: aevb.load(r),
    "figures/samples.png": lambda r: runs.verify_run(r),
}
CLI = {
    runs.CONFIG: ["sample", "{r}", "--out", "{t}/s.png"],
    runs.MODEL: ["sample", "{r}", "--out", "{t}/s.png"],
    runs.STATE: ["train", "--resume", "{r}", "--quiet"],
    runs.METRICS: ["train", "--resume", "{r}", "--quiet"],
    runs.MANIFEST: ["evaluate", "{r}"],
    "figures/samples.png": ["verify", "{r}"],
}
KINDS = ("truncate", "empty", "flip", "append", "delete")


# (records appended to metrics.jsonl after the last checkpoint are expected, not damage)
DAMAGE = [(n, k) for n in READERS for k in KINDS if (n, k) != (runs.METRICS, "append")]


@pytest.mark.parametrize("name, kind", DAMAGE)
def test_a_damaged_run_file_is_named_in_one_line(base_run, tmp_path, capsys, name, kind):
    run = _copy(base_run, tmp_path / "run")
    _corrupt(run / name, kind)
    TALLY["files_corrupted"] += 1
    with pytest.raises(RunError) as e:
        READERS[name](run)
    msg = str(e.value)
    assert Path(name).name in msg and "\n" not in msg, msg
    argv = [a.format(r=run, t=tmp_path) for a in CLI[name]]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("aevb: error:") and Path(name).name in err[0]
    assert main(["verify", str(run)]) == 2
    TALLY["files_corrupted_caught"] += 1


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
@given(data=st.data())
def test_any_change_to_any_run_file_is_caught(base_run, tmp_path_factory, data):
    """Random damage (a changed byte, a cut, an inserted byte) anywhere in any file."""
    names = sorted(json.loads((base_run / runs.MANIFEST).read_text())["files"])
    names += [runs.METRICS, runs.MANIFEST]
    name = data.draw(st.sampled_from(names))
    size = (base_run / name).stat().st_size
    kind = data.draw(st.sampled_from(["byte", "cut", "insert"]))
    at = data.draw(st.integers(0, size - 1 if kind != "insert" else size - 1))
    run = _copy(base_run, tmp_path_factory.mktemp("fuzz") / "run")
    raw = (run / name).read_bytes()
    if kind == "byte":
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif kind == "cut":
        raw = raw[:at]
    else:
        raw = raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at:]
    (run / name).write_bytes(raw)
    TALLY["files_corrupted"] += 1
    with pytest.raises(RunError) as e:
        runs.verify_run(run)
    assert Path(name).name in str(e.value) and "\n" not in str(e.value)
    TALLY["files_corrupted_caught"] += 1


class _Payload:
    """Unpickling this would create the file ``marker``: proof that code from the file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("fmt", [1, 2])
def test_loading_never_executes_code_from_a_file(base_run, tmp_path, fmt):
    run = _copy(FIXTURE_V1 if fmt == 1 else base_run, tmp_path / "run")
    marker = tmp_path / "code-ran"
    evil = pickle.dumps({"w": _Payload(str(marker))})
    for name in (runs.MODEL, runs.STATE):
        (run / name).write_bytes(evil)
    with pytest.raises(RunError, match=runs.MODEL):
        aevb.load(run)
    with pytest.raises(RunError, match=runs.STATE):
        aevb.train(resume=run, progress=False, draw_figures=False)
    assert not marker.exists()
    pickle.loads(evil)  # the payload does work when unpickled
    assert marker.exists()


def test_no_code_path_unpickles():
    """Nothing in the package can execute code from a file: no pickle, torch.load, eval."""
    pattern = re.compile(
        r"pickle\.loads?\(|torch\.load\(|allow_pickle=True|(?<![.\w])(eval|exec)\("
    )
    src = Path(aevb.__file__).parent
    hits = [
        f"{p.relative_to(src)}:{i}"
        for p in src.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert hits == []


# --------------------------------------------------------------------------- formats


def _digest_tree(d: Path) -> dict[str, str]:
    return {
        p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_a_released_run_still_loads_evaluates_and_samples(tmp_path, capsys, fmt):
    fixture = FIXTURES[fmt]
    before = _digest_tree(fixture)
    assert runs.run_format(fixture) == fmt
    model = aevb.load(fixture)
    assert model.config.latent_dim == 2 and model.config.hidden == 8
    x = torch.from_numpy(aevb.data.load_dataset("digits").test[:20])
    assert torch.isfinite(model.elbo(x)).all()
    res = aevb.evaluate(fixture)
    last = runs.read_metrics(fixture)[-1]
    assert res["points"] == 297 and abs(res["bound"] - last["test_bound"]) < 1.0
    assert main(["sample", str(fixture), "--n", "4", "--out", str(tmp_path / "s.npy")]) == 0
    assert main(["verify", str(fixture)]) == 0
    assert f"run format {fmt}" in capsys.readouterr().out
    assert _digest_tree(fixture) == before  # reading never writes


def test_resuming_a_format2_run_continues_it(tmp_path):
    run = _copy(FIXTURES[2], tmp_path / "run")
    res = aevb.train(resume=run, budget=3000, progress=False, draw_figures=False)
    assert res.final["samples_seen"] == 3000 and runs.verify_run(run)["checksums"]


def test_resuming_a_format1_run_converts_it(tmp_path):
    run = _copy(FIXTURE_V1, tmp_path / "run")
    old = runs.read_metrics(run)
    res = aevb.train(resume=run, budget=3000, progress=False, draw_figures=False)
    assert res.final["samples_seen"] == 3000
    assert runs.run_format(run) == runs.FORMAT_VERSION
    assert runs.verify_run(run)["checksums"] is True
    assert {"figures/curves.png", runs.STATE, runs.MODEL} <= set(
        json.loads((run / runs.MANIFEST).read_text())["files"]
    )
    new = runs.read_metrics(run)
    assert new[: len(old)] == old and new[-1]["samples_seen"] == 3000
    aevb.load(run)


def _rewrite_manifest(run: Path, **changes) -> None:
    m = json.loads((run / runs.MANIFEST).read_text())
    m.update(changes)
    m["checksum"] = runs._manifest_checksum(m)
    (run / runs.MANIFEST).write_bytes(runs.json_bytes(m))


def test_newer_and_unknown_formats_are_refused_in_one_line(base_run, tmp_path, capsys):
    newer = _copy(base_run, tmp_path / "newer")
    _rewrite_manifest(newer, format_version=3)
    for call in (lambda: aevb.load(newer), lambda: aevb.train(resume=newer, progress=False)):
        with pytest.raises(RunError, match="newer aevb.*reads run formats 1 to 2.*upgrade"):
            call()
    assert main(["evaluate", str(newer)]) == 2
    assert "newer aevb" in capsys.readouterr().err
    TALLY["format_cases_refused"] += 1
    # a format-1-style directory (no manifest) whose config claims a future or odd format
    for version, expect in ((7, "newer aevb"), ("2b", "unknown run format"), (None, "unknown")):
        d = _copy(FIXTURE_V1, tmp_path / f"v{version}")
        cfg = json.loads((d / runs.CONFIG).read_text())
        cfg["format_version"] = version
        (d / runs.CONFIG).write_text(json.dumps(cfg))
        with pytest.raises(RunError, match=expect):
            aevb.load(d)
        TALLY["format_cases_refused"] += 1
    # a format-2 config without its manifest
    lost = _copy(base_run, tmp_path / "lost")
    (lost / runs.MANIFEST).unlink()
    with pytest.raises(RunError, match="manifest.json: missing"):
        aevb.load(lost)
    TALLY["format_cases_refused"] += 1


# --------------------------------------------------------------------------- numerical faults


def _inject(monkeypatch, at: int, what: str) -> None:
    """Make step number ``at`` produce a NaN bound, or non-finite parameters."""
    real = training.AEVB.step
    count = {"n": 0}

    def step(self, x, generator):
        bound = real(self, x, generator)
        count["n"] += 1
        if count["n"] == at:
            if what == "bound":
                return bound * float("nan")
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[3] = float("inf")
        return bound

    monkeypatch.setattr(training.AEVB, "step", step)


@pytest.mark.parametrize("what, at", [("bound", 23), ("parameters", 31)])
def test_a_non_finite_step_is_named_and_the_last_good_checkpoint_kept(
    tmp_path, monkeypatch, reference, capsys, what, at
):
    run = tmp_path / "run"
    _inject(monkeypatch, at, what)
    with pytest.raises(NumericalError) as e:
        aevb.train("digits", run, **SMALL)
    msg = str(e.value)
    assert f"step {at:,} " in msg and "\n" not in msg, msg
    assert ("bound was nan" if what == "bound" else "parameters non-finite") in msg
    kept = runs.load_run_tensors(run, runs.STATE)[1]["step"]
    assert 0 < kept < at  # nothing was written from the bad step on
    assert f"last good checkpoint (step {kept}, " in msg and "smaller step size" in msg
    _check_readable(run)
    TALLY["numerical_faults_injected"] += 1
    # the same fault in a resumed run, through the command line: one line, exit 2
    monkeypatch.undo()
    _inject(monkeypatch, at - kept, what)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"step {at:,} " in err and "\n" not in err
    assert runs.load_run_tensors(run, runs.STATE)[1]["step"] == kept
    monkeypatch.undo()
    # the kept checkpoint is good: resuming from it without the fault gives the reference run
    aevb.train(resume=run, progress=False, draw_figures=False)
    _assert_matches_reference(run, reference)
    TALLY["numerical_faults_caught"] += 1


def test_a_diverging_gaussian_run_stops_at_its_step(tmp_path):
    """A real divergence: the Gaussian decoder's variance collapses at a large step size."""
    for seed in (0, 1, 2, 3):  # seed 0 diverges at step 94; the others are spares
        run = tmp_path / f"run{seed}"
        kw = dict(SMALL, likelihood="gaussian", lr=0.5, budget=20_000, seed=seed)
        try:
            aevb.train("digits", run, **kw)
        except NumericalError as e:
            msg = str(e)
            break
    else:
        pytest.fail("no Gaussian run diverged at --lr 0.5")
    assert re.search(r"step \d+ .*bound was -inf.*no floor", msg), msg
    step = int(re.search(r"step ([\d,]+) ", msg).group(1).replace(",", ""))
    assert runs.load_run_tensors(run, runs.STATE)[1]["step"] < step
    _check_readable(run)
    TALLY["numerical_faults_injected"] += 1
    TALLY["numerical_faults_caught"] += 1


def test_lr_auto_skips_a_diverging_candidate(monkeypatch):
    real = training.AEVB.step

    def step(self, x, generator):  # the largest candidate diverges at its 7th step
        bound = real(self, x, generator)
        self.n_steps = getattr(self, "n_steps", 0) + 1
        lr = self.optimizer.param_groups[0]["lr"]
        return bound * float("nan") if lr == 0.1 and self.n_steps >= 7 else bound

    monkeypatch.setattr(training.AEVB, "step", step)
    kw = {k: v for k, v in SMALL.items() if k not in ("lr", "checkpoint_samples")}
    run = aevb.train("digits", lr="auto", **kw)
    search = run.config["train"]["lr_search"]
    assert search["training_bound"]["0.1"] == float("-inf")
    assert search["chosen"] in (0.01, 0.02) and run.config["train"]["lr"] == search["chosen"]


def test_gaussian_decoder_has_no_variance_floor_and_no_clamp():
    """What docs/RELIABILITY.md states: the mean is sigmoid-bounded, the log-variance is not."""
    from scipy.stats import norm

    from aevb.distributions import gaussian_log_prob
    from aevb.networks import Gaussian

    raw = torch.tensor([[-1e4, -30.0, 0.0, 30.0, 1e4]])
    lv = torch.tensor([[-1e4, -100.0, 0.0, 100.0, 1e4]])
    mean, logvar = Gaussian.constrain(raw, lv)
    assert torch.equal(logvar, lv)  # no floor, no clamp
    assert mean.min() >= 0 and mean.max() <= 1
    # exact (against scipy) wherever the float64 arithmetic is finite
    lvs = torch.linspace(-40, 40, 81, dtype=torch.float64)
    x, mu = torch.full_like(lvs, 0.3), torch.full_like(lvs, 0.7)
    got = gaussian_log_prob(mu[:, None], lvs[:, None], x[:, None])
    want = norm.logpdf(0.3, 0.7, np.exp(0.5 * lvs.numpy()))
    assert np.allclose(got.numpy(), want, rtol=1e-12, atol=0)
    # float32: finite down to a log-variance of about -88 (exp(88) is float32's largest), then
    # -inf: a collapsing variance shows as a non-finite bound, which the Trainer stops on
    f32 = dict(dtype=torch.float32)
    ok = gaussian_log_prob(torch.tensor([[0.7]], **f32), torch.tensor([[-80.0]], **f32), 0.3)
    bad = gaussian_log_prob(torch.tensor([[0.7]], **f32), torch.tensor([[-100.0]], **f32), 0.3)
    assert torch.isfinite(ok).all() and bad.item() == float("-inf")


@pytest.mark.parametrize("engine", ["fast", "autograd"])
def test_a_collapsed_variance_stops_training_at_its_step(engine):
    x = torch.from_numpy(aevb.data.load_dataset("digits").train)
    model = aevb.VAE(aevb.ModelConfig(x_dim=64, latent_dim=2, hidden=16, likelihood="gaussian"))
    with torch.no_grad():
        model.decoder.net.head.bias[64:] = -200.0  # a log-variance far below float32's range
    cfg = training.TrainConfig(lr=0.02, budget=2000, engine=engine)
    alg = training.AEVB(model, cfg, len(x), 0.02)
    assert alg.engine == engine
    trainer = training.Trainer(alg, x, None, cfg, progress=False, evaluate_points=False)
    with pytest.raises(NumericalError, match="step 1 .*bound was -inf.*no floor"):
        trainer.run()
    TALLY["numerical_faults_injected"] += 1
    TALLY["numerical_faults_caught"] += 1


# --------------------------------------------------------------------------- resources


def _fail_writes_from(monkeypatch, n: int, code: int) -> None:
    """From the n-th fsync on (every completed file write does one), writes fail with ``code``."""
    real = os.fsync
    count = {"n": 0}

    def fsync(fd):
        count["n"] += 1
        if count["n"] >= n:
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(
    "n, code",
    [(1, errno.ENOSPC), (2, errno.ENOSPC), (5, errno.EROFS), (9, errno.ENOSPC)]
    + [(14, errno.EDQUOT), (22, errno.ENOSPC), (40, errno.EROFS), (61, errno.ENOSPC)],
)
def test_a_failed_write_is_one_clear_error_and_loses_nothing(
    tmp_path, monkeypatch, reference, n, code
):
    run = tmp_path / "run"
    _fail_writes_from(monkeypatch, n, code)
    with pytest.raises((RunError, ConfigError)) as e:
        aevb.train("digits", run, **SMALL)
    msg = str(e.value)
    assert os.strerror(code) in msg and "\n" not in msg, msg
    monkeypatch.undo()
    TALLY["write_failures_injected"] += 1
    if _check_readable(run) == "none":  # failed before the run existed: start it again
        assert isinstance(e.value, ConfigError) or "config.json" in msg
        aevb.train("digits", run, **SMALL)
    else:
        assert "is intact" in msg and "--resume" in msg
        aevb.train(resume=run, progress=False, draw_figures=False)
    _assert_matches_reference(run, reference)
    TALLY["write_failures_recovered"] += 1


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=300_000))
    argv = ["train", "--out", str(tmp_path / "run"), "--budget", "1000", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aevb: error:") and "0.3 MiB free" in err and "\n" not in err
    assert not runs.has_file(tmp_path / "run", runs.STATE)


# Real file systems: a small tmpfs (needs root and permission to mount; else skipped).


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(size: str, *options: str) -> Path:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root")
        opts = ",".join([f"size={size}", *options])
        action = ["-o", f"remount,{opts}"] if mounted else ["-t", "tmpfs", "-o", opts, "tmpfs"]
        r = subprocess.run(["mount", *action, str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(True)
        return mnt

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_read_only_location_is_refused_before_training(tmpfs, capsys):
    mnt = tmpfs("4m", "ro")
    assert main(["train", "--out", str(mnt / "run"), "--budget", "1000", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Read-only file system" in err and "\n" not in err
    TALLY["real_fs_cases"] += 1


def test_a_full_location_is_refused_before_training(tmpfs, capsys):
    mnt = tmpfs("1m")
    assert main(["train", "--out", str(mnt / "run"), "--budget", "1000", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "MiB free" in err and "\n" not in err
    TALLY["real_fs_cases"] += 1


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_location_that_fills_or_turns_read_only_mid_run(tmpfs, monkeypatch, reference, fault):
    mnt = tmpfs("16m")
    run = mnt / "run"
    real = training.Trainer.checkpoint
    calls = {"n": 0}

    def checkpoint(self):
        real(self)
        calls["n"] += 1
        if calls["n"] == 3:  # after the third checkpoint the location fills or turns read-only
            if fault == "full":
                with open(mnt / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
                    while True:
                        f.write(b"\0" * (1 << 16))
            else:
                tmpfs("16m", "ro")

    monkeypatch.setattr(training.Trainer, "checkpoint", checkpoint)
    with pytest.raises(RunError) as e:
        aevb.train("digits", run, **SMALL)
    why = "No space left on device" if fault == "full" else "Read-only file system"
    assert why in str(e.value) and "is intact" in str(e.value)
    monkeypatch.undo()
    if fault == "full":
        (mnt / "filler").unlink()
    else:
        tmpfs("16m", "rw")
    _check_readable(run)
    aevb.train(resume=run, progress=False, draw_figures=False)
    _assert_matches_reference(run, reference)
    TALLY["real_fs_cases"] += 1


def test_checkpoint_options_are_validated(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "a"), "--checkpoint-samples", "0"])
    assert e.value.code == 2 and "--checkpoint-samples" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "b"), "--checkpoint-seconds", "nan"]) == 2
    assert "--checkpoint-seconds must be positive" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="checkpoint-seconds"):
        training.TrainConfig(checkpoint_seconds=-1)
    with pytest.raises(ConfigError, match="checkpoint-samples"):
        training.TrainConfig(checkpoint_samples=0)


# --------------------------------------------------------------------------- kill -9 (last: its
# processes boot while the tests above run)


class CrashRig:
    """Started with the module, so that its processes boot while the other tests run: the fork
    server, and the installed ``aevb`` command in a fresh interpreter, which a thread SIGKILLs
    at a random moment once it is training (the kill test's first trial)."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.run0 = root / "run0"
        self.log0 = root / "p0.log"
        with open(self.log0, "wb") as log:
            self.real = subprocess.Popen(
                [*_aevb_command(), *ARGV, "--out", str(self.run0)],
                env=ENV,
                stdout=log,
                stderr=log,
            )
        self.server = ForkServer()
        self.delay = rng.uniform(0.0, 0.3)
        self.killer = threading.Thread(target=self._kill_when_training, daemon=True)
        self.killer.start()

    def _kill_when_training(self) -> None:
        deadline = time.monotonic() + 600
        while self.real.poll() is None and time.monotonic() < deadline:
            if (self.run0 / runs.MANIFEST).exists() and runs.has_file(self.run0, runs.STATE):
                time.sleep(self.delay)
                break
            time.sleep(0.01)
        self.real.kill()

    def first_trial(self) -> int:
        """The exit code of the real command (-9 when the kill came while it ran)."""
        self.killer.join()
        return self.real.wait()

    def close(self) -> None:
        if self.real.poll() is None:
            self.real.kill()
            self.real.wait()
        self.server.close()


@pytest.fixture(scope="module", autouse=True)
def crash_rig(request, tmp_path_factory):
    if not any(item.name.startswith("test_kill9") for item in request.session.items):
        yield None  # the kill test is not selected: start nothing
        return
    rig = CrashRig(tmp_path_factory.mktemp("crash"), random.Random(2024))
    yield rig
    rig.close()


def test_kill9_at_random_moments_then_resume_is_bitwise_identical(crash_rig):
    """SIGKILL `aevb train` at random moments and inside checkpoint writes; resume finishes with
    the parameters (and metrics) of an uninterrupted run, and no kill leaves the run unreadable.

    The first trial is the installed ``aevb`` command in a fresh interpreter; the others are
    processes forked by tests/reliability_kit.py's server (the same command without the
    seconds of start-up), killed from outside after a random delay or by themselves at an exact
    point inside a write.
    """
    rng = random.Random(2025)  # the same trials on every run of the suite
    tmp_path, server = crash_rig.root, crash_rig.server
    chains = [crash_rig.run0]
    run = chains[0]
    kills = mid_write = 0

    def after_kill(code: int, log: Path, in_write: bool) -> None:
        nonlocal kills, mid_write
        assert code == -signal.SIGKILL, log.read_text()
        kills += 1
        TALLY["kill_trials"] += 1
        TALLY["kill_trials_in_write" if in_write else "kill_trials_random"] += 1
        if run.exists() and any(runs.is_leftover(p) for p in run.rglob(".*")):
            mid_write += 1  # the kill left a write unfinished
        _check_readable(run)  # raises if any file of the run cannot be read back
        TALLY["kill_trials_readable_after"] += 1

    try:
        ref = tmp_path / "ref"  # the uninterrupted run; how long one takes sets the delays
        t0 = time.perf_counter()
        assert server.wait(server.start([*ARGV, "--out", str(ref)], tmp_path / "ref.log")) == 0
        whole = time.perf_counter() - t0
        # trial 0: the real command, killed once it was training
        code = crash_rig.first_trial()
        if code == 0:  # it finished before the kill came: a complete chain
            run = None
        else:
            after_kill(code, crash_rig.log0, False)
        # the others: None = SIGKILL from outside after a random delay; else the worker kills
        # itself at the n-th occurrence of an exact point inside a write
        faults: list = [None] * 5 + [
            ("failpoint", "pending-written", 1),  # a resume's first commit, or config.json's
            ("failpoint", "pending-written", rng.randint(2, 5)),
            ("failpoint", "committed", rng.randint(1, 5)),
            ("failpoint", "renamed:training_state", rng.randint(1, 4)),
            ("partial-write", rng.randint(1, 8)),
            ("partial-metrics", rng.randint(1, 3)),
        ]
        rng.shuffle(faults)
        retried: set[int] = set()
        i = 0
        while faults and i < 30:
            fault = faults.pop(0)
            i += 1
            if run is None:
                run = tmp_path / f"run{len(chains)}"
                chains.append(run)
            argv = (
                ["train", "--resume", str(run), "--device", "cpu", "--quiet"]
                if (run / runs.MANIFEST).exists()
                else [*ARGV, "--out", str(run)]
            )
            log = tmp_path / f"p{i}.log"
            pid = server.start(argv, log, list(fault) if fault else None)
            if fault is None:
                time.sleep(rng.uniform(0.02, 0.8) * whole)
                os.kill(pid, signal.SIGKILL)
            code = server.wait(pid)
            if code == 0:  # it finished first: this chain is complete; begin another
                run = None
                if i not in retried:  # and try the same fault once more, in the new chain
                    retried.add(i)
                    faults.insert(0, fault)
                continue
            after_kill(code, log, fault is not None)
        if run is not None:  # finish the last chain
            argv = ["train", "--resume", str(run), "--device", "cpu", "--quiet"]
            if not (run / runs.MANIFEST).exists():
                argv = [*ARGV, "--out", str(run)]
            assert server.wait(server.start(argv, tmp_path / "end.log")) == 0
    finally:
        crash_rig.close()
    for run in chains:
        _assert_matches_reference(run, ref)
        assert not [p for p in run.rglob(".*") if runs.is_leftover(p)]
        TALLY["kill_chains_bitwise_identical"] += 1
    TALLY["kill_trials_mid_write"] += mid_write
    assert kills >= 10
