"""HDKD training-step throughput by precision and compilation, measured in one run on the same batch.

Settings: fp32 eager (the reference), bf16 autocast eager, and with --compile the same two under torch.compile
(inductor); with --memory-formats contiguous channels_last, each of those in both memory formats (models and
batch). Every setting has its own student, teacher (BatchNorms folded) and optimiser built from the same seed; steps
are interleaved (fp32, bf16, fp32+compile, ...) so machine noise hits all alike; medians reported, and each
setting's speed-up over fp32 eager. With --peak (the JSON of benchmarks/matmul_peak.py) also the achieved GFLOP/s
(training FLOPs per image as in distill_cost.py: 3 x student forward + 1 x teacher forward) as a fraction of the
machine's matmul peak for that precision.

    OMP_NUM_THREADS=1 python benchmarks/precision_speed.py --sizes 64 --batch 32 --compile \
        --json docs/bench/precision_speed_64.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import timm
import torch

import hdkd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from distill_cost import train_flops_per_image  # noqa: E402
from timing import interleaved_medians, training_step, write_result_json  # noqa: E402


def hdkd_step(img_size: int, batch: int, amp: str, compiled: bool, channels_last: bool, classes: int = 4):
    torch.manual_seed(0)
    device = torch.device("cpu")
    teacher = timm.create_model("hdkd_teacher", num_classes=classes, img_size=img_size).eval()
    student = timm.create_model("hdkd", num_classes=classes, img_size=img_size).train()
    x = torch.randn(batch, 3, img_size, img_size)
    y = torch.randint(0, classes, (batch,))
    if channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    criterion = hdkd.HDKDLoss(teacher, fold_teacher_bn=True)
    model = student
    if compiled:
        model = torch.compile(student)
        criterion.teacher = torch.compile(criterion.teacher)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.05)
    losses = []

    def step():
        losses.append(float(training_step(criterion, model, opt, x, y, device, amp).total.detach()))

    return step, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="also the torch.compile'd settings")
    parser.add_argument(
        "--memory-formats",
        nargs="+",
        default=["contiguous"],
        choices=["contiguous", "channels_last"],
        help="memory formats to compare (each setting in each; the reference is the first, fp32 eager)",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--peak", type=Path, help="matmul_peak.py JSON: GFLOP/s as a fraction of peak")
    args = parser.parse_args()
    peak = json.loads(args.peak.read_text())["peak_gflops"] if args.peak else None
    settings = [
        (amp, compiled, fmt)
        for fmt in dict.fromkeys(args.memory_formats)
        for amp, compiled in [("none", False), ("bf16", False)]
        + ([("none", True), ("bf16", True)] if args.compile else [])
    ]
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for size in args.sizes:
        timers, first_loss, compile_s, formats = {}, {}, {}, {}
        for amp, compiled, fmt in settings:
            name = (
                ("fp32" if amp == "none" else amp)
                + ("+compile" if compiled else "")
                + ("+channels_last" if fmt == "channels_last" else "")
            )
            step, losses = hdkd_step(size, args.batch, amp, compiled, fmt == "channels_last")
            formats[name] = fmt
            start = time.perf_counter()
            step()  # the compile happens here (and for eager, the first-call allocations)
            compile_s[name] = time.perf_counter() - start
            first_loss[name] = losses[0]
            timers[name] = step
        seconds = interleaved_medians(timers, args.repeats, warmup=1)
        reference = next(iter(seconds.values()))  # fp32 eager in the first memory format
        flops = train_flops_per_image(size) if peak else None
        for name, s in seconds.items():
            row = {
                "img_size": size,
                "batch": args.batch,
                "setting": name,
                "step_s": s,
                "images_per_s": args.batch / s,
                "speedup_vs_fp32": reference / s,
                "first_step_s": compile_s[name],
                "first_loss": first_loss[name],
                "memory_format": formats[name],
            }
            extra = ""
            if peak:
                dtype = "bf16" if name.startswith("bf16") else "fp32"
                row["gflops"] = flops * row["images_per_s"] / 1e9
                row["fraction_of_peak"] = row["gflops"] / peak[dtype]
                extra = f", {row['gflops']:.1f} GFLOP/s = {100 * row['fraction_of_peak']:.1f}% of {dtype} peak"
            rows.append(row)
            print(
                f"{size:>4}px {name:<28} {s * 1e3:9.1f} ms/step {row['images_per_s']:8.1f} img/s "
                f"x{row['speedup_vs_fp32']:.2f} vs {next(iter(seconds))} (first step {compile_s[name]:.1f} s, "
                f"loss {first_loss[name]:.4f}){extra}",
                flush=True,
            )
    if args.json:
        write_result_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
