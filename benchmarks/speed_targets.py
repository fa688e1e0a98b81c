"""The CPU speed targets (issue 14), each measured in one interleaved run beside its reference and the matmul peak.

`latency`: batch-1 eval latency (no autograd) at --size of the HDKD student (`hdkd`) and teacher, as PyTorch eager
runs them (NCHW), in channels_last (`+cl`) and on the inference path (`hdkd.evaluation.inference.
prepare_for_inference`: BN folded, channels_last), beside timm peers (resnet18 for the student; resnet50 and
efficientnet_b3, of the teacher's FLOPs, for the teacher), each also in channels_last.

`step`: the HDKD training step (`hdkd.HDKDLoss` with the frozen BN-folded teacher, backward, AdamW) at --size and
--batch in fp32 and bf16 autocast, eager, NCHW and channels_last (the baseline too); its GFLOP/s (3 x student
forward + teacher forward FLOPs per image, as benchmarks/distill_cost.py) as a fraction of the fp32 / bf16 matmul
peak, and the bf16 / fp32 ratio.

With --baseline FILE (a previous version of src/hdkd/models/hdkd.py, e.g. from `git show REV:src/hdkd/models/
hdkd.py`), the same models built from that file, with the same weights, are measured in the same run as
`(before)` entries; its teacher is BN-folded as the current one is.

Samples are interleaved (every entry once per repeat, the matmul peaks included); medians reported (for the
matmul peaks the best sample, a roof). `--memory reuse` (the default, what hdkd's inference path does) keeps freed
activations in the process for every entry, peers included (`hdkd.runtime.reuse_freed_memory`); `--memory glibc`
leaves glibc's defaults, which return them to the OS and page-fault them back on every call.

    git show 8fd2392:src/hdkd/models/hdkd.py > /tmp/hdkd_before.py
    OMP_NUM_THREADS=1 python benchmarks/speed_targets.py latency --baseline /tmp/hdkd_before.py \
        --json docs/bench/speed_latency_224.json
    OMP_NUM_THREADS=1 python benchmarks/speed_targets.py step --size 64 --batch 32 --baseline /tmp/hdkd_before.py \
        --json docs/bench/speed_step_64.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from pathlib import Path

import timm
import torch

import hdkd
from hdkd.evaluation.inference import prepare_for_inference
from hdkd.experiments.benchmark import matmul_timer
from hdkd.models import count_flops
from hdkd.models.hdkd import MBCSA, StemBlock
from hdkd.runtime import native_bf16, reuse_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from distill_cost import train_flops_per_image  # noqa: E402
from timing import training_step, write_result_json  # noqa: E402

CL = torch.channels_last
CLASSES = 4
PEAK_N = 2048


def load_baseline(path: Path) -> types.ModuleType:
    """A previous hdkd.py as a module of its own; its @register_model lines are dropped so that the current
    registrations in timm stay untouched."""
    source = path.read_text().replace("@register_model\n", "")
    module = types.ModuleType("hdkd_baseline")
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - our own file, named on the command line
    return module


def _current(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=CLASSES, img_size=size)


def _before(baseline, name: str, size: int) -> torch.nn.Module:
    """The baseline's model with the current model's weights (the state-dict keys are the same)."""
    teacher = name == "hdkd_teacher"
    if hasattr(baseline, "HDKDTeacher"):  # an hdkd.py with one class per model (since session 5)
        model_class, kwargs = (baseline.HDKDTeacher, (6, 6, 9)) if teacher else (baseline.HDKDDistilled, (2, 2, 3))
        model = model_class(num_classes=CLASSES, img_size=size, depths=kwargs)
    else:  # 8fd2392's HDKDNet with a head argument
        kwargs = dict(depths=(6, 6, 9), head="linear") if teacher else dict(head="dflt", distilled=True)
        model = baseline.HDKDNet(num_classes=CLASSES, img_size=size, **kwargs)
    model.load_state_dict(_current(name, size).state_dict())
    return model


def _fold_baseline(model: torch.nn.Module) -> torch.nn.Module:
    """fold_batchnorm for the baseline's blocks (the same attribute names): the current blocks' fuse() on them."""
    folded = copy.deepcopy(model).eval()
    for m in list(folded.modules()):
        fuse = {"StemBlock": StemBlock.fuse, "MBCSA": MBCSA.fuse}.get(type(m).__name__)
        if fuse is not None:
            fuse(m)
    return folded.requires_grad_(False)


def interleave(timers: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each timer; for the matmul peaks the best sample (the roof) of the seconds per
    product their timer returns (it times two GEMM libraries per call and keeps the faster)."""
    for fn in timers.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in timers}
    for _ in range(repeats):
        for k, fn in timers.items():
            start = time.perf_counter()
            returned = fn()
            samples[k].append(returned if k.startswith("matmul") else time.perf_counter() - start)
    return {k: (min(v) if k.startswith("matmul") else statistics.median(v)) for k, v in samples.items()}


