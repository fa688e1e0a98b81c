"""Batch-1 CPU latency: each model exported by `hdkd export`'s path vs the same model in PyTorch eager, one run.

Models (random weights, 4 classes, 224 px by default): the distilled HDKD student (`hdkd`) and timm peers exported
the same way (`hdkd.deploy.export.export_graph`: TorchScript-based exporter, dynamic batch, opset 20), each checked
against PyTorch (max abs logit difference) before it is timed. For 1 thread and for all threads (torch intra-op
threads and ONNX Runtime intra-op threads alike), PyTorch eager and ONNX Runtime calls are interleaved (torch, ort,
torch, ort, ...) so that machine noise hits both alike; the medians and their ratio (target for `hdkd`: ONNX
Runtime <= 0.5 x PyTorch eager) are written as JSON.

    OMP_NUM_THREADS=1 python benchmarks/onnx_latency.py --json docs/bench/onnx_latency.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

import hdkd.models  # noqa: F401  (registers the HDKD models with timm)
from hdkd.deploy.onnx_benchmark import measure_onnx_latency

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from timing import write_result_json  # noqa: E402

DEFAULT_MODELS = ["hdkd", "resnet18", "mobilenetv3_large_100", "efficientnet_b0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and all CPUs)")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    threads = args.threads or sorted({1, len(os.sched_getaffinity(0))})
    load_before = os.getloadavg()  # a busy machine inflates multi-thread timings most: say how busy it was
    with tempfile.TemporaryDirectory(prefix="hdkd-onnx-bench-") as tmp:
        rows = [
            measure_onnx_latency(name, args.img_size, args.classes, threads, args.repeats, args.warmup, Path(tmp))
            for name in args.models
        ]
    hdkd_row = next((r for r in rows if r["model"] == "hdkd" and r["exported"]), None)
    target = (
        None
        if hdkd_row is None
        else {
            "rule": "hdkd: onnxruntime <= 0.5 x torch eager at every thread count",
            "met": all(s["ratio_onnxruntime_to_torch"] <= 0.5 for s in hdkd_row["settings"].values()),
        }
    )
    results = {
        "benchmark": "onnx_latency",
        "img_size": args.img_size,
        "batch": 1,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "onnxruntime": ort.__version__,
        "threads_measured": threads,
        "how": "medians of interleaved torch-eager / onnxruntime calls, one run; random weights",
        "command": " ".join(["python"] + sys.argv),
        "load_average_1_5_15_min": {"before": list(load_before), "after": list(os.getloadavg())},
        "target": target,
        "models": rows,
    }
    if args.json:
        write_result_json(args.json, results)
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
