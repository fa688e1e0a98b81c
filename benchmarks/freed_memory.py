"""What keeping freed activations in the process buys a fresh inference process (`hdkd.runtime.reuse_freed_memory`).

`hdkd predict`, `serve` and `evaluate` run one model in a process of their own. With glibc's default malloc
thresholds the multi-MB activations of a batch-1 forward pass are handed back to the kernel when freed and
page-faulted back, zeroed, on the next call. Each sample here is a fresh Python process that builds one model on the
inference path (`prepare_for_inference`, with or without `reuse_memory`), warms it up and times batch-1 forwards
on one thread, counting minor page faults per call; the two settings alternate, process by process, so that both
see the same machine. An interleaved in-process benchmark (speed_targets.py) cannot show this: the larger models
it also runs raise glibc's adaptive thresholds for everyone.

    OMP_NUM_THREADS=1 python benchmarks/freed_memory.py --models hdkd hdkd_teacher resnet18 --size 224 --rounds 5 \
        --json docs/bench/freed_memory_224.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from timing import write_result_json  # noqa: E402

_ONE_PROCESS = """
import json, resource, statistics, sys, time
import timm, torch
import hdkd  # registers the HDKD models with timm
from hdkd.evaluation.inference import prepare_for_inference
name, size, reuse, calls = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "reuse", int(sys.argv[4])
torch.set_num_threads(1)
torch.manual_seed(0)
kwargs = {"img_size": size} if name.startswith("hdkd") else {}
model = prepare_for_inference(timm.create_model(name, num_classes=4, **kwargs), reuse_memory=reuse)
x = torch.randn(1, 3, size, size)
with torch.no_grad():
    for _ in range(3):
        model(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"ms": 1e3 * statistics.median(times), "faults_per_call": faults / calls}))
"""


def one_process(name: str, size: int, mode: str, calls: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _ONE_PROCESS, name, str(size), mode, str(calls)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["hdkd", "hdkd_teacher", "resnet18"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="processes per model and setting")
    parser.add_argument("--calls", type=int, default=11, help="timed forwards per process")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        samples = {"glibc": [], "reuse": []}
        for _ in range(args.rounds):
            for mode in samples:  # alternating, process by process
                samples[mode].append(one_process(name, args.size, mode, args.calls))
        row = {"model": name, "size": args.size}
        for mode, values in samples.items():
            row[f"{mode}_ms"] = statistics.median(v["ms"] for v in values)
            row[f"{mode}_faults_per_call"] = statistics.median(v["faults_per_call"] for v in values)
        row["speedup"] = row["glibc_ms"] / row["reuse_ms"]
        rows.append(row)
        print(
            f"{name:14s} {args.size} px: glibc defaults {row['glibc_ms']:7.1f} ms "
            f"({row['glibc_faults_per_call']:7.0f} page faults per call), "
            f"freed memory reused {row['reuse_ms']:7.1f} ms "
            f"({row['reuse_faults_per_call']:5.0f}): x{row['speedup']:.2f}",
            flush=True,
        )
    if args.json:
        write_result_json(args.json, {"rounds": args.rounds, "calls": args.calls, "rows": rows}, "cpu")


if __name__ == "__main__":
    main()
