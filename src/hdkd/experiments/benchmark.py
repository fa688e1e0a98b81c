"""Speed of the HDKD models against timm peers, all measured the same way in one run (`hdkd benchmark`).

For each model: parameters (`hdkd.count_params`), FLOPs of one image (`hdkd.count_flops`: 2 x MACs of convs and
matmuls, attention included), and three timings, each the median over `repeats` samples:

- latency: batch 1, eval mode, no autograd, milliseconds per forward;
- inference throughput: batch B, eval mode, no autograd, images/s;
- training throughput: batch B, train mode, forward + cross-entropy (both heads for two-headed students) + backward
  + AdamW step, images/s.

Samples are interleaved across models (for each repeat: every model's latency, then every model's inference, then
every model's training) so machine noise hits all models alike. A sample times `inner` back-to-back calls, with
`inner` chosen during warm-up so that one sample lasts at least `min_sample_s` (short GPU kernels); on CUDA the
device is synchronised before every clock read. A model that fails to build or run at the requested size is kept in
the results as skipped, with the reason. Models are created with `pretrained=False`.

A name ending in `+foldbn` (e.g. `hdkd_teacher+foldbn`) is that model with its BatchNorms folded into the convs
(`hdkd.models.fuse.fold_batchnorm`): inference only, its training throughput is not measured. A name ending in `+cl`
(e.g. `resnet18+cl`, `hdkd+foldbn+cl`) runs the model and its inputs in channels_last.

Each row also gives the achieved GFLOP/s of each timing (training counted as 3 x the forward FLOPs: forward,
and backward to inputs and to weights) and its fraction of this machine's matrix-multiply peak, measured in the
same interleaved run (`matmul_timer`, n x n @ n x n at the benchmark's precision on the faster of BLAS and oneDNN,
its best sample: a roof; `peak_size=0` skips it).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import timm
import torch
import torch.nn as nn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hdkd.distillation import SupervisedLoss
from hdkd.errors import ConfigError
from hdkd.io import atomic_write, atomic_write_text
from hdkd.models import count_flops, count_params
from hdkd.models.factory import create_model
from hdkd.models.fuse import fold_batchnorm
from hdkd.models.hdkd import onednn_linear, onednn_supports
from hdkd.runtime import autocast, cpu_name, resolve_device, reuse_freed_memory

__all__ = [
    "DEFAULT_MODELS",
    "PEERS",
    "run_benchmark",
    "write_benchmark",
    "format_table",
    "benchmark_meta",
    "matmul_timer",
]

HDKD_MODELS = ["hdkd_teacher", "hdkd_student", "hdkd"]
PEERS = [
    "deit_tiny_distilled_patch16_224",
    "mobilevit_s",
    "efficientformerv2_s1",
    "edgenext_small",
    "fastvit_t8",
    "levit_128s",
    "resnet18",
]
DEFAULT_MODELS = HDKD_MODELS + PEERS
FOLD_SUFFIX = "+foldbn"
CL_SUFFIX = "+cl"
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward (gradients of inputs and of weights)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_timer(n: int, dtype: torch.dtype, device: torch.device, inner: int = 1) -> Callable[[], float]:
    """A callable timing `inner` back-to-back n x n @ n x n products (2 n^3 FLOPs each); seconds per product.

    On the CPU each sample is the faster of PyTorch's two GEMM libraries: `torch.matmul` (BLAS: MKL in PyPI's
    wheels) and oneDNN, which the models' convolutions run on (a 1x1 convolution over a channels_last (1, n, n, 1)
    map is the same n x n x n product). MKL runs its AVX2 code on AMD CPUs, about half of what oneDNN reaches
    there with AVX-512 (docs/RESULTS.md section 13), so a BLAS-only roof would sit below what the models achieve."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    products = [lambda: torch.matmul(a, b, out=out)]
    if device.type == "cpu" and onednn_supports(dtype):
        b_t = b.t().contiguous()  # onednn_linear(a, w) is a @ w.T
        products.append(lambda: onednn_linear(a, b_t))

    def timed(product: Callable[[], Any]) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            product()
        _sync(device)
        return (time.perf_counter() - start) / inner

    def run() -> float:
        return min(timed(product) for product in products)

    return run


