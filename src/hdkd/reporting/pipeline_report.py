"""The pipeline report: ``report.json``, ``report.md``, a self-contained ``report.html`` and the PNG figures comparing
teacher, student and HDKD (confusion matrices, ROC curves, reliability diagrams, training curves).

Write order makes a crash visible: stale ``report.json`` / ``report.md`` / ``report.html`` from an earlier run are
removed first, the PNGs are drawn next, and the Markdown, the HTML and then the JSON are written last, each
atomically. A folder holding a ``report.json`` therefore always holds a complete report of one run.
"""

from __future__ import annotations

import json
from pathlib import Path

from hdkd.io import atomic_write_text
from hdkd.reporting.pipeline_markdown import render_markdown
from hdkd.reporting.pipeline_view import (
    FIGURE_TITLES,
    PREDICTIONS_KEY,
    REPORT_FILES,
    check_results,
    json_results,
    summarise_results,
    to_jsonable,
)
from hdkd.reporting.plots import (
    plot_confusion_matrices,
    plot_reliability_diagrams,
    plot_roc_curves,
    plot_training_curves,
)

__all__ = ["write_pipeline_report", "REPORT_FILES"]


# ------------------------------------------------------------------------------------------------------------- json


# --------------------------------------------------------------------------------------------------------- markdown


# ----------------------------------------------------------------------------------------------------------- public


def write_pipeline_report(out_dir: Path, results: dict[str, dict], meta: dict) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and the PNG figures into ``out_dir``.

    Args:
        out_dir: folder to write into (created if missing).
        results: model label (``"teacher"``, ``"student"``, ``"hdkd"``; order kept) -> dict with ``metrics``
            (``classification_metrics`` on the test split, required) and optionally ``model`` (timm name),
            ``params``, ``flops`` (per image), ``val_metrics``, ``history`` (per-epoch dicts), ``best_epoch``,
            ``train_time_s``, ``checkpoint``, ``bootstrap`` (``bootstrap_ci``), ``temperature_scaling``
            (``temperature_scaling_report``) and ``predictions`` (``{"y_true", "probs", "class_names"}`` of the
            test split, for the ROC figure; used in memory only and left out of ``report.json``).
            ``assess_predictions`` returns the last four.
        meta: free-form run information (dataset, class counts per split, img_size, epochs, seed, command,
            hdkd_version, timestamp, ...), written to the JSON as given and listed in the Markdown and the HTML.

    Returns file key -> path for every file written: ``json``, ``markdown``, ``html``, ``confusion_matrices``,
    ``reliability_diagrams``, ``training_curves``, and ``roc_curves`` when at least one model has ``predictions``.
    ``report.html`` embeds the figures (base64 PNG) and its CSS: it is a single file that opens offline. Stale
    reports are deleted first and the texts rewritten last (atomically), so a crash never leaves a report that looks
    complete.
    """
    from hdkd.reporting.html import render_html

    check_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: out_dir / name for key, name in REPORT_FILES.items()}
    for key in ("json", "markdown", "html"):
        paths[key].unlink(missing_ok=True)

    plot_confusion_matrices({label: r["metrics"] for label, r in results.items()}, paths["confusion_matrices"])
    predictions = {label: r.get(PREDICTIONS_KEY) for label, r in results.items()}
    if any(predictions.values()):
        plot_roc_curves(predictions, paths["roc_curves"])
    else:
        paths["roc_curves"].unlink(missing_ok=True)  # never show an earlier run's curves
        del paths["roc_curves"]
    calibration = {}
    for label, r in results.items():
        ts = r.get("temperature_scaling") or {}
        calibration[label] = {
            "before": (ts.get("test_before") or {}).get("reliability") or r["metrics"].get("reliability"),
            "after": (ts.get("test_after") or {}).get("reliability"),
            "temperature": ts.get("temperature"),
        }
    plot_reliability_diagrams(calibration, paths["reliability_diagrams"])
    plot_training_curves({label: r.get("history") or [] for label, r in results.items()}, paths["training_curves"])

    # Render every text before writing any, so a rendering error leaves none behind.
    figures = {key: paths[key] for key in FIGURE_TITLES if key in paths}
    summary = summarise_results(results)
    markdown = render_markdown(results, meta, summary, figures)
    html_text = render_html(results, meta, summary, figures)
    document = {
        "meta": meta,
        "summary": summary,
        "results": json_results(results),
        "files": {key: REPORT_FILES[key] for key in paths if key != "json"},
    }
    text = json.dumps(to_jsonable(document), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["html"], html_text)
    atomic_write_text(paths["json"], text)
    return paths
