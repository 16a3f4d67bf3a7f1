"""The benchmark scripts of docs/PERFORMANCE.md and docs/EVALUATION.md run and report consistently.

No timing is asserted (the machines are shared): the checks are on what the scripts measure and
how they report it, at their smallest sizes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import bench_train  # noqa: E402

from aevb.hardware import bf16_instructions, describe_cpu  # noqa: E402


def run_bench(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, AEVB_OFFLINE="1")  # never download from a test
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def rows(out: str) -> dict[str, list[str]]:
    """Contender rows of a report: name -> its columns."""
    found = {}
    for line in out.splitlines():
        m = re.match(
            r"^((?:aevb|autograd|plain|ceiling|ref-aevb|ref-ceiling)(?:-bf16)?)(?: \[(\w+)\])?"
            r"\s+(\d[\d,]*\s.*)$",  # a row starts with its rate (not "aevb bf16 / ...")
            line,
        )
        if m:
            found[m.group(1)] = [m.group(2) or "", *m.group(3).split()]
    return found


SHORT = ("--reps", "2", "--chunk", "600", "--warmup", "100", "--threads", "1")
"""Chunks long enough for a report, short enough for a test: the tests check the reports."""


def test_bench_train_quick_reports_three_contenders():
    r = run_bench(str(BENCH / "bench_train.py"), "--quick", "--threads", "1")
    assert r.returncode == 0, r.stderr
    got = rows(r.stdout)
    assert set(got) == {"aevb", "plain", "ceiling"}
    engine, rate, spread, x_plain, pct, faults, *_ = got["aevb"]
    assert engine == "fast"  # the paper's model runs on the fast engine
    lo, hi = (float(v.replace(",", "")) for v in spread.split(".."))
    assert lo <= float(rate.replace(",", "")) <= hi
    assert got["plain"][3] == "1.00" and got["ceiling"][4] == "100%"
    # the plain loop's freed temporaries are faulted back in every step (about 1 000 faults);
    # aevb's buffers are preallocated (0 in a steady run; short chunks may catch a stray one)
    assert int(got["plain"][5]) > 100 and int(faults) * 10 < int(got["plain"][5])
    m = re.search(
        r"aevb / plain ([\d.]+)x, aevb / ceiling (\d+)%, ceiling / plain ([\d.]+)x", r.stdout
    )
    assert m, r.stdout
    assert float(m.group(1)) > 0 and int(m.group(2)) > 0 and float(m.group(3)) > 0


def test_bench_train_modern_runs_the_deeper_model_on_both_engines():
    """--modern: the 784-200-200-50 ReLU model, aevb's fast engine beside the autograd engine."""
    two = ("--contenders", "aevb,autograd")  # the plain loop and the ceiling: the test above
    r = run_bench(str(BENCH / "bench_train.py"), "--modern", *SHORT, *two)
    assert r.returncode == 0, r.stderr
    got = rows(r.stdout)
    assert set(got) == {"aevb", "autograd"}
    assert got["aevb"][0] == "fast" and got["autograd"][0] == "autograd"
    assert re.search(r"aevb's engine / the autograd engine, per round: ([\d.]+)x", r.stdout)
    assert "(784-200-200-50 bernoulli, relu" in r.stdout


def test_bench_train_bf16_rows_run_the_bf16_step_and_its_ceiling():
    """--bf16: aevb's bf16 step (on the fast engine) beside the bf16 ceiling; on a CPU without
    bf16 instructions the report says the path was forced."""
    small = ("--hidden", "32", "--latent", "3", "-M", "20", "--contenders", "", "--bf16")
    short = ("--reps", "2", "--chunk", "400", "--warmup", "40", "--threads", "1")
    r = run_bench(str(BENCH / "bench_train.py"), *small, *short)
    assert r.returncode == 0, r.stderr
    got = rows(r.stdout)
    assert set(got) == {"aevb-bf16", "ceiling-bf16"}  # (aevb's float32 row: the tests above)
    assert got["aevb-bf16"][0] == "fast"
    assert re.search(r"aevb bf16 / the bf16 ceiling, per round: [\d.]+x", r.stdout)
    assert f"CPU: {describe_cpu()}" in r.stdout
    said = "bf16 instructions: " if bf16_instructions() else "the bf16 path was forced"
    assert said in r.stdout


def test_bench_train_breakdown_splits_the_fast_step():
    """--breakdown: aevb's step beside the ceiling's, split by torch.profiler into the products,
    the fused optimizer and the other operators (the likelihood's softplus and sigmoid)."""
    small = ("--hidden", "64", "--latent", "5", "-M", "50", "--breakdown")
    r = run_bench(str(BENCH / "bench_train.py"), *small, *SHORT)
    assert r.returncode == 0, r.stderr
    assert f"CPU: {describe_cpu()}" in r.stdout and "(784-64-5 bernoulli" in r.stdout
    us = {
        k: float(v)
        for k, v in re.findall(
            r"^  (step|products|optimizer|other operators)\s+(\d+) us", r.stdout, re.M
        )
    }
    assert set(us) == {"step", "products", "optimizer", "other operators"}, r.stdout
    assert all(v > 0 for v in us.values())
    assert us["products"] + us["optimizer"] < us["step"]
    m = re.search(r"ceiling's step (\d+) us: aevb at (\d+)%", r.stdout)
    assert m and 0 < int(m.group(2)) < 1000
    others = re.search(r"other operators\s+\d+ us  \((.*)\)", r.stdout).group(1)
    assert "softplus" in others and "sigmoid" in others  # the Bernoulli likelihood's kernels


