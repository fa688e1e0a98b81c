"""Text tables of metrics (terminal and Markdown): one model's metrics, and models side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from hdkd.evaluation.metrics import ECE_BINS


def pct(x: Any) -> str:
    return "n/a" if x is None else f"{100.0 * float(x):.2f}"


def dec(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}f}"


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align_left: int = 1) -> list[str]:
    """Monospace table: the first ``align_left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [str(c).ljust(w) if i < align_left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def ci_entry(ci: Optional[Mapping[str, Any]], key: str) -> Optional[Mapping[str, Any]]:
    """``bootstrap_ci(...)["metrics"][key]`` when it has an interval, else ``None``."""
    if not ci:
        return None
    entry = (ci.get("metrics") or {}).get(key)
    if not entry or entry.get("low") is None or entry.get("high") is None:
        return None
    return entry


def _with_ci(value: Any, ci: Optional[Mapping[str, Any]], key: str, percent: bool = True) -> str:
    """``92.50 [90.10, 94.60]`` (percent) or ``0.9512 [0.9301, 0.9688]``; the bare value without an interval."""
    fmt = pct if percent else dec
    text = fmt(value)
    entry = ci_entry(ci, key)
    if entry is not None and value is not None:
        text += f" [{fmt(entry['low'])}, {fmt(entry['high'])}]"
    return text


# The per-class table's columns in the Markdown and HTML reports, in per_class_rows' order.
PER_CLASS_HEADER = [
    "Class",
    "Precision (%)",
    "Recall / sensitivity (%)",
    "Specificity (%)",
    "F1 (%)",
    "AUC (OvR)",
    "PR-AUC (OvR)",
    "Support",
]


def per_class_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    """One row per class (in the metrics' class order): name, precision, recall, specificity, F1 (%), AUC, PR-AUC,
    support; the same rows in the console, Markdown and HTML reports."""
    rows = []
    for name in metrics["class_names"]:
        pc = metrics["per_class"][name]
        rows.append(
            [
                str(name),
                pct(pc["precision"]),
                pct(pc["recall"]),
                pct(pc["specificity"]),
                pct(pc["f1"]),
                dec(pc.get("auc")),
                dec(pc.get("pr_auc")),
                str(pc["support"]),
            ]
        )
    return rows


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Plain-text report of one ``classification_metrics`` dict: headline metrics, per-class table, confusion matrix.

    Accuracy-type values are shown as percentages with 2 decimals; AUC, MCC and kappa as 4-decimal numbers; ECE as a
    percentage, Brier score and NLL as 4-decimal numbers. When ``metrics`` has a ``bootstrap`` entry (a
    ``bootstrap_ci`` result) the headline metrics are followed by their confidence interval in brackets.
    """
    names = list(metrics["class_names"])
    ci = metrics.get("bootstrap")
    lines = [f"Samples: {metrics['n']}"]
    headline = [
        ("Accuracy (%)", _with_ci(metrics.get("accuracy"), ci, "accuracy")),
        ("Balanced accuracy (%)", _with_ci(metrics.get("balanced_accuracy"), ci, "balanced_accuracy")),
        ("Macro F1 (%)", _with_ci(metrics.get("macro_f1"), ci, "macro_f1")),
        ("Weighted F1 (%)", pct(metrics.get("weighted_f1"))),
        ("ROC AUC, OvR macro", _with_ci(metrics.get("auc_ovr_macro"), ci, "auc_ovr_macro", percent=False)),
        ("ROC AUC, OvR weighted", dec(metrics.get("auc_ovr_weighted"))),
        ("PR AUC (avg. precision), macro", dec(metrics.get("pr_auc_macro"))),
    ]
    if metrics.get("pr_auc_positive") is not None:
        headline.append(("PR AUC, positive class", dec(metrics.get("pr_auc_positive"))))
    headline += [
        ("Matthews corr. coef.", dec(metrics.get("mcc"))),
        ("Cohen's kappa", dec(metrics.get("cohen_kappa"))),
    ]
    if "ece" in metrics:
        headline += [
            (f"ECE, {metrics.get('ece_bins', ECE_BINS)} bins (%)", pct(metrics.get("ece"))),
            ("Brier score (multi-class)", dec(metrics.get("brier"))),
            ("Negative log-likelihood", dec(metrics.get("nll"))),
        ]
    width = max(len(k) for k, _ in headline)
    lines += [f"{k.ljust(width)}  {v}" for k, v in headline]
    entry = ci_entry(ci, "accuracy")
    if entry is not None:
        lines.append(f"[brackets: {100 * ci['level']:g}% {ci['method']} interval, {ci['n_boot']} resamples]")
    if metrics.get("auc_note"):
        lines.append(f"Note: {metrics['auc_note']}")

    lines += ["", "Per class (%; AUC and PR-AUC one-vs-rest, as fractions):"]
    rows = per_class_rows(metrics)
    lines += _text_table(["class", "precision", "recall", "specificity", "F1", "AUC", "PR-AUC", "support"], rows)

    lines += ["", "Confusion matrix (rows = true class, columns = predicted class):"]
    cm = metrics["confusion_matrix"]
    cm_rows = [[name, *(str(v) for v in row)] for name, row in zip(names, cm)]
    lines += _text_table(["true \\ pred", *names], cm_rows)
    return "\n".join(lines)


# How the headline metrics are named in every table; the ones shown as percentages.
METRIC_LABELS = {
    "accuracy": "Accuracy (%)",
    "balanced_accuracy": "Balanced accuracy (%)",
    "macro_f1": "Macro-F1 (%)",
    "auc_ovr_macro": "AUC (OvR macro)",
    "ece": "ECE (%)",
}
PERCENT_METRICS = {"accuracy", "balanced_accuracy", "macro_f1", "ece"}


def md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_params(params: Any) -> str:
    return "n/a" if params is None else f"{int(params):,}"


def format_gflops(flops: Any) -> str:
    if flops is None:
        return "n/a"
    flops = float(flops)
    if not math.isfinite(flops):
        return "n/a"
    return f"{flops / 1e9:.3f}" if flops >= 1e7 else f"{flops / 1e9:.3g}"


def comparison_rows(results: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (plain strings) of the model comparison; shared by the Markdown and the HTML report.

    Columns: model, parameters, GFLOPs, accuracy, balanced accuracy, macro-F1 (percent), macro ROC AUC, ECE before
    and after temperature scaling (percent). When a result has ``bootstrap`` (a ``bootstrap_ci`` result) the
    accuracy, balanced accuracy, macro-F1 and AUC cells carry the interval in brackets, and the headers say so.
    """
    with_ci = any(ci_entry(res.get("bootstrap"), "accuracy") is not None for res in results.values())
    level = next(
        (res["bootstrap"]["level"] for res in results.values() if ci_entry(res.get("bootstrap"), "accuracy")), 0.95
    )
    suffix = f" [{100 * level:g}% CI]" if with_ci else ""
    header = [
        "Model",
        "Params",
        "GFLOPs",
        f"Accuracy (%){suffix}",
        f"Balanced accuracy (%){suffix}",
        f"Macro-F1 (%){suffix}",
        f"AUC (OvR macro){suffix}",
        "ECE (%)",
        "ECE after temp. scaling (%)",
    ]
    rows = []
    for label, res in results.items():
        m = res.get("metrics")
        if m is None:
            raise ValueError(f"results[{label!r}] has no 'metrics' entry")
        ci = res.get("bootstrap")
        scaling = res.get("temperature_scaling") or {}
        rows.append(
            [
                str(label),
                format_params(res.get("params")),
                format_gflops(res.get("flops")),
                _with_ci(m.get("accuracy"), ci, "accuracy"),
                _with_ci(m.get("balanced_accuracy"), ci, "balanced_accuracy"),
                _with_ci(m.get("macro_f1"), ci, "macro_f1"),
                _with_ci(m.get("auc_ovr_macro"), ci, "auc_ovr_macro", percent=False),
                pct(m.get("ece")),
                pct((scaling.get("test_after") or {}).get("ece")),
            ]
        )
    return header, rows


def format_comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table comparing models: one row per model (in the given order).

    Each value needs ``metrics`` (a ``classification_metrics`` dict) and may have ``params`` (int), ``flops``
    (FLOPs per image, shown as GFLOPs), ``bootstrap`` (a ``bootstrap_ci`` result: intervals in brackets) and
    ``temperature_scaling`` (a ``temperature_scaling_report``: the test ECE after scaling). Accuracy, balanced
    accuracy, macro-F1 and ECE are percentages with 2 decimals; AUC (one-vs-rest macro) has 4 decimals; anything
    missing or undefined shows as ``n/a``.
    """
    header, rows = comparison_rows(results)
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in rows:
        lines.append("| " + " | ".join(md_escape(c) for c in row) + " |")
    return "\n".join(lines)
