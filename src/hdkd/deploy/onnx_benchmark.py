"""Batch-1 latency of PyTorch eager against ONNX Runtime for any model, exported the way `hdkd export` exports.

Used by `hdkd benchmark --onnx` (beside its PyTorch rows) and `benchmarks/onnx_latency.py`; random weights, as
latency does not depend on them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import timm
import torch

from hdkd.deploy.export import DEFAULT_OPSET, export_graph, metadata, write_onnx
from hdkd.deploy.quantize import cpu_session, interleaved_latencies
from hdkd.evaluation.inference import ModelInfo
from hdkd.models import hdkd as _registers_hdkd_models  # noqa: F401  (the HDKD models in timm's registry)


def random_model(name: str, img_size: int, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("hdkd"):
        return timm.create_model(name, num_classes=classes, img_size=img_size).eval()
    return timm.create_model(name, pretrained=False, num_classes=classes).eval()


def measure_onnx_latency(
    name: str, img_size: int, classes: int, thread_counts: Sequence[int], repeats: int, warmup: int, folder: Path
) -> dict[str, Any]:
    """One model's row: exported or the export error, the ORT-vs-PyTorch difference, and per thread count the two
    medians of interleaved batch-1 calls and their ratio."""
    model = random_model(name, img_size, classes)
    info = ModelInfo(name, tuple(str(i) for i in range(classes)), img_size, 3, (0.485, 0.456, 0.406),
                     (0.229, 0.224, 0.225))  # fmt: skip
    path = folder / f"{name}.onnx"
    try:
        write_onnx(export_graph(model, info, DEFAULT_OPSET), metadata(info, "float32"), path)
    except Exception as exc:  # a peer that does not export cleanly is reported, not fatal
        return {"model": name, "exported": False, "error": str(exc).splitlines()[0] if str(exc) else repr(exc)}
    x = torch.randn(1, 3, img_size, img_size)
    x_np = x.numpy()
    with torch.inference_mode():
        expected = model(x).numpy()
    row: dict[str, Any] = {"model": name, "exported": True, "onnx_bytes": path.stat().st_size, "settings": {}}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        session = cpu_session(path, threads)
        row.setdefault("max_abs_diff", float(np.abs(session.run(None, {"images": x_np})[0] - expected).max()))
        with torch.inference_mode():
            medians = interleaved_latencies(
                {"torch_eager": lambda: model(x), "onnxruntime": lambda s=session: s.run(None, {"images": x_np})},
                repeats,
                warmup,
            )
        row["settings"][f"{threads}_threads"] = {
            "threads": threads,
            "torch_eager_ms": medians["torch_eager"] * 1e3,
            "onnxruntime_ms": medians["onnxruntime"] * 1e3,
            "ratio_onnxruntime_to_torch": medians["onnxruntime"] / medians["torch_eager"],
        }
    return row


def onnx_latency_rows(
    names: Sequence[str], img_size: int, classes: int, thread_counts: Sequence[int], repeats: int, warmup: int
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hdkd-onnx-bench-") as tmp:
        return [measure_onnx_latency(n, img_size, classes, thread_counts, repeats, warmup, Path(tmp)) for n in names]


def format_onnx_rows(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | threads | PyTorch eager (ms) | ONNX Runtime (ms) | ratio |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        if not row["exported"]:
            lines.append(f"| {row['model']} | | not exported: {row['error']} | | |")
            continue
        for s in row["settings"].values():
            lines.append(f"| {row['model']} | {s['threads']} | {s['torch_eager_ms']:.2f} | {s['onnxruntime_ms']:.2f} | "
                         f"{s['ratio_onnxruntime_to_torch']:.2f} |")  # fmt: skip
    return "\n".join(lines)
