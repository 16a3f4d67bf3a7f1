"""End to end: ``aevb train`` from the command line against the engine's rate in bench_train.

The command runs as a user runs it (a child process, with its progress bar, evaluations,
checkpoints and figures) on binarized MNIST at the paper's setting (784-500-20, M = 100, Adagrad,
lr 0.02, estimator B), timed from launch to exit. Side by side in the same process tree,
bench_train's ``aevb`` worker measures the engine's rate on the same shapes and threads, before
and after the command (the machine may be shared). The report gives the end-to-end rate as a
fraction of the engine's and where the rest of the wall time went, from the command's own
``time:`` line: start-up (imports, data, model), evaluations, checkpoints, figures.

    AEVB_DATA_DIR=../shared/data python benchmarks/bench_end_to_end.py              # 10^6 samples
    AEVB_DATA_DIR=../shared/data python benchmarks/bench_end_to_end.py --budget 3e5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402

TIME_LINE = re.compile(
    r"time: training ([\d.]+) s \(([\d,]+) samples/s\), evaluations ([\d.]+) s, "
    r"checkpoints ([\d.]+) s, figures ([\d.]+) s"
)


def run_command(args: argparse.Namespace, out: Path) -> dict:
    """``aevb train`` in a child process: its wall time and its own account of the time."""
    cmd = [
        *(sys.executable, "-m", "aevb", "train", "--data", args.data),
        *("--latent-dim", str(args.latent), "--hidden", str(args.hidden), "--lr", "0.02"),
        *("--budget", str(args.budget), "--out", str(out)),
    ]
    env = dict(os.environ, AEVB_OFFLINE="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in the child
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"bench_end_to_end: aevb train failed: {p.stderr.strip()[-500:]}")
    m = TIME_LINE.search(p.stdout)
    if m is None:
        raise SystemExit(f"bench_end_to_end: no 'time:' line in aevb train's output:\n{p.stdout}")
    training, _, evals, ckpts, figs = (float(v.replace(",", "")) for v in m.groups())
    samples = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["samples_seen"]
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": wall,
        "samples": samples,
        "training_s": training,
        "evaluation_s": evals,
        "checkpoint_s": ckpts,
        "figures_s": figs,
        "startup_and_rest_s": wall - training - evals - ckpts - figs,
    }


def engine_worker(args: argparse.Namespace) -> bench_train.Worker:
    """bench_train's aevb worker at the same shapes and threads, set up and warmed up."""
    spec = {
        **dict(data="mnist", M=args.M, latent=args.latent, hidden=args.hidden, depth=1),
        **dict(activation="tanh", samples=1, estimator="B", optimizer="adagrad"),
        **dict(algorithm="aevb", engine="auto", device="cpu", threads=args.threads),
        **dict(warmup=max(2_000, 2 * args.M), clock="wall"),
    }
    w = bench_train.Worker("aevb", spec)
    w.wait_ready()
    return w


def engine_rates(w: bench_train.Worker, args: argparse.Namespace) -> list[float]:
    """``args.reps`` chunks of the engine: samples/s each (wall clock)."""
    before = len(w.rates)
    for _ in range(args.reps):
        w.measure(args.chunk)
    return w.rates[before:]


def report(args: argparse.Namespace, before: list[float], cmd: dict, after: list[float]) -> dict:
    from aevb.hardware import describe_cpu

    engine = statistics.median(before + after)
    e2e = cmd["samples"] / cmd["wall_s"]
    loop = cmd["samples"] / cmd["training_s"]
    print(f"CPU: {describe_cpu()}; threads {args.threads or 'default'}")
    print(f"command: aevb {cmd['command'].split(' ', 2)[2]}")
    print(
        f"engine (bench_train aevb worker, 784-{args.hidden}-{args.latent}, M={args.M}): "
        f"{engine:,.0f} samples/s (median of {len(before)} chunks before, {len(after)} after; "
        f"{min(before + after):,.0f}..{max(before + after):,.0f})"
    )
    print(
        f"aevb train end to end: {cmd['samples']:,} samples in {cmd['wall_s']:.1f} s = "
        f"{e2e:,.0f} samples/s = {100 * e2e / engine:.0f}% of the engine"
    )
    print(
        f"  its training steps alone: {cmd['training_s']:.1f} s = {loop:,.0f} samples/s = "
        f"{100 * loop / engine:.0f}% of the engine"
    )
    rest = cmd["wall_s"] - cmd["training_s"]
    print(f"  the other {rest:.1f} s ({100 * rest / cmd['wall_s']:.0f}% of the wall time):")
    for key, what in (
        ("evaluation_s", "evaluations (train and test bounds)"),
        ("checkpoint_s", "checkpoints"),
        ("figures_s", "figures"),
        ("startup_and_rest_s", "start-up: interpreter, imports, data, model; and exit"),
    ):
        print(f"    {what:<56} {cmd[key]:7.1f} s")
    return {"cpu": describe_cpu(), "engine": engine, "end_to_end": e2e, "loop": loop, **cmd}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="binarized-mnist", help="aevb train's --data")
    ap.add_argument("--budget", type=float, default=1e6, help="training samples of the command")
    ap.add_argument("--latent", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("-M", type=int, default=100, help="the engine's minibatch (aevb's default)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--reps", type=int, default=3, help="engine chunks before and after each")
    ap.add_argument("--chunk", type=int, default=30_000, help="samples per engine chunk")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    args.budget = int(args.budget)
    worker = engine_worker(args)  # one warm worker measures before and after the command
    before = engine_rates(worker, args)
    with tempfile.TemporaryDirectory(prefix="aevb-e2e-") as tmp:
        cmd = run_command(args, Path(tmp) / "run")
    after = engine_rates(worker, args)
    worker.close()
    res = report(args, before, cmd, after)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
