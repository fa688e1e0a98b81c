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
