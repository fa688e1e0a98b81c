"""CPU latency of the models a grid tested, for the peers' Pareto front: batch 1, one thread, eval mode, fp32.

Each variant's model is rebuilt from its record (its checkpoint when the file is still there, else its config:
the architecture alone sets the latency) and timed with a small loop: ``warmup`` calls, then ``repeats`` samples of
``inner`` calls each, the models taking turns sample by sample, and each model's fastest sample kept (other
processes on a shared machine only ever add time; measured one after the other with a median of 5, two models of
the same architecture came out 2 x apart under load). The torch thread count is set to 1 for the measurement and
restored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from hdkd.config import from_dict
from hdkd.models import create_model_from_checkpoint
from hdkd.models.from_config import build_model


def _model_of(record: Mapping[str, Any]) -> tuple[torch.nn.Module, int, int]:
    cfg = from_dict({k: v for k, v in record["config"].items()}, where=f"record of {record.get('variant')}")
    cfg = cfg.resolved()
    size = cfg.model.img_size
    checkpoint = record.get("checkpoint")
    if checkpoint and Path(checkpoint).is_file():
        model = create_model_from_checkpoint(checkpoint)
        in_chans = int(getattr(model, "in_chans", None) or cfg.model.in_chans or 3)
        return model, size, in_chans
    classes = len((record.get("class_counts") or {}).get("test") or {}) or 2
    in_chans = int(cfg.model.in_chans or 3)
    return build_model(cfg, classes, in_chans), size, in_chans


def measure_latencies_ms(models: Mapping[str, tuple[torch.nn.Module, int, int]], repeats: int = 9, warmup: int = 3,
                         inner: int = 5) -> dict[str, float]:  # fmt: skip
    """``{name: milliseconds of one forward pass of one image on one CPU thread}`` for ``{name: (model, img_size,
    in_chans)}``: the models take turns, sample by sample, so that a busy machine slows them alike, and each keeps
    its fastest sample (the mean over its ``inner`` calls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    samples: dict[str, list[float]] = {name: [] for name in models}
    try:
        runs = {}
        for name, (model, size, chans) in models.items():
            x = torch.randn(1, chans, size, size, generator=torch.Generator().manual_seed(0))
            runs[name] = (model.eval().cpu(), x)
        with torch.no_grad():
            for model, x in runs.values():
                for _ in range(warmup):
                    model(x)
            for _ in range(repeats):
                for name, (model, x) in runs.items():
                    start = time.perf_counter()
                    for _ in range(inner):
                        model(x)
                    samples[name].append((time.perf_counter() - start) / inner)
    finally:
        torch.set_num_threads(threads)
    return {name: 1e3 * min(values) for name, values in samples.items()}


def variant_latencies(records: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> dict[str, Optional[float]]:
    """``{variant: latency in ms}`` for each of ``variants`` with a record (its latest one), measured together."""
    latest = {r["variant"]: r for r in records if r.get("variant") in variants and isinstance(r.get("config"), dict)}
    return measure_latencies_ms({name: _model_of(latest[name]) for name in variants if name in latest})
