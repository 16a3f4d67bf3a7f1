"""Full or read-only output locations (docs/RELIABILITY.md): a failed write is one clear error
and loses nothing (resuming gives the uninterrupted run); too little space or a read-only place
is refused before training; a location that fills or turns read-only mid-run is survived."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fault_injection import TALLY, assert_matches_reference, check_readable
from helpers import CHECKPOINTED_RUN

import aevb
from aevb import runs, training
from aevb.cli import main
from aevb.errors import ConfigError, RunError


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
    tmp_path, monkeypatch, small_run, reference_run, n, code
):
    run = tmp_path / "run"
    _fail_writes_from(monkeypatch, n, code)
    with pytest.raises((RunError, ConfigError)) as e:
        small_run(run, **CHECKPOINTED_RUN)
    msg = str(e.value)
    assert os.strerror(code) in msg and "\n" not in msg, msg
    monkeypatch.undo()
    TALLY["write_failures_injected"] += 1
    if check_readable(run) == "none":  # failed before the run existed: start it again
        assert isinstance(e.value, ConfigError) or "config.json" in msg
        small_run(run, **CHECKPOINTED_RUN)
    else:
        assert "is intact" in msg and "--resume" in msg
        aevb.train(resume=run, progress=False, draw_figures=False)
    assert_matches_reference(run, reference_run)
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
def test_a_location_that_fills_or_turns_read_only_mid_run(
    tmpfs, monkeypatch, small_run, reference_run, fault
):
    mnt = tmpfs("16m")
    run = mnt / "run"
    real = training.Trainer.checkpoint
    calls = {"n": 0}

    def checkpoint(self, *args):
        real(self, *args)
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
        small_run(run, **CHECKPOINTED_RUN)
    why = "No space left on device" if fault == "full" else "Read-only file system"
    assert why in str(e.value) and "is intact" in str(e.value)
    monkeypatch.undo()
    if fault == "full":
        (mnt / "filler").unlink()
    else:
        tmpfs("16m", "rw")
    check_readable(run)
    aevb.train(resume=run, progress=False, draw_figures=False)
    assert_matches_reference(run, reference_run)
    TALLY["real_fs_cases"] += 1
