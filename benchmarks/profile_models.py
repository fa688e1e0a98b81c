"""Where the time goes: torch.profiler tables of the HDKD models' eval forward and of the HDKD training step.

For each image size, precision (fp32, bf16 autocast) and memory format: the teacher's and the student's eval-mode
forward at batch 1 and at the training batch, and the HDKD training step (student forward + backward + AdamW step,
frozen BN-folded teacher forward, the loss `hdkd.HDKDLoss` computes). Each setting is run `--warmup` times, then
`--steps` times under the profiler; the top `--top` operators by self CPU time are printed and, with --json, saved
with the share of the slow-path kernels the issue names (`aten::_slow_conv2d_forward`, `max_pool2d_with_indices`,
casts `aten::_to_copy`/`aten::copy_`).

    OMP_NUM_THREADS=1 python benchmarks/profile_models.py --sizes 64 224 --precisions fp32 bf16 \
        --json docs/bench/profile_models.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import hdkd
import hdkd.models  # noqa: F401 - registers the models with timm
import hdkd.runtime

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from timing import training_step, write_result_json  # noqa: E402

WATCH = ("aten::_slow_conv2d_forward", "aten::max_pool2d_with_indices", "aten::_to_copy", "aten::copy_")


def _models(img_size: int, channels_last: bool, classes: int = 4):
    torch.manual_seed(0)
    teacher = timm.create_model("hdkd_teacher", num_classes=classes, img_size=img_size).eval()
    student = timm.create_model("hdkd", num_classes=classes, img_size=img_size)
    if channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    return teacher, student


def _batch(n: int, img_size: int, channels_last: bool) -> torch.Tensor:
    x = torch.randn(n, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def settings(img_size: int, batch: int, amp: str, channels_last: bool):
    """(name, callable) pairs: eval forwards of teacher and student at batch 1 and `batch`, and the HDKD step."""
    device = torch.device("cpu")
    teacher, student = _models(img_size, channels_last)
    x1, xb = _batch(1, img_size, channels_last), _batch(batch, img_size, channels_last)
    y = torch.randint(0, 4, (batch,), generator=torch.Generator().manual_seed(1))
    out = []
    for name, model in (("teacher", teacher), ("student", student)):
        for n, x in ((1, x1), (batch, xb)):

            def forward(model=model, x=x):
                model.eval()
                with torch.inference_mode(), hdkd.runtime.autocast(device, amp):
                    model(x)

            out.append((f"{name} eval b{n}", forward))
    criterion = hdkd.HDKDLoss(teacher, fold_teacher_bn=True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.05)

    def step():
        student.train()
        training_step(criterion, student, optimizer, xb, y, device, amp)

    out.append((f"hdkd step b{batch}", step))
    return out


def profile_one(fn, warmup: int, steps: int, top: int):
    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    top_ops = [
        {
            "op": e.key,
            "self_ms_per_call": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_call": e.count / steps,
        }
        for e in rows[:top]
    ]
    watched = {
        e.key: {"share": e.self_cpu_time_total / total, "calls_per_call": e.count / steps}
        for e in events
        if e.key in WATCH
    }
    return {"self_ms_total": total / 1e3 / steps, "top": top_ops, "watched": watched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--memory-formats", nargs="+", default=["channels_last"], choices=["contiguous", "channels_last"]
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--only", nargs="+", help="settings whose name starts with one of these (e.g. 'student eval')")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory", choices=["reuse", "glibc"], default="reuse", help="keep freed memory or not")
    args = parser.parse_args()
    if args.memory == "reuse":  # as CPU training and the inference path do (train.reuse_memory)
        hdkd.runtime.reuse_freed_memory()
    results = []
    for size in args.sizes:
        for precision in args.precisions:
            for fmt in args.memory_formats:
                amp = "bf16" if precision == "bf16" else "none"
                for name, fn in settings(size, args.batch, amp, fmt == "channels_last"):
                    if args.only and not any(name.startswith(o) for o in args.only):
                        continue
                    r = profile_one(fn, args.warmup, args.steps, args.top)
                    r.update(setting=name, img_size=size, precision=precision, memory_format=fmt)
                    results.append(r)
                    print(f"\n== {name}, {size} px, {precision}, {fmt}: {r['self_ms_total']:.1f} ms per call")
                    for op in r["top"]:
                        print(
                            f"  {op['op']:<52} {op['self_ms_per_call']:9.2f} ms {100 * op['share']:5.1f}% "
                            f"x{op['calls_per_call']:.0f}"
                        )
                    for key, w in r["watched"].items():
                        print(f"  watched {key}: {100 * w['share']:.1f}% x{w['calls_per_call']:.0f}")
    if args.json:
        write_result_json(args.json, {"batch": args.batch, "results": results}, "cpu")


if __name__ == "__main__":
    main()
