"""What keeping freed activations in the process buys a fresh process (`hdkd.runtime.reuse_freed_memory`).

`hdkd predict`, `serve` and `evaluate` run one model in a process of their own. With glibc's default malloc
thresholds the multi-MB activations of a batch-1 forward pass are handed back to the kernel when freed and
page-faulted back, zeroed, on the next call. Each sample here is a fresh Python process that builds one model on the
inference path (`prepare_for_inference`, with or without `reuse_memory`), warms it up and times batch-1 forwards
on one thread, counting minor page faults per call; the two settings alternate, process by process, so that both
see the same machine. An interleaved in-process benchmark (speed_targets.py) cannot show this: the larger models
it also runs raise glibc's adaptive thresholds for everyone.

    OMP_NUM_THREADS=1 python benchmarks/freed_memory.py --models hdkd hdkd_teacher resnet18 --size 224 --rounds 5 \
        --json docs/bench/freed_memory_224.json

`--steps` does the same for the HDKD training step (student forward and backward, AdamW, the frozen BN-folded
teacher; `speed_targets.py`'s step) at `--batch`, for each of fp32, fp32+cl (channels_last) and bf16, and records the
process's peak memory, which keeping freed blocks raises:

    OMP_NUM_THREADS=1 python benchmarks/freed_memory.py --steps fp32 fp32+cl bf16 --size 224 --batch 16 --rounds 2 \
        --calls 3 --json docs/bench/freed_memory_step_224.json
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


_ONE_STEP_PROCESS = """
import json, resource, statistics, sys, time
import torch
sys.path.insert(0, sys.argv[6])
from hdkd.runtime import reuse_freed_memory
from speed_targets import _current, _step
setting, size, reuse = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "reuse"
calls, batch = int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
if reuse:
    assert reuse_freed_memory()
amp = "bf16" if setting.startswith("bf16") else "none"
student, teacher = _current("hdkd", size), _current("hdkd_teacher", size).eval()
step, _ = _step(student, teacher, True, batch, size, amp, setting.endswith("+cl"))
for _ in range(3):  # the heap settles over the first three steps
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
for _ in range(calls):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": 1e3 * statistics.median(times), "faults_per_call": (usage.ru_minflt - faults) / calls,
                  "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def one_process(name: str, size: int, mode: str, calls: int, batch: int = 0) -> dict:
    """One fresh process: a model's batch-1 inference path, or with `batch`, the training step `name` names."""
    if batch:
        argv = [_ONE_STEP_PROCESS, name, str(size), mode, str(calls), str(batch), str(Path(__file__).resolve().parent)]
    else:
        argv = [_ONE_PROCESS, name, str(size), mode, str(calls)]
    out = subprocess.run([sys.executable, "-c", *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["hdkd", "hdkd_teacher", "resnet18"])
    parser.add_argument("--steps", nargs="+", choices=["fp32", "fp32+cl", "bf16"], help="time training steps instead")
    parser.add_argument("--batch", type=int, default=16, help="training batch (--steps)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="processes per model and setting")
    parser.add_argument("--calls", type=int, default=11, help="timed forwards per process")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    batch = args.batch if args.steps else 0
    for name in args.steps or args.models:
        samples = {"glibc": [], "reuse": []}
        for _ in range(args.rounds):
            for mode in samples:  # alternating, process by process
                samples[mode].append(one_process(name, args.size, mode, args.calls, batch))
        row = {("step" if batch else "model"): name, "size": args.size, **({"batch": batch} if batch else {})}
        for mode, values in samples.items():
            for key in values[0]:
                row[f"{mode}_{key}"] = statistics.median(v[key] for v in values)
        row["speedup"] = row["glibc_ms"] / row["reuse_ms"]
        rows.append(row)
        memory = f", peak {row['glibc_peak_rss_mb']:.0f} -> {row['reuse_peak_rss_mb']:.0f} MB" if batch else ""
        print(
            f"{name:14s} {args.size} px{f' batch {batch}' if batch else ''}: glibc defaults {row['glibc_ms']:7.1f} ms "
            f"({row['glibc_faults_per_call']:7.0f} page faults per call), "
            f"freed memory reused {row['reuse_ms']:7.1f} ms "
            f"({row['reuse_faults_per_call']:5.0f}): x{row['speedup']:.2f}{memory}",
            flush=True,
        )
    if args.json:
        write_result_json(args.json, {"rounds": args.rounds, "calls": args.calls, "rows": rows}, "cpu")


if __name__ == "__main__":
    main()
