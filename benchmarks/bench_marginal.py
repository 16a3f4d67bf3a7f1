"""Importance-sampling throughput: decoder evaluations per second against the machine's matmul rate.

The paper-size model (784-500-20, Bernoulli decoder) estimates log p(x) by importance sampling
with K = 5 000 draws per test image (``aevb.marginal.importance_sampling``, the code behind
``aevb evaluate --marginal is``). Almost all of its work is the decoder's two matrix products, so
the natural ceiling is the rate of a plain matrix product of the decoder's big layer, (chunk x 500)
@ (500 x 784), measured in the same run. The benchmark interleaves the two: for each segment of
points it times a one-second burst of those matrix products, importance sampling on the segment,
and another burst, so both see the same load on a shared machine. It reports

- decoder evaluations per second (one evaluation = one z decoded and scored against its x);
- that rate times the decoder's matmul FLOPs per evaluation, 2 (J H + H D), as a fraction of the
  matmul rate (median over segments; the target is >= 60 %);
- the wall time per point, and the full evaluation's wall time: measured when ``--points`` is the
  whole split, otherwise extrapolated from the points timed (said so in the output).

Data: the test split of ``--data`` (default ``binarized-mnist``, read with the data layer from
``--data-dir`` or $AEVB_DATA_DIR); if it cannot be read, random binary images of the same shape
(10 000 x 784, mean 0.13) -- the timing does not depend on the pixel values. Weights: a trained run
(``--run RUNDIR``) or the paper's initialisation N(0, 0.01^2); timing does not depend on them.

    python benchmarks/bench_marginal.py                       # 200 test points, extrapolated
    python benchmarks/bench_marginal.py --points 10000        # the full test set (long on 2 cores)
    python benchmarks/bench_marginal.py --run /tmp/bm20 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aevb import marginal
from aevb.model import VAE, ModelConfig


def load_points(args) -> tuple[torch.Tensor, str]:
    """The test split of --data, or random binary data of MNIST's shape when it is missing."""
    try:
        from aevb.data import load_dataset

        ds = load_dataset(args.data, data_dir=args.data_dir)
        x = ds.split("test")
        if x.shape[1] != 784:
            raise ValueError(f"{args.data} has {x.shape[1]} columns, not 784")
        if not np.isin(x, (0.0, 1.0)).all():  # grey MNIST: one fixed binarization
            x = (np.random.default_rng(0).random(x.shape) < x).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), f"{args.data} test"
    except Exception as e:  # noqa: BLE001 - any failure falls back to random data, said so
        print(f"(data {args.data!r} unavailable: {e}; using random binary data)", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        return (torch.rand(10_000, 784, generator=g) < 0.13).float(), "random 10000x784"


def build_model(args) -> VAE:
    if args.run:
        from aevb.api import load

        model = load(args.run)
        c = model.config
        if (c.x_dim, c.hidden, c.latent_dim, c.depth) != (784, 500, 20, 1):
            print(f"(note: --run model is {c.x_dim}-{c.hidden}-{c.latent_dim})", file=sys.stderr)
        return model
    model = VAE(ModelConfig(x_dim=784, latent_dim=20, hidden=500))
    model.init_parameters(0.01, torch.Generator().manual_seed(0))
    return model.eval()


def matmul_rate(h: torch.Tensor, w: torch.Tensor, seconds: float) -> float:
    """FLOP/s of h @ w.T (the decoder's big layer at the chunk size), over a timed burst.

    The mean over the burst, like the importance-sampling rate it is compared with, so that both
    see the same share of a loaded machine.
    """
    out = torch.empty(h.shape[0], w.shape[0])
    torch.mm(h, w.T, out=out)
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        torch.mm(h, w.T, out=out)
        n += 1
    return 2.0 * n * h.shape[0] * h.shape[1] * w.shape[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="binarized-mnist")
    p.add_argument("--data-dir", default=os.environ.get("AEVB_DATA_DIR"))
    p.add_argument("--run", help="a trained 784-500-20 run directory (default: paper init)")
    p.add_argument("--points", type=int, default=200, help="test points to time (full: 10000)")
    p.add_argument("--samples", type=int, default=5000, help="K, importance samples per point")
    p.add_argument("--chunk-size", type=int, default=4096, help="(z, x) pairs decoded at once")
    p.add_argument("--segments", type=int, default=5, help="interleaved timing segments")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="importance-sampling worker threads (default: --threads; 1 = torch's own threading)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    workers = args.workers or args.threads

    x_all, source = load_points(args)
    n_split = len(x_all)
    x = x_all[: args.points]
    model = build_model(args)
    c = model.config
    flops_per_eval = 2.0 * (c.latent_dim * c.hidden + c.hidden * c.x_dim)
    w = model.decoder.net.head.weight.detach()  # (784, 500)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.chunk_size, c.hidden, generator=g)

    # warm up (allocator, thread pool) on a few points
    marginal.importance_sampling(model, x[:4], min(args.samples, 500), chunk_size=args.chunk_size)

    seg_bounds = np.linspace(0, len(x), args.segments + 1).astype(int)
    fractions, mm_rates, eval_rates, is_seconds = [], [], [], 0.0
    log_px = []
    for a, b in zip(seg_bounds[:-1], seg_bounds[1:], strict=True):
        if b <= a:
            continue
        mm_before = matmul_rate(h, w, 1.0)
        t0 = time.perf_counter()
        res = marginal.importance_sampling(
            model, x[a:b], args.samples, chunk_size=args.chunk_size, workers=workers, generator=g
        )
        dt = time.perf_counter() - t0
        mm = 0.5 * (mm_before + matmul_rate(h, w, 1.0))  # just before and after: same load
        is_seconds += dt
        log_px.append(res.log_px)
        evals = (b - a) * args.samples / dt
        mm_rates.append(mm)
        eval_rates.append(evals)
        fractions.append(evals * flops_per_eval / mm)
    lp = torch.cat(log_px)
    per_point = is_seconds / len(x)
    out = {
        "data": source,
        "model": f"{c.x_dim}-{c.hidden}-{c.latent_dim}",
        "weights": args.run or "paper init N(0, 0.01^2)",
        "importance_samples": args.samples,
        "chunk_size": args.chunk_size,
        "threads": args.threads,
        "workers": workers,
        "points_timed": len(x),
        "split_points": n_split,
        "decoder_evals_per_s": statistics.median(eval_rates),
        "decoder_gflops": statistics.median(eval_rates) * flops_per_eval / 1e9,
        "matmul_gflops": statistics.median(mm_rates) / 1e9,
        "fraction_of_matmul": statistics.median(fractions),
        "fraction_range": [min(fractions), max(fractions)],
        "seconds_per_point": per_point,
        "timed_seconds": is_seconds,
        "full_split_seconds": per_point * n_split,
        "full_split_extrapolated": len(x) < n_split,
        "log_px_mean": float(lp.mean()),
    }
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        how = "extrapolated from" if out["full_split_extrapolated"] else "measured on"
        print(
            f"IS of a {out['model']} model, K={args.samples}, chunk {args.chunk_size} pairs, "
            f"{args.threads} threads, {workers} workers, {source}\n"
            f"  decoder evaluations/s {out['decoder_evals_per_s']:,.0f} "
            f"({out['decoder_gflops']:.1f} GFLOP/s of matmul work)\n"
            f"  matmul ({args.chunk_size}x{c.hidden} @ {c.hidden}x{c.x_dim}) "
            f"{out['matmul_gflops']:.1f} GFLOP/s\n"
            f"  fraction of the matmul rate: {out['fraction_of_matmul']:.0%} "
            f"(segments {min(fractions):.0%}..{max(fractions):.0%}; target >= 60%)\n"
            f"  {per_point:.3f} s per point; full {n_split}-point evaluation "
            f"{out['full_split_seconds'] / 60:.1f} min ({how} {len(x)} points)"
        )
    return out


if __name__ == "__main__":
    if not Path(__file__).resolve().parent.parent.joinpath("src", "aevb").is_dir():
        sys.exit("run from a checkout of aevb")
    main()
