"""Shared by the benchmark scripts: interleaved timing, so machine noise hits every variant alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_medians(timers: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each timer, sampled round-robin (a, b, c, a, b, c, ...) after `warmup` calls."""
    for fn in timers.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, fn in timers.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def write_result_json(path, results: dict, device=None) -> None:
    """A benchmark's results with the machine they were measured on (torch version, threads, GPU name), written
    atomically so an interrupted run never leaves a truncated file that looks like a result."""
    import json
    import platform

    import torch

    from hdkd.io import atomic_write_text

    meta = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2 / AVX512 / AMX...: what the kernels use
    }
    if device is not None:
        device = torch.device(device)
        meta["device"] = str(device)
        if device.type == "cuda":
            meta["gpu"] = torch.cuda.get_device_name(device)
    atomic_write_text(path, json.dumps({**meta, **results}, indent=2))


def training_step(criterion, model, optimizer, images, labels, device, amp: str = "none"):
    """One optimiser step as the trainer takes it (loss under autocast, backward, step); returns the loss output,
    so every benchmark times the same step."""
    from hdkd.runtime import autocast

    with autocast(device, amp):
        out = criterion(model, images, labels)
    optimizer.zero_grad(set_to_none=True)
    out.total.backward()
    optimizer.step()
    return out


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
