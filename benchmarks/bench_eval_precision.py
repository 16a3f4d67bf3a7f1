"""The bias of importance sampling in bf16: bf16 against float32 on the same draws, and the times.

``aevb evaluate --marginal is --importance-precision bf16`` runs the decoder's matrix products
under bf16 autocast while the encoder, the draws z_k, the densities and the log-mean-exp stay
float32 (``aevb.marginal.importance_sampling``). This script estimates log p(x) twice on the same
points with the same seed, once per precision, so both runs draw the same z_k and the per-point
difference d_i = bf16_i - float32_i is the rounding's alone. It reports the mean of d with its
standard error over points (the bias), the largest |d_i|, both estimates and both wall times,
and the CPU (``aevb.hardware.describe_cpu``) with what ran bf16 on it ("forced" when the CPU has
no bf16 instructions and ``AEVB_FORCE_CPU_BF16=1`` made it run anyway: then the times are not
representative, the bias is, as the rounding is the same).

The draws are those of ``aevb evaluate RUNDIR --marginal is --seed S`` (the same generator), so
the float32 column equals that command's estimate on the same points.

    AEVB_FORCE_CPU_BF16=1 python benchmarks/bench_eval_precision.py --run /tmp/bm20 --points 100
    python benchmarks/bench_eval_precision.py --run RUNDIR --device cuda --points 1000 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from aevb import hardware, marginal
from aevb.api.common import _run_data, resolve_device
from aevb.api.evaluation import _take_points
from aevb.errors import AevbError
from aevb.seeds import split_seed

#: the bias below which bf16 could become the default (issue 20)
THRESHOLD = 0.02


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a trained run directory")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", help="where the run's named dataset is kept")
    p.add_argument("--points", type=int, default=100, help="points of the split (default 100)")
    p.add_argument("--spread", action="store_true", help="evenly spaced through the split")
    p.add_argument("--samples", type=int, default=5000, help="K draws per point (default 5 000)")
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--workers", type=int, help="CPU worker threads (default: torch's threads)")
    p.add_argument("--seed", type=int, default=0, help="as aevb evaluate --seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def estimate(model, x: torch.Tensor, precision: str, args) -> tuple[torch.Tensor, float]:
    """Per-point log p(x) (float64, CPU) at ``precision`` and its wall time; evaluate's draws."""
    g = torch.Generator(device=x.device).manual_seed(split_seed(args.seed, 8, 0))
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = marginal.importance_sampling(
        model,
        x,
        args.samples,
        chunk_size=args.chunk_size,
        workers=args.workers or torch.get_num_threads(),
        generator=g,
        precision=precision,
    )
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return r.log_px.double().cpu(), time.perf_counter() - t0


def measure(args) -> dict:
    """Both estimates on the same points and draws, and the bias of bf16 against float32."""
    dev = resolve_device(args.device)
    via = marginal.check_precision("bf16", dev, "--importance-precision")
    model, x, mode, cfg = _run_data(args.run, None, args.split, args.data_dir, None)
    x, _ = _take_points(x, args.points, args.spread, args.split)
    model = model.to(dev).eval()
    xt = torch.from_numpy(x.astype("float32")).to(dev)
    f32, t32 = estimate(model, xt, "float32", args)
    b16, t16 = estimate(model, xt, "bf16", args)
    d = b16 - f32
    n = len(d)
    c = model.config
    return {
        "run": str(args.run),
        "model": f"{c.x_dim}-{c.hidden}-{c.latent_dim}",
        "data": f"{cfg['data']['spec']} {args.split}",
        "points": n,
        "spread": bool(args.spread),
        "importance_samples": args.samples,
        "seed": args.seed,
        "log_px_float32": float(f32.mean()),
        "log_px_bf16": float(b16.mean()),
        "bias": float(d.mean()),
        "bias_se": float(d.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "max_abs_diff": float(d.abs().max()),
        "mean_abs_diff": float(d.abs().mean()),
        "seconds_float32": round(t32, 3),
        "seconds_bf16": round(t16, 3),
        "device": dev.type,
        "cpu": hardware.describe_cpu(),
        "bf16_instructions": via,
        "verdict": verdict(float(d.mean()), float(d.std() / math.sqrt(n)) if n > 1 else math.inf),
    }


def verdict(bias: float, se: float) -> str:
    """ "below" when |bias| + 2 SE < THRESHOLD, "above" when |bias| - 2 SE >= it, else "unsure"."""
    if abs(bias) + 2 * se < THRESHOLD:
        return "below"
    return "above" if abs(bias) - 2 * se >= THRESHOLD else "unsure"


def report(res: dict) -> str:
    """The measurement as a small table, with the machine and the verdict."""
    head = (
        "| model | K | points | bias bf16 − float32 (nats) | mean \\|d\\| | max \\|d\\| "
        "| float32 s | bf16 s |"
    )
    row = (
        f"| {res['model']} | {res['importance_samples']} | {res['points']} | "
        f"{res['bias']:+.4f} ± {res['bias_se']:.4f} | {res['mean_abs_diff']:.4f} | "
        f"{res['max_abs_diff']:.4f} | "
        f"{res['seconds_float32']:.1f} | {res['seconds_bf16']:.1f} |"
    )
    say = {
        "below": "below: bf16 could be the default",
        "above": "not below: float32 stays the default",
        "unsure": "undecided at 2 SE (more points): float32 stays the default",
    }[res["verdict"]]
    return "\n".join(
        [
            f"{res['data']}, log p(x): float32 {res['log_px_float32']:.4f}, "
            f"bf16 {res['log_px_bf16']:.4f} (same draws, seed {res['seed']})",
            f"{res['device']}: {res['cpu']}; bf16 by {res['bf16_instructions']}",
            head,
            "|---|---|---|---|---|---|---|---|",
            row,
            f"bias against the {THRESHOLD}-nat threshold (|bias| ± 2 SE): {say}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        res = measure(args)
    except AevbError as e:
        print(f"bench_eval_precision: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, sort_keys=True) if args.json else report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