def precisions() -> tuple[str, ...]:
    """fp32, and bf16 where this CPU multiplies it natively: emulated bf16 is slower than fp32 and no target."""
    if native_bf16(torch.device("cpu")):
        return ("fp32", "bf16")
    print("bf16: not measured, this CPU has no native bf16 (torch.cpu.get_capabilities())")
    return ("fp32",)


def _peak_timers(dtypes: tuple[str, ...] = ("fp32",)) -> dict:
    cpu = torch.device("cpu")
    types = {"fp32": torch.float32, "bf16": torch.bfloat16}
    return {f"matmul peak {d}": matmul_timer(PEAK_N, types[d], cpu) for d in dtypes}


def _base(name: str) -> str:
    """'hdkd_teacher+cl' or 'hdkd (before)' -> the timm name."""
    return name.split(" ")[0].split("+")[0]


def latency_entries(size: int, baseline, compile: bool = False) -> dict[str, tuple[torch.nn.Module, bool]]:
    """name -> (model, channels_last input). The inference path (and with ``compile`` its torch.compile'd form) is
    applied to the peers too: it is only BN folding and a layout, which any CNN gets as well."""
    entries = {}
    for name in ("hdkd", "hdkd_teacher"):
        if baseline is not None:
            entries[f"{name} (before)"] = (_before(baseline, name, size).eval(), False)
        entries[name] = (_current(name, size).eval(), False)
        entries[f"{name}+cl"] = (_current(name, size).eval().to(memory_format=CL), True)
        entries[f"{name} inference path"] = (prepare_for_inference(_current(name, size), reuse_memory=False), False)
        if compile:
            compiled = prepare_for_inference(_current(name, size), compile=True, reuse_memory=False)
            entries[f"{name} inference path compiled"] = (compiled, False)
    for name in ("resnet18", "resnet50", "efficientnet_b3"):
        torch.manual_seed(0)
        entries[name] = (timm.create_model(name, num_classes=CLASSES).eval(), False)
        entries[f"{name}+cl"] = (copy.deepcopy(entries[name][0]).to(memory_format=CL), True)
        if name != "efficientnet_b3":
            path = prepare_for_inference(copy.deepcopy(entries[name][0]), reuse_memory=False)
            entries[f"{name} inference path"] = (path, False)
            if compile:
                compiled = prepare_for_inference(copy.deepcopy(entries[name][0]), compile=True, reuse_memory=False)
                entries[f"{name} inference path compiled"] = (compiled, False)
    return entries


def compile_seconds(timers: dict) -> dict[str, float]:
    """The first call of each compiled entry (its compile) minus one later call."""
    out = {}
    for name, fn in timers.items():
        if name.endswith("compiled"):
            start = time.perf_counter()
            fn()
            first = time.perf_counter() - start
            start = time.perf_counter()
            fn()
            out[name] = first - (time.perf_counter() - start)
            print(f"{name}: compiled in {out[name]:.1f} s", flush=True)
    return out


def run_latency(args, baseline) -> dict:
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    entries = latency_entries(args.size, baseline, args.compile)
    flops, per_base = {}, {}
    timers = _peak_timers()
    for name, (model, channels_last) in entries.items():
        base = _base(name)
        if base not in per_base:  # counted on the plain current model (the same FLOPs in every variant)
            per_base[base] = count_flops(_current(base, args.size) if base.startswith("hdkd") else model, args.size)
        flops[name] = per_base[base]
        inp = x.contiguous(memory_format=CL) if channels_last else x

        def forward(model=model, inp=inp):
            with torch.no_grad():
                model(inp)

        timers[name] = forward
    compiles = compile_seconds(timers)
    seconds = interleave(timers, args.repeats, args.warmup)
    peak = 2.0 * PEAK_N**3 / seconds["matmul peak fp32"] / 1e9
    rows = []
    for name in entries:
        rows.append(
            {
                "model": name,
                "img_size": args.size,
                "latency_ms": seconds[name] * 1e3,
                "gflops_per_image": flops[name] / 1e9,
                "gflops_per_s": flops[name] / seconds[name] / 1e9,
                "fraction_of_fp32_peak": flops[name] / seconds[name] / 1e9 / peak,
                "compile_s": compiles.get(name),
            }
        )
    by = {r["model"]: r for r in rows}
    for r in rows:
        ref = "resnet18" if _base(r["model"]) in ("hdkd", "resnet18") else "resnet50"
        r[f"latency_vs_{ref}"] = r["latency_ms"] / by[ref]["latency_ms"]
        r["latency_vs_efficientnet_b3"] = r["latency_ms"] / by["efficientnet_b3"]["latency_ms"]
        mode = r["model"][len(_base(r["model"])) :]  # "", "+cl", " inference path", " inference path compiled"
        if mode and f"{ref}{mode}" in by:  # against the peer run the same way
            r[f"latency_vs_{ref}_same_mode"] = r["latency_ms"] / by[f"{ref}{mode}"]["latency_ms"]
        print(
            f"{r['model']:<32} {r['latency_ms']:8.1f} ms  {r['gflops_per_s']:6.1f} GFLOP/s "
            f"({100 * r['fraction_of_fp32_peak']:4.1f}% of fp32 peak)  x{r[f'latency_vs_{ref}']:.2f} vs {ref}"
            + (f", x{r[same]:.2f} vs {ref}{mode}" if (same := f"latency_vs_{ref}_same_mode") in r else "")
        )
    peaks = {k.split()[-1]: 2.0 * PEAK_N**3 / v / 1e9 for k, v in seconds.items() if k.startswith("matmul")}
    return {"peak_gflops": peaks, "rows": rows}


