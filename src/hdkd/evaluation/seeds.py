"""Mean and standard deviation of the headline test metrics over training seeds (``hdkd pipeline --seeds``).

The bootstrap interval of one run covers the finite test split; this covers the training randomness. The standard
deviation is the sample standard deviation (``ddof=1``, ``numpy.std(values, ddof=1)``), ``None`` for a single seed.
A value that is undefined in a run (``None``, e.g. the AUC when a class is absent from the test split) is left out of
that metric's mean and std, and ``n`` says how many runs were used.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..io import atomic_write_text
from .metrics import _md_escape

__all__ = ["SEED_METRICS", "summarise_seeds", "format_seeds_markdown", "write_seeds_summary"]

SEED_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr_macro", "ece")
_NAMES = {"accuracy": "Accuracy (%)", "balanced_accuracy": "Balanced accuracy (%)", "macro_f1": "Macro-F1 (%)",
          "auc_ovr_macro": "AUC (OvR macro)", "ece": "ECE (%)"}
_PERCENT = {"accuracy", "balanced_accuracy", "macro_f1", "ece"}


def summarise_seeds(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]],
                    reports: Optional[Mapping[int, str]] = None) -> dict[str, Any]:
    """``{seed: {model: {"metrics": classification_metrics}}}`` -> mean / std / values per model and metric.

    Returns ``{"seeds", "std", "reports", "models": {model: {metric: {"mean", "std", "n", "values"}}}}`` (fractions,
    as in ``report.json``; ``values`` in seed order, ``None`` where undefined).
    """
    seeds = list(per_seed)
    models: list[str] = []
    for results in per_seed.values():
        for label in results:
            if label not in models:
                models.append(label)
    out: dict[str, Any] = {}
    for label in models:
        out[label] = {}
        for key in SEED_METRICS:
            values = []
            for seed in seeds:
                r = per_seed[seed].get(label)
                v = None if r is None else (r.get("metrics") or {}).get(key)
                values.append(None if v is None else float(v))
            defined = np.array([v for v in values if v is not None], dtype=np.float64)
            out[label][key] = {
                "mean": float(defined.mean()) if defined.size else None,
                "std": float(defined.std(ddof=1)) if defined.size > 1 else None,
                "n": int(defined.size),
                "values": values,
            }
    return {
        "seeds": [int(s) for s in seeds],
        "std": "sample standard deviation over seeds (ddof=1)",
        "reports": {str(k): v for k, v in (reports or {}).items()},
        "models": out,
    }


def _mean_std(entry: Mapping[str, Any], percent: bool) -> str:
    if entry["mean"] is None:
        return "n/a"
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    text = f"{scale * entry['mean']:.{digits}f}"
    if entry["std"] is not None:
        text += f" ± {scale * entry['std']:.{digits}f}"
    return text


def _value(v: Optional[float], percent: bool) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}" if percent else f"{v:.4f}"


def format_seeds_markdown(summary: Mapping[str, Any], table_only: bool = False) -> str:
    """Markdown: the mean ± std table (and, unless ``table_only``, a title, a note and the per-seed values)."""
    header = ["Model", *(_NAMES[k] for k in SEED_METRICS)]
    table = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(SEED_METRICS)]
    for label, entries in summary["models"].items():
        cells = [_mean_std(entries[k], k in _PERCENT) for k in SEED_METRICS]
        table.append(f"| {_md_escape(label)} | " + " | ".join(cells) + " |")
    if table_only:
        return "\n".join(table)
    seeds = summary["seeds"]
    lines = ["# HDKD pipeline over training seeds", "",
             f"Seeds: {', '.join(str(s) for s in seeds)}. Test-split metrics, mean ± {summary['std']}; each run's "
             "full report is in `seed_<s>/report.md` (`report.html`). Only the training seed changes between runs; "
             "the data split is the same.", "", *table, "", "## Per seed", ""]
    per_seed_header = ["Model", "Metric", *(f"seed {s}" for s in seeds)]
    lines += ["| " + " | ".join(per_seed_header) + " |", "|---|---|" + "---:|" * len(seeds)]
    for label, entries in summary["models"].items():
        for key in SEED_METRICS:
            cells = [_value(v, key in _PERCENT) for v in entries[key]["values"]]
            lines.append(f"| {_md_escape(label)} | {_NAMES[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_seeds_summary(out_dir: Path, summary: Mapping[str, Any]) -> dict[str, Path]:
    """``seeds_summary.md`` then ``seeds_summary.json`` (last), each atomically; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / "seeds_summary.md", "json": out_dir / "seeds_summary.json"}
    text = json.dumps(summary, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    markdown = format_seeds_markdown(summary)
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["json"], text)
    return paths
