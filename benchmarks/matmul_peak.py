"""This machine's matrix-multiply peak: GFLOP/s of torch.matmul on large square matrices, fp32 and bf16.

A practical roof for the training step: `distill_cost.py --peak FILE` divides the HDKD step's achieved GFLOP/s by
these numbers. One n x n @ n x n product is counted as 2 n^3 FLOPs. Each sample times `--inner` back-to-back
products (after `--warmup` untimed ones); dtypes are interleaved per repeat and the median is reported, as well as
the best sample (closer to the true peak on a busy machine). On CUDA the device is synchronised before each clock
read.

    python benchmarks/matmul_peak.py --sizes 2048 4096 --dtypes fp32 bf16 --repeats 7 --json docs/bench/matmul_peak.json

Quick check: `python benchmarks/matmul_peak.py --sizes 256 --repeats 1`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from hdkd.experiments.benchmark import MATMUL_DTYPES, matmul_timer  # noqa: E402  (the timer `hdkd benchmark` uses)
from timing import write_result_json  # noqa: E402

DTYPES = MATMUL_DTYPES


def measure_peak(sizes, dtypes, device: torch.device, repeats: int, warmup: int, inner: int) -> list[dict]:
    rows = []
    for n in sizes:
        timers = {name: matmul_timer(n, DTYPES[name], device, inner) for name in dtypes}
        for fn in timers.values():
            for _ in range(warmup):
                fn()
        samples = {name: [] for name in timers}
        for _ in range(repeats):
            for name, fn in timers.items():  # interleaved
                samples[name].append(fn())
        flops = 2.0 * n**3
        for name, values in samples.items():
            med, best = statistics.median(values), min(values)
            rows.append(
                {
                    "n": n,
                    "dtype": name,
                    "device": str(device),
                    "median_s": med,
                    "best_s": best,
                    "gflops_median": flops / med / 1e9,
                    "gflops_best": flops / best / 1e9,
                    "repeats": repeats,
                    "inner": inner,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--inner", type=int, default=1, help="products per timed sample (raise on a GPU)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"{'n':>6} {'dtype':>6} {'median ms':>10} {'GFLOP/s (median)':>17} {'GFLOP/s (best)':>15}")
    rows = measure_peak(args.sizes, args.dtypes, device, args.repeats, args.warmup, args.inner)
    for r in rows:
        print(
            f"{r['n']:>6} {r['dtype']:>6} {r['median_s'] * 1e3:>10.2f} {r['gflops_median']:>17.1f} "
            f"{r['gflops_best']:>15.1f}"
        )
    # the peak per dtype: the best median over the sizes measured
    peak = {d: max(r["gflops_median"] for r in rows if r["dtype"] == d) for d in args.dtypes}
    print("peak (best median over sizes): " + ", ".join(f"{d} {v:.1f} GFLOP/s" for d, v in peak.items()))
    if args.json:
        write_result_json(args.json, {"peak_gflops": peak, "rows": rows}, device)


if __name__ == "__main__":
    main()