def _step(student, teacher, fold_current: bool, batch: int, size: int, amp: str, channels_last: bool):
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, size, size, generator=g), torch.randint(0, CLASSES, (batch,), generator=g)
    if channels_last:
        student, teacher, x = student.to(memory_format=CL), teacher.to(memory_format=CL), x.contiguous(memory_format=CL)
    criterion = hdkd.HDKDLoss(teacher, fold_teacher_bn=fold_current)
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.05)
    student.train()
    losses = []

    def step():
        losses.append(float(training_step(criterion, student, optimizer, x, y, device, amp).total.detach()))

    return step, losses


def run_step(args, baseline) -> dict:
    measured = precisions()
    timers, losses = _peak_timers(measured), {}
    for precision in measured:
        amp = "none" if precision == "fp32" else "bf16"
        for channels_last in (False, True) if baseline is not None else ():
            name = precision + ("+cl" if channels_last else "") + " (before)"
            teacher = _fold_baseline(_before(baseline, "hdkd_teacher", args.size))
            student = _before(baseline, "hdkd", args.size)
            timers[name], losses[name] = _step(student, teacher, False, args.batch, args.size, amp, channels_last)
        for channels_last in (False, True):
            name = precision + ("+cl" if channels_last else "")
            student, teacher = _current("hdkd", args.size), _current("hdkd_teacher", args.size).eval()
            timers[name], losses[name] = _step(student, teacher, True, args.batch, args.size, amp, channels_last)
    seconds = interleave(timers, args.repeats, args.warmup)
    peak = {d: 2.0 * PEAK_N**3 / seconds[f"matmul peak {d}"] / 1e9 for d in measured}
    flops = train_flops_per_image(args.size)
    rows = []
    for name in timers:
        if name.startswith("matmul"):
            continue
        precision = name[:4]
        gflops = flops * args.batch / seconds[name] / 1e9
        rows.append(
            {
                "setting": name,
                "img_size": args.size,
                "batch": args.batch,
                "step_s": seconds[name],
                "images_per_s": args.batch / seconds[name],
                "gflops_per_s": gflops,
                "fraction_of_peak": gflops / peak[precision],
                "peak_dtype": precision,
                "fraction_of_fp32_peak": gflops / peak["fp32"],
                "first_loss": losses[name][0],
            }
        )
    by = {r["setting"]: r for r in rows}
    for r in rows:
        fp32 = by.get("fp32" + r["setting"][4:])
        r["speedup_vs_fp32_same_format"] = fp32["step_s"] / r["step_s"] if fp32 else None
        r["speedup_vs_fp32_nchw"] = by["fp32"]["step_s"] / r["step_s"]
        print(
            f"{args.size}px b{args.batch} {r['setting']:<18} {r['step_s'] * 1e3:9.1f} ms  {r['gflops_per_s']:6.1f} "
            f"GFLOP/s = {100 * r['fraction_of_peak']:4.1f}% of {r['peak_dtype']} peak "
            f"({100 * r['fraction_of_fp32_peak']:4.1f}% of fp32)  x{r['speedup_vs_fp32_nchw']:.2f} vs fp32, "
            f"x{r['speedup_vs_fp32_same_format']:.2f} vs fp32 same layout  "
            f"loss {r['first_loss']:.4f}"
        )
    return {"peak_gflops": peak, "train_flops_per_image": flops, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["latency", "step"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32, help="training batch (step)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="a previous src/hdkd/models/hdkd.py, measured as '(before)'")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compile", action="store_true", help="also torch.compile'd inference paths (latency)")
    parser.add_argument(
        "--memory", choices=["reuse", "glibc"], default="reuse", help="keep freed activations (default) or not"
    )
    args = parser.parse_args()
    reused = reuse_freed_memory() if args.memory == "reuse" else False
    baseline = load_baseline(args.baseline) if args.baseline else None
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.part} at {args.size} px, "
        f"freed memory {'reused' if reused else 'returned to the OS (glibc defaults)'}",
        flush=True,
    )
    result = run_latency(args, baseline) if args.part == "latency" else run_step(args, baseline)
    if args.json:
        settings = {"part": args.part, "repeats": args.repeats, "warmup": args.warmup, "baseline": str(args.baseline)}
        settings.update(compile=args.compile, memory=args.memory, freed_memory_reused=reused)
        write_result_json(args.json, {**settings, **result}, "cpu")


if __name__ == "__main__":
    main()