def test_bench_end_to_end_accounts_for_the_command_wall_time(shared_data_dir):
    """aevb train from the command line beside the engine: rates and where the time went."""
    small = ("--budget", "2000", "--hidden", "40", "--latent", "3", "--threads", "1")
    r = run_bench(
        str(BENCH / "bench_end_to_end.py"), *small, "--reps", "1", "--chunk", "1000", timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert f"CPU: {describe_cpu()}" in r.stdout
    assert "aevb train --data binarized-mnist --latent-dim 3 --hidden 40 --lr 0.02" in r.stdout
    m = re.search(r"end to end: 2,000 samples in ([\d.]+) s = [\d,]+ samples/s = (\d+)%", r.stdout)
    assert m, r.stdout
    parts = [float(v) for v in re.findall(r"^ {4}\D+?\s+(-?[\d.]+) s$", r.stdout, re.M)]
    training = float(re.search(r"training steps alone: ([\d.]+) s", r.stdout).group(1))
    assert len(parts) == 4 and all(p >= 0 for p in parts[:3])
    # the command's wall time is its training steps plus the four parts listed
    assert abs(training + sum(parts) - float(m.group(1))) < 0.5


def test_bench_train_wake_sleep_on_frey_adds_aevb_reference_rows():
    r = run_bench(
        str(BENCH / "bench_train.py"),
        *SHORT,
        *("--data", "frey", "--algorithm", "wake-sleep"),
    )
    assert r.returncode == 0, r.stderr
    assert "frey shapes (560-200-20 gaussian" in r.stdout
    got = rows(r.stdout)
    assert set(got) == {"aevb", "plain", "ceiling", "ref-aevb", "ref-ceiling"}
    assert got["aevb"][0] == "fast" and got["ref-aevb"][0] == "fast"
    assert got["ref-aevb"][3] == "-"  # no ratio of AEVB's rows to wake-sleep's plain loop
    assert re.search(r"wake-sleep's cost per datapoint = [\d.]+x AEVB's", r.stdout)
    assert re.search(r"its matrix products alone: [\d.]+x AEVB's", r.stdout)


def test_bench_train_iwae_compares_the_engines_and_the_ceiling():
    """--estimator iwae: no plain loop (it has no IWAE); the autograd engine takes its place."""
    small = ("--hidden", "32", "--latent", "3", "-M", "20", "--estimator", "iwae")
    r = run_bench(str(BENCH / "bench_train.py"), *small, "--samples", "3", *SHORT)
    assert r.returncode == 0, r.stderr
    assert "no plain loop for iwae" in r.stdout
    got = rows(r.stdout)
    assert set(got) == {"aevb", "autograd", "ceiling"}
    assert got["aevb"][0] == "fast" and got["autograd"][0] == "autograd"
    assert "K=3, estimator iwae, adagrad" in r.stdout
    assert re.search(r"aevb's engine / the autograd engine, per round: [\d.]+x", r.stdout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_bench_train_cuda_without_gpu_is_one_line():
    r = run_bench(str(BENCH / "bench_train.py"), "--device", "cuda", "--quick")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "bench_train: --device cuda was asked for but this PyTorch sees no CUDA GPU; "
        "use --device cpu"
    ]


def test_per_round_ratios_pair_the_chunks_of_one_round():
    res = {
        "aevb": {"rates": [30.0, 10.0, 40.0]},
        "plain": {"rates": [10.0, 5.0, 20.0]},
        "ceiling": {"rates": [40.0, 10.0, 50.0]},
    }
    q = bench_train.per_round(res)
    assert q == {"aevb/plain": 2.0, "aevb/ceiling": 0.8, "ceiling/plain": 2.5}
    # medians of the rates would give 30/10 = 3.0: a slow round must not be compared with a fast one
    assert bench_train.per_round({"aevb": {"rates": [1.0]}}) == {}


def test_bench_marginal_json(tmp_path):
    shared = os.environ.get("AEVB_DATA_DIR", "")
    real = bool(shared) and Path(shared).is_dir()
    data_dir = shared if real else str(tmp_path)  # an empty folder: the script uses random data
    r = run_bench(
        str(BENCH / "bench_marginal.py"),
        *("--points", "6", "--samples", "100", "--segments", "2", "--threads", "1"),
        *("--data-dir", data_dir, "--json"),
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["points_timed"] == 6 and out["importance_samples"] == 100
    assert out["full_split_extrapolated"] is True and out["split_points"] == 10_000
    assert 0 < out["fraction_range"][0] <= out["fraction_of_matmul"] <= out["fraction_range"][1]
    # log p(x) of binary 784-pixel images under the paper's initialisation: about 784 log 2 nats
    assert -784 * 0.75 < out["log_px_mean"] < -784 * 0.6
    if real:
        assert out["data"] == "binarized-mnist test"
    else:
        assert out["data"] == "random 10000x784"


def test_bench_bf16_accuracy_table_is_what_performance_md_reports(capsys, monkeypatch):
    """The accuracy tables of docs/PERFORMANCE.md are the script's summaries of the recorded runs:
    the first three seeds at each budget, and every seed."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_bf16_accuracy

    doc = (ROOT / "docs/PERFORMANCE.md").read_text()
    results = str(BENCH / "results/bf16_accuracy.jsonl")
    checked = 0
    for seeds in (["--seeds", "3"], []):
        bench_bf16_accuracy.main(["--table", "--out", results, *seeds])
        for row in capsys.readouterr().out.splitlines():
            if not row.startswith(("| test bound |", "| IS log p(x)")):
                continue
            cells = [c.strip().replace("-", "−") for c in row.strip("|").split("|")]
            f32, b16 = (c.split(" (n=")[0] for c in cells[1:3])
            assert f"| {f32} | {b16} | {cells[3]} | " in doc, row
            assert cells[4] in doc, row
            checked += 1
    assert checked == 8  # two metrics, two budgets, two seed counts
