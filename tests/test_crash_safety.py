"""Crash safety (docs/RELIABILITY.md): ``aevb train`` killed with SIGKILL at random moments and
inside its checkpoint writes resumes to the parameters and metrics of an uninterrupted run, and
no kill leaves the run unreadable.
The checkpoint cadence options are validated; ``aevb info`` says where the checkpoint stands."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fault_injection import TALLY, TESTS, assert_matches_reference, check_readable
from helpers import CHECKPOINTED_RUN

import aevb
from aevb import runs, training
from aevb.callbacks import Callback
from aevb.cli import main
from aevb.errors import ConfigError


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
    """tests/fork_server.py's server: forks a process per ``aevb`` command."""

    def __init__(self) -> None:
        env = dict(ENV, PYTHONPATH=os.pathsep.join([str(TESTS), ENV.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import fork_server as k; k.serve()"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.ready = False

    def wait_ready(self) -> None:
        """Wait until the server has imported torch and aevb (its first line)."""
        if not self.ready:
            assert json.loads(self.proc.stdout.readline()) == {"ready": True}
            self.ready = True

    def _ask(self, **req) -> dict:
        self.wait_ready()
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


class CrashRig:
    """Started with the module, so that its processes boot while the tests before the kill test
    run: the fork server, and the installed ``aevb`` command in a fresh interpreter, which a
    thread SIGKILLs at a random moment once it is training (the kill test's first trial)."""

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
    processes forked by tests/fork_server.py's server (the same command without the
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
        check_readable(run)  # raises if any file of the run cannot be read back
        TALLY["kill_trials_readable_after"] += 1

    try:
        # trial 0: the real command, killed once it was training. First, and with the server
        # ready, so that nothing else starts up while the reference run below is timed.
        code = crash_rig.first_trial()
        if code == 0:  # it finished before the kill came: a complete chain
            run = None
        else:
            after_kill(code, crash_rig.log0, False)
        server.wait_ready()
        ref = tmp_path / "ref"  # the uninterrupted run; how long one takes sets the delays
        t0 = time.perf_counter()
        assert server.wait(server.start([*ARGV, "--out", str(ref)], tmp_path / "ref.log")) == 0
        whole = time.perf_counter() - t0
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
        assert_matches_reference(run, ref)
        assert not [p for p in run.rglob(".*") if runs.is_leftover(p)]
        TALLY["kill_chains_bitwise_identical"] += 1
    TALLY["kill_trials_mid_write"] += mid_write
    assert kills >= 10


class _StopAtCheckpoint(Callback):
    """Stops training (as a crash would) at its first checkpoint after 1 500 samples."""

    def on_checkpoint(self, trainer) -> None:
        if trainer.samples_seen >= 1500:
            raise RuntimeError("stopped here")


def test_info_shows_a_checkpoint_ahead_of_the_last_evaluation(small_run, tmp_path, capsys):
    """A long run between two evaluations: info says where its resumable state stands."""
    run = tmp_path / "run"
    kw = dict(CHECKPOINTED_RUN, checkpoint_samples=500, eval_per_decade=1)
    with pytest.raises(RuntimeError, match="stopped here"):
        small_run(run, **kw, callbacks=[_StopAtCheckpoint()])
    card = aevb.info(run)
    c, seen = card["checkpoint"], card["training"]["samples_seen"]
    _, meta = runs.load_run_tensors(run, runs.STATE)
    assert c["samples_seen"] == meta["samples_seen"] == 1500 and seen == 1000 < 1500
    assert c["budget"] == 4000 and c["seconds"] == meta["seconds"] > 0
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    assert "checkpoint: 1,500 of 4,000 samples" in text and "--resume RUNDIR" in text
    aevb.train(resume=run, progress=False)  # the same state resumes to the end
    assert (
        aevb.info(run)["checkpoint"]["samples_seen"]
        == 4000
        == aevb.info(run)["training"]["samples_seen"]
    )
