"""Data larger than memory: peak resident memory and throughput of --memory-map against loading.

Writes a large uint8 .npy of binarized MNIST rows (the real training images of
$AEVB_DATA_DIR/binarized_mnist, repeated to the size asked for), then trains the paper's MNIST
model (784-500-20, minibatch 100, Adagrad) in child processes, one at a time, each reporting its
own peak RSS (VmHWM) and training throughput:

1. ``--memory-map`` on the large file (larger than the memory a run may use);
2. ``--memory-map`` and the in-memory path on the 50 000-row file (throughput ratio, and the
   models compared bitwise).

    python benchmarks/bench_memory_map.py --gib 4 --budget 200000

The CPU is named beside every figure; results go to stdout and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aevb.hardware import describe_cpu

CHILD = r"""
import json, sys, time
import aevb

def peak_rss_mib():
    # VmHWM: this process's own peak (getrusage's ru_maxrss survives exec, so it would report
    # the parent's peak, which mapped the large file while writing it)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
spec, out, budget, mapped = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
t0 = time.perf_counter()
run = aevb.train(spec, out, budget=budget, hidden=500, latent_dim=20, batch_size=100,
                 binarize="none", memory_map=mapped, eval_per_decade=1, progress=False,
                 draw_figures=False)
wall = time.perf_counter() - t0
last = run.metrics[-1]
print(json.dumps({"wall_s": wall, "train_s": last["seconds"], "samples": last["samples_seen"],
                  "test_bound": last.get("test_bound"),
                  "peak_rss_mib": peak_rss_mib()}))
"""


def binarized_mnist_rows() -> np.ndarray:
    """The 50 000 binarized MNIST training images as uint8 rows."""
    from aevb.data import load_dataset

    ds = load_dataset("binarized-mnist", splits=("train",), progress=False)
    return ds.train.astype(np.uint8)


def write_big(path: Path, rows: np.ndarray, gib: float) -> int:
    """An .npy of ``gib`` GiB: ``rows`` repeated, written a copy at a time (never all in memory)."""
    n = int(gib * 2**30) // rows.shape[1]
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, rows.shape[1]):
        return n
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, rows.shape[1]))
    for lo in range(0, n, len(rows)):
        out[lo : lo + len(rows)] = rows[: n - lo]
        out.flush()
    del out
    return n


def run_child(spec: Path, out: Path, budget: int, mapped: bool) -> dict:
    """One training run in its own process; its own peak RSS and throughput."""
    cmd = [sys.executable, "-c", CHILD, str(spec), str(out), str(budget), "1" if mapped else "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["samples_per_s"] = r["samples"] / r["train_s"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0, help="size of the large file (GiB)")
    ap.add_argument("--budget", type=int, default=200_000, help="training samples per run")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the files")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="aevb-mmap-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = binarized_mnist_rows()
    small = work / "binarized_mnist_train.npy"
    np.save(small, rows)
    t0 = time.perf_counter()
    n = write_big(work / "big.npy", rows, a.gib)
    size = (work / "big.npy").stat().st_size
    print(f"CPU: {describe_cpu()}")
    print(
        f"large file: {n:,} rows x 784 uint8 = {size / 2**30:.2f} GiB "
        f"(written in {time.perf_counter() - t0:.0f} s)"
    )
    results = {"cpu": describe_cpu(), "file_gib": size / 2**30, "budget": a.budget}
    for key, spec, mapped in (
        ("large_mapped", work / "big.npy", True),
        ("small_mapped", small, True),
        ("small_in_memory", small, False),
    ):
        out = work / f"run_{key}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        r = run_child(spec, out, a.budget, mapped)
        results[key] = r
        print(
            f"{key:>16}: peak RSS {r['peak_rss_mib']:7.0f} MiB, "
            f"{r['samples_per_s']:8.0f} samples/s training, wall {r['wall_s']:.0f} s "
            f"(start-up {r['wall_s'] - r['train_s']:.0f} s), test bound {r['test_bound']:.2f}"
        )
    ratio = results["small_mapped"]["samples_per_s"] / results["small_in_memory"]["samples_per_s"]
    same = _same_weights(work / "run_small_mapped", work / "run_small_in_memory")
    results.update(mapped_over_in_memory=ratio, bitwise_equal=same)
    print(
        f"throughput mapped / in memory (same 50 000 rows): {ratio:.2f}; "
        f"models bitwise equal: {same}"
    )
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.numpy import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


if __name__ == "__main__":
    main()