def _split_suffixes(name: str) -> tuple[str, bool, bool]:
    """(timm name, fold BN, channels_last) of a benchmark entry such as `hdkd+foldbn+cl`."""
    fold = channels_last = False
    while name.endswith((FOLD_SUFFIX, CL_SUFFIX)):
        if name.endswith(CL_SUFFIX):
            name, channels_last = name[: -len(CL_SUFFIX)], True
        else:
            name, fold = name[: -len(FOLD_SUFFIX)], True
    return name, fold, channels_last


def _create(name: str, num_classes: int, img_size: int, in_chans: int) -> nn.Module:
    base, fold, channels_last = _split_suffixes(name)
    model = create_model(base, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    if fold:
        model = fold_batchnorm(model.eval())
    return model.to(memory_format=torch.channels_last) if channels_last else model


class _Bench:
    """One model with its batches, optimiser and three timed callables."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        device: torch.device,
        amp: str,
        img_size: int,
        batch: int,
        in_chans: int,
        num_classes: int,
    ):
        self.name, self.model, self.device, self.amp, self.batch = name, model, device, amp, batch
        g = torch.Generator().manual_seed(0)
        fmt = torch.channels_last if _split_suffixes(name)[2] else torch.contiguous_format
        self.x1 = torch.randn(1, in_chans, img_size, img_size, generator=g).to(device, memory_format=fmt)
        self.xb = torch.randn(batch, in_chans, img_size, img_size, generator=g).to(device, memory_format=fmt)
        self.yb = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        self.trainable = not _split_suffixes(name)[1]
        self.criterion = SupervisedLoss()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05) if self.trainable else None
        self.measure_latency = True  # batch-1 latency is measured once per model (its first batch size)
        self.inner: dict[str, int] = {}
        self.samples: dict[str, list[float]] = {"latency": [], "infer": [], "train": []}
        self.train_error: Optional[str] = None if self.trainable else "inference-only (BatchNorm folded)"

    def latency(self) -> None:
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.amp):
            self.model(self.x1)

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.amp):
            self.model(self.xb)

    def train(self) -> None:
        self.model.train()
        with autocast(self.device, self.amp):
            loss = self.criterion(self.model, self.xb, self.yb).total
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def timed(self, kind: str, inner: int) -> float:
        fn: Callable[[], None] = getattr(self, kind)
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(self.device)
        return (time.perf_counter() - start) / inner

    def kinds(self) -> list[str]:
        return (
            (["latency"] if self.measure_latency else [])
            + ["infer"]
            + (["train"] if self.trainable and self.train_error is None else [])
        )


def _skip(name: str, reason: str, **extra) -> dict[str, Any]:
    return {"model": name, "status": "skipped", "reason": reason, **extra}


def run_benchmark(
    models: Sequence[str] = tuple(DEFAULT_MODELS),
    img_size: int = 224,
    batch_sizes: Sequence[int] = (32,),
    device: str | torch.device = "cpu",
    amp: str = "none",
    repeats: int = 5,
    warmup: int = 2,
    num_classes: int = 4,
    in_chans: int = 3,
    min_sample_s: float = 0.02,
    progress: Optional[Callable[[str], None]] = None,
    peak_size: int = 2048,
    reuse_memory: bool = True,
) -> list[dict]:
    """Measure `models` (timm names) at `img_size`; one result dict per (model, batch size), see module docstring.
    With `reuse_memory` every model runs with freed activations kept in the process, as hdkd's inference path runs
    (`hdkd.runtime.reuse_freed_memory`; process-wide).

    Returned rows: model, status ("ok" or "skipped"), and for "ok" rows img_size, batch, device, amp, params,
    flops (per image, one forward), latency_ms (batch 1), infer_images_per_s and train_images_per_s (batch
    `batch`; None with `train_error` set when training could not run), repeats, warmup, inner_* (calls per
    sample), and with `peak_size` > 0 peak_gflops / peak_dtype (the matmul peak measured in the same run) and
    latency_gflops, infer_gflops, train_gflops with their *_fraction_of_peak. Skipped rows carry `reason`.
    """
    if amp not in ("none", "bf16"):
        raise ConfigError(f"amp: choose none or bf16, got {amp!r}")
    if repeats < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError("repeats >= 1, warmup >= 0 and batch sizes >= 1 are required")
    device = resolve_device(str(device), option="--device")
    if reuse_memory and device.type == "cpu":
        reuse_freed_memory()
    say = progress or (lambda msg: None)
    results: dict[str, list[dict]] = {}
    static: dict[str, dict] = {}
    benches: list[tuple[str, int, _Bench]] = []
    for name in models:
        try:
            torch.manual_seed(0)
            model = _create(name, num_classes, img_size, in_chans).to(device)
            params, flops = count_params(model), count_flops(model, img_size, in_chans)
        except Exception as exc:  # noqa: BLE001 - any failure to build or run at this size skips the model
            results[name] = [
                _skip(
                    name,
                    f"does not build/run at img_size {img_size}: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                )
            ]
            say(f"{name}: skipped ({results[name][0]['reason']})")
            continue
        static[name] = {"params": params, "flops": flops}
        for i, b in enumerate(batch_sizes):
            bench = _Bench(name, model, device, amp, img_size, b, in_chans, num_classes)
            bench.measure_latency = i == 0
            benches.append((name, b, bench))
        say(f"{name}: {params / 1e6:.2f} M params, {flops / 1e9:.3f} GFLOPs")

    # warm-up (and calibration of calls per sample); a failing kind skips the model (or just its training)
    live = []
    for name, b, bench in benches:
        try:
            for kind in ("latency", "infer", "train"):
                if kind not in bench.kinds():
                    continue
                try:
                    t = max(bench.timed(kind, 1) for _ in range(max(warmup, 1)))
                except Exception as exc:  # noqa: BLE001
                    if kind != "train":
                        raise
                    bench.train_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    continue
                bench.inner[kind] = max(1, min(100, math.ceil(min_sample_s / max(t, 1e-9))))
            live.append((name, b, bench))
        except Exception as exc:  # noqa: BLE001
            results.setdefault(name, []).append(
                _skip(
                    name,
                    f"fails at img_size {img_size}, batch {b}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}",
                    batch=b,
                )
            )
    peak_dtype = "bf16" if amp == "bf16" else "fp32"
    peak_fn = matmul_timer(peak_size, MATMUL_DTYPES[peak_dtype], device) if peak_size > 0 else None
    peak_samples: list[float] = []
    if peak_fn is not None:
        for _ in range(warmup):
            peak_fn()
    for r in range(repeats):
        if peak_fn is not None:  # interleaved with the models, so the roof sees the same machine load
            peak_samples.append(peak_fn())
        for kind in ("latency", "infer", "train"):
            for _, _, bench in live:
                if kind in bench.kinds():
                    bench.samples[kind].append(bench.timed(kind, bench.inner[kind]))
        say(f"repeat {r + 1}/{repeats} done")

    peak = 2.0 * peak_size**3 / min(peak_samples) / 1e9 if peak_samples else None  # the roof: the best sample
    latency = {name: statistics.median(bench.samples["latency"]) for name, _, bench in live if bench.measure_latency}
    for name, b, bench in live:
        med = {k: statistics.median(v) if v else None for k, v in bench.samples.items()}
        med["latency"] = latency.get(name)
        flops = static[name]["flops"]
        achieved = {
            "latency_gflops": None if med["latency"] is None else flops / med["latency"] / 1e9,
            "infer_gflops": flops * b / med["infer"] / 1e9,
            "train_gflops": None if med["train"] is None else TRAIN_FLOPS_PER_FORWARD * flops * b / med["train"] / 1e9,
        }
        if peak:
            achieved.update(peak_gflops=peak, peak_dtype=peak_dtype, peak_size=peak_size)
            for key in ("latency", "infer", "train"):
                value = achieved[f"{key}_gflops"]
                achieved[f"{key}_fraction_of_peak"] = None if value is None else value / peak
        results.setdefault(name, []).append(
            {
                "model": name,
                "status": "ok",
                "img_size": img_size,
                "batch": b,
                "device": str(device),
                "amp": amp,
                **static[name],
                "latency_ms": None if med["latency"] is None else med["latency"] * 1e3,
                "infer_images_per_s": b / med["infer"],
                "train_images_per_s": None if med["train"] is None else b / med["train"],
                "train_error": bench.train_error,
                "repeats": repeats,
                "warmup": warmup,
                **{f"inner_{k}": v for k, v in bench.inner.items()},
                **achieved,
            }
        )
    return [row for name in models for row in sorted(results.get(name, []), key=lambda r: r.get("batch", 0))]


# ------------------------------------------------------------------------------------------------------ outputs
def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _pct(r: dict, key: str) -> str:
    value = r.get(f"{key}_fraction_of_peak")
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table of the measured rows (with % of the matmul peak where measured), then the skipped models
    with their reasons."""
    lines = [
        "| model | params (M) | GFLOPs | latency b1 (ms) | batch | inference (img/s) | training (img/s) "
        "| % of matmul peak (b1 / inference / training) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            continue
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.3f} | {_fmt(r['latency_ms'], 2)} "
            f"| {r['batch']} | {_fmt(r['infer_images_per_s'])} | {_fmt(r['train_images_per_s'])} "
            f"| {_pct(r, 'latency')} / {_pct(r, 'infer')} / {_pct(r, 'train')} |"
        )
    peak = next((r for r in rows if r.get("peak_gflops")), None)
    if peak:
        lines += [
            "",
            f"Matmul peak in the same run: {peak['peak_gflops']:.1f} GFLOP/s ({peak['peak_dtype']}, "
            f"{peak['peak_size']}^2 matrices); training GFLOP/s count 3 x the forward FLOPs.",
        ]
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {r['model']}: {r['reason']}" for r in skipped]
    return "\n".join(lines)


