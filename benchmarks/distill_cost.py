"""Distillation cost: the HDKD training step against its floor, measured in one run on the same batch.

floor = one student training step (forward, CE, backward, AdamW step) + one teacher inference pass (no autograd).
The HDKD step adds only the feature/logit loss terms to that, so its cost should stay close to the floor.
Steps are interleaved (student, teacher, HDKD, student, ...) so machine noise hits all three alike; medians reported.

    python benchmarks/distill_cost.py --sizes 64 112 224 --batch 16 --amp none bf16 --json docs/bench/distill_cost.json

--gflops adds the HDKD step's achieved GFLOP/s = training FLOPs per image x images/s, with training FLOPs per image
taken as 3 x the student's forward FLOPs (forward + backward, the backward counted as 2 x forward: gradients with
respect to activations and to weights) + 1 x the teacher's forward FLOPs (inference only); forward FLOPs are
`hdkd.count_flops` (2 x MACs of convs and matmuls; normalisation, activations, loss and optimiser not counted).
--peak FILE (the JSON of benchmarks/matmul_peak.py) also gives it as a fraction of this machine's matmul peak
(fp32 peak for amp none, bf16 peak for amp bf16).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch

import hdkd
from hdkd.runtime import autocast

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from timing import interleaved_medians, training_step, write_result_json  # noqa: E402


def step_timers(img_size: int, batch: int, amp: str, channels_last: bool, classes: int = 4):
    torch.manual_seed(0)
    device = torch.device("cpu")
    teacher = timm.create_model("hdkd_teacher", num_classes=classes, img_size=img_size).eval()
    student = timm.create_model("hdkd", num_classes=classes, img_size=img_size).train()
    if channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.05)
    x = torch.randn(batch, 3, img_size, img_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    supervised, distill = hdkd.SupervisedLoss(), hdkd.HDKDLoss(teacher)

    def student_step():
        training_step(supervised, student, opt, x, y, device, amp)

    @torch.no_grad()
    def teacher_pass():
        with autocast(device, amp):
            final, maps = teacher.forward_intermediates(x)
            teacher.forward_head(final)

    def hdkd_step():
        training_step(distill, student, opt, x, y, device, amp)

    return {"student_step": student_step, "teacher_pass": teacher_pass, "hdkd_step": hdkd_step}


def train_flops_per_image(img_size: int, classes: int = 4) -> float:
    """3 x student forward FLOPs + 1 x teacher forward FLOPs (see the module docstring)."""
    teacher = timm.create_model("hdkd_teacher", num_classes=classes, img_size=img_size)
    student = timm.create_model("hdkd", num_classes=classes, img_size=img_size)
    return 3 * hdkd.count_flops(student, img_size) + hdkd.count_flops(teacher, img_size)


def measure(timers: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    return interleaved_medians(timers, repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 112, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--gflops", action="store_true", help="add the HDKD step's achieved GFLOP/s")
    parser.add_argument("--peak", type=Path, help="matmul_peak.py JSON: also the fraction of peak (implies --gflops)")
    args = parser.parse_args()
    peak = json.loads(args.peak.read_text())["peak_gflops"] if args.peak else None
    args.gflops = args.gflops or peak is not None

    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(
        f"{'size':>5} {'amp':>5} {'student ms':>11} {'teacher ms':>11} {'floor ms':>9} {'hdkd ms':>8} "
        f"{'hdkd/floor':>10} {'hdkd img/s':>10}"
        + (f" {'GFLOP/s':>8}" if args.gflops else "")
        + (f" {'% peak':>7}" if peak else "")
    )
    for amp in args.amp:
        for size in args.sizes:
            t = measure(step_timers(size, args.batch, amp, args.channels_last), args.repeats)
            floor = t["student_step"] + t["teacher_pass"]
            row = {
                "img_size": size,
                "amp": amp,
                "batch": args.batch,
                "channels_last": args.channels_last,
                **{f"{k}_s": v for k, v in t.items()},
                "floor_s": floor,
                "ratio": t["hdkd_step"] / floor,
                "hdkd_images_per_s": args.batch / t["hdkd_step"],
            }
            extra = ""
            if args.gflops:
                row["train_flops_per_image"] = train_flops_per_image(size)
                row["hdkd_gflops"] = row["train_flops_per_image"] * row["hdkd_images_per_s"] / 1e9
                extra = f" {row['hdkd_gflops']:>8.1f}"
                dtype = "bf16" if amp == "bf16" else "fp32"
                if peak and dtype in peak:
                    row["peak_gflops"] = peak[dtype]
                    row["fraction_of_peak"] = row["hdkd_gflops"] / peak[dtype]
                    extra += f" {100 * row['fraction_of_peak']:>6.1f}%"
            rows.append(row)
            print(
                f"{size:>5} {amp:>5} {t['student_step'] * 1e3:>11.1f} {t['teacher_pass'] * 1e3:>11.1f} "
                f"{floor * 1e3:>9.1f} {t['hdkd_step'] * 1e3:>8.1f} {row['ratio']:>10.3f} "
                f"{row['hdkd_images_per_s']:>10.1f}" + extra,
                flush=True,
            )
    if args.json:
        write_result_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
