"""CPU latency of the models a grid tested, for the peers' Pareto front: batch 1, one thread, eval mode, fp32.

Each variant's model is rebuilt from its record (its checkpoint when the file is still there, else its config:
the architecture alone sets the latency) and timed with a small loop: ``warmup`` calls, then ``repeats`` samples of
``inner`` calls each, the models taking turns sample by sample, and each model's fastest sample kept (other
processes on a shared machine only ever add time; measured one after the other with a median of 5, two models of
the same architecture came out 2 x apart under load). The torch thread count is set to 1 for the measurement and
restored.

The measurement is kept in ``ablation_latency.json`` beside the report, with the machine and the time, and a later
report reuses it while every model's architecture is unchanged: a report rebuilt on another machine, or on a busy
one, does not silently move the Pareto front. ``--remeasure-latency`` measures again.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from hdkd.config import from_dict
from hdkd.errors import DataError
from hdkd.io import atomic_write_text
from hdkd.models import create_model_from_checkpoint
from hdkd.models.from_config import build_model
from hdkd.runtime import cpu_name

LATENCY_FILE = "ablation_latency.json"
HOW = "CPU latency of one image, the fastest of 9 samples (batch 1, one thread, eval mode, fp32)"


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


def _latest(records: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    latest = {r["variant"]: r for r in records if r.get("variant") in variants and isinstance(r.get("config"), dict)}
    return {name: latest[name] for name in variants if name in latest}


def _architecture(record: Mapping[str, Any]) -> dict[str, Any]:
    """What sets a record's latency: its model section (name, size, widths, ...); a change of it re-measures."""
    return dict(record["config"].get("model") or {})


def _read_kept(path: Path) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())
        if not all(isinstance(m["latency_ms"], float) and isinstance(m["architecture"], dict)
                   for m in kept["models"].values()):  # fmt: skip
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DataError(
            f"{path}: not a latency record of `hdkd ablate` (expected models with architecture and latency_ms); "
            "delete it or pass --remeasure-latency"
        ) from None
    return kept


def latency_note(latency: Mapping[str, Any]) -> str:
    """How, where and when the latencies were measured, as the report says it."""
    return f"{latency['how']}, measured on {latency['machine']} with torch {latency['torch']}, {latency['measured_at']}"


def pareto_latencies(records: Sequence[Mapping[str, Any]], variants: Sequence[str], out_dir: str | Path,
                     remeasure: bool = False) -> dict[str, Any]:  # fmt: skip
    """The CPU latency of each of ``variants`` with a record (its latest one), with where and when it was measured:
    the kept measurement in ``out_dir`` when it covers these architectures, else all measured together now and
    kept."""
    path = Path(out_dir) / LATENCY_FILE
    latest = _latest(records, variants)
    wanted = {name: _architecture(record) for name, record in latest.items()}
    kept = None if remeasure else _read_kept(path)
    if kept is not None and all(kept["models"].get(n, {}).get("architecture") == a for n, a in wanted.items()):
        return kept
    ms = measure_latencies_ms({name: _model_of(record) for name, record in latest.items()})
    measured = {
        "how": HOW,
        "machine": cpu_name(),
        "torch": torch.__version__,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "models": {name: {"architecture": wanted[name], "latency_ms": ms[name]} for name in wanted},
    }
    atomic_write_text(path, json.dumps(measured, indent=2) + "\n")
    return measured