def _plot(rows: Sequence[dict], path: Path, title: str) -> Path:

    ok = [r for r in rows if r["status"] == "ok"]
    first_batch = min((r["batch"] for r in ok), default=None)
    bars = [r for r in ok if r["batch"] == first_batch]
    fig = Figure(figsize=(12, max(4.0, 0.45 * len(bars) + 1.5)), layout="constrained")
    ax_lat, ax_tp = fig.subplots(1, 2)
    colour = lambda name: "tab:red" if name.startswith("hdkd") else "tab:blue"  # noqa: E731
    for r in bars:
        ax_lat.scatter(
            r["flops"] / 1e9, r["latency_ms"], s=20 + 12 * r["params"] / 1e6, color=colour(r["model"]), alpha=0.7
        )
        ax_lat.annotate(
            r["model"], (r["flops"] / 1e9, r["latency_ms"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    ax_lat.set_xlabel("GFLOPs per image")
    ax_lat.set_ylabel("latency, batch 1 (ms)")
    ax_lat.set_title("latency vs FLOPs (marker area ~ parameters)")
    ax_lat.grid(alpha=0.3)
    ys = list(range(len(bars)))
    ax_tp.barh(
        [y - 0.2 for y in ys], [r["infer_images_per_s"] for r in bars], height=0.4, label="inference", color="tab:green"
    )
    ax_tp.barh(
        [y + 0.2 for y in ys],
        [r["train_images_per_s"] or 0.0 for r in bars],
        height=0.4,
        label="training",
        color="tab:orange",
    )
    ax_tp.set_yticks(ys, [r["model"] for r in bars], fontsize=8)
    ax_tp.invert_yaxis()
    ax_tp.set_xlabel(f"images/s (batch {first_batch})")
    ax_tp.set_title("throughput")
    ax_tp.legend(fontsize=8)
    ax_tp.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def benchmark_meta(device: str | torch.device) -> dict[str, Any]:
    device = torch.device(device)
    meta = {
        "machine": cpu_name(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def write_benchmark(rows: Sequence[dict], out_dir: str | Path, meta: Optional[dict] = None) -> dict[str, Path]:
    """benchmark.json (meta + rows), benchmark.md (table) and benchmark.png (plot), each written atomically."""
    out_dir = Path(out_dir)
    meta = dict(meta or {})
    paths = {
        "json": out_dir / "benchmark.json",
        "markdown": out_dir / "benchmark.md",
        "plot": out_dir / "benchmark.png",
    }
    atomic_write_text(paths["json"], json.dumps({"meta": meta, "rows": list(rows)}, indent=2))
    ok = [r for r in rows if r["status"] == "ok"]
    setting = ""
    if ok:
        r = ok[0]
        setting = f"{r['img_size']} px, device {r['device']}, amp {r['amp']}, median of {r['repeats']} repeats"
    header = [
        "# Model speed",
        "",
        setting + (f"; torch {meta['torch']}, {meta['threads']} threads" if "torch" in meta else ""),
        "",
    ]
    atomic_write_text(paths["markdown"], "\n".join(header) + "\n" + format_table(rows) + "\n")
    _plot(rows, paths["plot"], setting)
    return paths
