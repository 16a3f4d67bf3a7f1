"""What the fault-injection tests share (docs/RELIABILITY.md): the trial counts, the released run
fixtures, and the checks that a run directory reads completely and matches an uninterrupted run.

Every trial is counted in ``TALLY``; with ``AEVB_RELIABILITY_TALLY=FILE`` the counts are added to
that JSON file at the end of the test session (conftest.py; the figures in docs/RELIABILITY.md
come from such a run).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

import aevb
from aevb import runs

TESTS = Path(__file__).parent
FIXTURE_V1 = TESTS / "fixtures" / "run_format1"
FIXTURES = {1: FIXTURE_V1, 2: TESTS / "fixtures" / "run_format2"}
"""A small run of every released run format (tests/fixtures/README.md)."""

TALLY: Counter = Counter()
"""Trials by kind, over every fault-injection test of the session."""


def add_to_tally_file(tally: dict[str, int]) -> None:
    """Add trial counts to the JSON file $AEVB_RELIABILITY_TALLY names, if any."""
    path = os.environ.get("AEVB_RELIABILITY_TALLY")
    if not path:
        return
    # the suite's workers (pytest-xdist) add their counts one at a time
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        for k, v in tally.items():
            old[k] = old.get(k, 0) + v
        Path(path).write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def strip_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def check_readable(run: Path) -> str:
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


def assert_matches_reference(run: Path, ref: Path) -> None:
    """``run`` ended with the parameters (bitwise) and metrics of the uninterrupted ``ref``."""
    assert same_tensors(run / runs.MODEL, ref / runs.MODEL)  # bitwise
    assert strip_seconds(runs.read_metrics(run)) == strip_seconds(runs.read_metrics(ref))
    runs.verify_run(run)
