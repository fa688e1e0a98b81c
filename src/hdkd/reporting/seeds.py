"""The seeds summary as Markdown and JSON (``seeds_summary.md/.json``): mean ± std over training seeds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from hdkd.evaluation.seeds import SEED_METRICS
from hdkd.io import atomic_write_text
from hdkd.reporting.tables import md_escape

_NAMES = {
    "accuracy": "Accuracy (%)",
    "balanced_accuracy": "Balanced accuracy (%)",
    "macro_f1": "Macro-F1 (%)",
    "auc_ovr_macro": "AUC (OvR macro)",
    "ece": "ECE (%)",
}


_PERCENT = {"accuracy", "balanced_accuracy", "macro_f1", "ece"}


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
        table.append(f"| {md_escape(label)} | " + " | ".join(cells) + " |")
    if table_only:
        return "\n".join(table)
    seeds = summary["seeds"]
    lines = [
        "# HDKD pipeline over training seeds",
        "",
        f"Seeds: {', '.join(str(s) for s in seeds)}. Test-split metrics, mean ± {summary['std']}; each run's "
        "full report is in `seed_<s>/report.md` (`report.html`). Only the training seed changes between runs; "
        "the data split is the same.",
        "",
        *table,
        "",
        "## Per seed",
        "",
    ]
    per_seed_header = ["Model", "Metric", *(f"seed {s}" for s in seeds)]
    lines += ["| " + " | ".join(per_seed_header) + " |", "|---|---|" + "---:|" * len(seeds)]
    for label, entries in summary["models"].items():
        for key in SEED_METRICS:
            cells = [_value(v, key in _PERCENT) for v in entries[key]["values"]]
            lines.append(f"| {md_escape(label)} | {_NAMES[key]} | " + " | ".join(cells) + " |")
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
