"""The k-fold report (``cv_report.md`` / ``cv_report.json``): mean ± std of the held-out-fold metrics per model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hdkd.evaluation.seeds import SEED_METRICS
from hdkd.io import atomic_write_text
from hdkd.reporting.seeds import format_seeds_markdown
from hdkd.reporting.tables import METRIC_LABELS, PERCENT_METRICS, md_escape


def format_cv_table(summary: Mapping[str, Any]) -> str:
    """The mean ± std table over folds (one row per model)."""
    return format_seeds_markdown(summary, table_only=True)


def _value(v, percent: bool) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}" if percent else f"{v:.4f}"


def format_cv_markdown(summary: Mapping[str, Any]) -> str:
    k = summary["folds"]
    pool = summary["pool"]
    counts = ", ".join(f"{md_escape(c)} {n}" for c, n in pool["class_counts"].items())
    lines = [
        f"# HDKD pipeline, {k}-fold estimate",
        "",
        f"Pool: the {pool['images']} train + validation images ({counts}), cut into {k} stratified"
        f"{', grouped' if pool['grouped'] else ''} folds (split seed {summary['split_seed']}); training seed "
        f"{summary['train_seed']}. Each fold's models train on the other {k - 1} folds, select their checkpoint on a "
        "validation split carved from those folds, and are tested once on the held-out fold. The official test "
        f"split: {summary['official_test_split']}.",
        "",
        f"Held-out-fold metrics, mean ± {summary['std']}:",
        "",
        format_cv_table(summary),
        "",
        "## Per fold",
        "",
    ]
    folds = list(summary["fold_sizes"])
    header = ["Model", "Metric", *(f"fold {f}" for f in folds)]
    lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(folds)]
    for label, entries in summary["models"].items():
        for key in SEED_METRICS:
            cells = [_value(v, key in PERCENT_METRICS) for v in entries[key]["values"]]
            lines.append(f"| {md_escape(label)} | {METRIC_LABELS[key]} | " + " | ".join(cells) + " |")
    lines += ["", "Images per fold (train / validation / test):", ""]
    for fold, sizes in summary["fold_sizes"].items():
        lines.append(f"- fold {fold}: " + " / ".join(str(sizes.get(s, 0)) for s in ("train", "val", "test")))
    checks = {f: c for f, c in (summary.get("teacher_checks") or {}).items() if c}
    if checks:
        lines += ["", "Teacher check per fold (validation, before HDKD trained):", ""]
        lines += [f"- fold {f}: {md_escape(c)}" for f, c in checks.items()]
    lines += ["", "Each fold's full report: `fold_<i>_of_<K>/report.md`."]
    return "\n".join(lines) + "\n"


def write_cv_report(out_dir: Path, summary: Mapping[str, Any]) -> dict[str, Path]:
    """``cv_report.md`` then ``cv_report.json`` (last), each atomically."""
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / "cv_report.md", "json": out_dir / "cv_report.json"}
    atomic_write_text(paths["markdown"], format_cv_markdown(summary))
    atomic_write_text(paths["json"], json.dumps(summary, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    return paths
