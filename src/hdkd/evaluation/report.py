"""The pipeline report: ``report.json``, ``report.md``, a self-contained ``report.html`` and the PNG figures comparing
teacher, student and HDKD (confusion matrices, ROC curves, reliability diagrams, training curves).

Write order makes a crash visible: stale ``report.json`` / ``report.md`` / ``report.html`` from an earlier run are
removed first, the PNGs are drawn next, and the Markdown, the HTML and then the JSON are written last, each
atomically. A folder holding a ``report.json`` therefore always holds a complete report of one run.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Optional

import numpy as np

from ..io import atomic_write_text
from .metrics import (_ci_entry, _dec, _format_gflops, _format_params, _md_escape, _pct,
                      format_comparison_table)
from .plots import plot_confusion_matrices, plot_reliability_diagrams, plot_roc_curves, plot_training_curves

__all__ = ["write_pipeline_report", "REPORT_FILES"]

# Keys of the returned dict -> file names inside out_dir.
REPORT_FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "html": "report.html",
    "confusion_matrices": "confusion_matrices.png",
    "roc_curves": "roc_curves.png",
    "reliability_diagrams": "reliability_diagrams.png",
    "training_curves": "training_curves.png",
}
# In-memory only: per-model test predictions used for the ROC figure, never written into report.json.
PREDICTIONS_KEY = "predictions"

_TIE_EPS = 1e-12


# ------------------------------------------------------------------------------------------------------------- json


def _to_jsonable(obj: Any) -> Any:
    """Plain JSON types only: numpy scalars/arrays, tensors, paths and dates converted; NaN/inf become None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist())
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensor, without importing torch
        return _to_jsonable(obj.detach().cpu().tolist())
    return str(obj)


# --------------------------------------------------------------------------------------------------------- markdown


def _code(text: Any) -> str:
    """Inline code span that survives backticks in ``text``."""
    text = str(text).replace("\n", " ")
    longest = max((len(run) for run in _backtick_runs(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _backtick_runs(text: str) -> list[str]:
    runs, current = [], ""
    for ch in text:
        if ch == "`":
            current += ch
        elif current:
            runs.append(current)
            current = ""
    if current:
        runs.append(current)
    return runs


_LABELS = {"hdkd_version": "hdkd version", "img_size": "Image size", "timestamp": "Generated"}


def _humanise(key: str) -> str:
    if key in _LABELS:
        return _LABELS[key]
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _is_count_table(value: Any) -> bool:
    """{outer: {inner: number}}, e.g. class counts per split: rendered as a table."""
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(v, Mapping) and len(v) > 0 and all(_is_number(x) for x in v.values()) for v in value.values())
    )


def _format_number(x: Any) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}" if abs(int(x)) >= 10_000 else str(int(x))
    return f"{float(x):g}"


def _inline(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if "command" in key.lower() or key.lower() in {"cmd", "argv"}:
        if isinstance(value, (list, tuple)):
            value = shlex.join(str(v) for v in value)
        return _code(value)
    if _is_number(value) or isinstance(value, (bool, np.bool_)):
        return _format_number(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{_md_escape(k)}: {_inline(str(k), v)}" for k, v in value.items()) or "(none)"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(_inline(key, v) for v in value) or "(none)"
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return _md_escape(value)


def _count_table(value: Mapping[str, Mapping[str, Any]]) -> list[str]:
    columns = [str(c) for c in value]
    rows: list[str] = []
    for inner in value.values():
        for k in inner:
            if str(k) not in rows:
                rows.append(str(k))
    lookup = {str(c): {str(k): v for k, v in inner.items()} for c, inner in value.items()}
    lines = [
        "| | " + " | ".join(_md_escape(c) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for r in rows:
        cells = [_format_number(lookup[c][r]) if r in lookup[c] else "" for c in columns]
        lines.append(f"| {_md_escape(r)} | " + " | ".join(cells) + " |")
    totals = [_format_number(sum(lookup[c].values())) for c in columns]
    lines.append("| **Total** | " + " | ".join(totals) + " |")
    return lines


_STAMP_KEYS = ("timestamp", "hdkd_version")  # shown once, under the title


def _meta_section(meta: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    tables: list[tuple[str, Mapping]] = []
    for key, value in meta.items():
        if key in _STAMP_KEYS and value:
            continue
        if _is_count_table(value):
            tables.append((str(key), value))
        else:
            lines.append(f"- **{_md_escape(_humanise(key))}:** {_inline(str(key), value)}")
    if not lines and not tables:
        lines.append("(no setup information was recorded)")
    for key, value in tables:
        lines += ["", f"**{_md_escape(_humanise(key))}**", ""]
        lines += _count_table(value)
    return lines


def _format_duration(seconds: Any) -> str:
    if seconds is None or not _is_number(seconds) or not math.isfinite(float(seconds)):
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _find(results: Mapping[str, Any], label: str) -> Optional[str]:
    if label in results:
        return label
    for key in results:
        if str(key).lower() == label:
            return key
    return None


def _summary(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Machine-readable summary: best model(s) by test balanced accuracy and the HDKD-vs-student differences."""
    scored = {
        label: float(r["metrics"]["balanced_accuracy"])
        for label, r in results.items()
        if r["metrics"].get("balanced_accuracy") is not None
    }
    best_value = max(scored.values()) if scored else None
    best = [label for label, v in scored.items() if best_value is not None and best_value - v <= _TIE_EPS]
    summary: dict[str, Any] = {
        "best_by_test_balanced_accuracy": best,
        "best_test_balanced_accuracy": best_value,
        "hdkd_minus_student_accuracy_points": None,
        "hdkd_minus_student_balanced_accuracy_points": None,
        "test_samples": {label: r["metrics"].get("n") for label, r in results.items()},
    }
    hdkd, student = _find(results, "hdkd"), _find(results, "student")
    if hdkd is not None and student is not None:
        for key in ("accuracy", "balanced_accuracy"):
            a, b = results[hdkd]["metrics"].get(key), results[student]["metrics"].get(key)
            if a is not None and b is not None:
                summary[f"hdkd_minus_student_{key}_points"] = 100.0 * (float(a) - float(b))
    return summary


def _summary_paragraph(results: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    sentences = []
    best = summary["best_by_test_balanced_accuracy"]
    if best:
        value = _pct(summary["best_test_balanced_accuracy"])
        names = " and ".join(f"**{_md_escape(b)}**" for b in best)
        if len(best) == 1:
            sentences.append(f"On the test split, {names} has the best balanced accuracy ({value}%).")
        else:
            sentences.append(f"On the test split, {names} tie for the best balanced accuracy ({value}%).")
    hdkd, student = _find(results, "hdkd"), _find(results, "student")
    diff = summary["hdkd_minus_student_accuracy_points"]
    if diff is not None:
        acc_h = _pct(results[hdkd]["metrics"]["accuracy"])
        acc_s = _pct(results[student]["metrics"]["accuracy"])
        sentence = (
            f"HDKD reaches {acc_h}% test accuracy against {acc_s}% for the same student trained alone: "
            f"{diff:+.2f} accuracy points"
        )
        bal = summary["hdkd_minus_student_balanced_accuracy_points"]
        if bal is not None:
            sentence += f" ({bal:+.2f} points of balanced accuracy)"
        sentences.append(sentence + ".")
    teacher = _find(results, "teacher")
    if teacher is not None and results[teacher]["metrics"].get("accuracy") is not None:
        sentence = f"The teacher reaches {_pct(results[teacher]['metrics']['accuracy'])}% test accuracy"
        ref = hdkd if hdkd is not None else student
        p_t, p_r = results[teacher].get("params"), results[ref].get("params") if ref is not None else None
        if p_t and p_r:
            sentence += f" with {float(p_t) / float(p_r):.1f}x the parameters of the {_md_escape(ref)} model"
        sentences.append(sentence + ".")
    counts = {n for n in summary["test_samples"].values() if n is not None}
    if len(counts) > 1:
        detail = ", ".join(f"{_md_escape(k)}: {v}" for k, v in summary["test_samples"].items())
        sentences.append(f"**Warning:** the models were evaluated on different numbers of test samples ({detail}).")
    elif counts:
        sentences.append(f"Test split: {counts.pop()} samples.")
    return " ".join(sentences)


PER_CLASS_HEADER = ["Class", "Precision (%)", "Recall / sensitivity (%)", "Specificity (%)", "F1 (%)", "AUC (OvR)",
                    "PR-AUC (OvR)", "Support"]


def per_class_rows(m: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name in m["class_names"]:
        pc = m["per_class"][name]
        rows.append([str(name), _pct(pc["precision"]), _pct(pc["recall"]), _pct(pc["specificity"]), _pct(pc["f1"]),
                     _dec(pc.get("auc")), _dec(pc.get("pr_auc")), str(pc["support"])])
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _per_class_markdown(m: Mapping[str, Any]) -> list[str]:
    return _md_table(PER_CLASS_HEADER, per_class_rows(m))


CALIBRATION_HEADER = ["Model", "T (fitted on validation)", "Validation NLL", "Test ECE (%)", "Test Brier",
                      "Test NLL"]


def calibration_rows(results: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per model: the temperature and each calibration number as ``before -> after`` scaling."""
    rows = []
    for label, r in results.items():
        m = r["metrics"]
        ts = r.get("temperature_scaling")
        if ts:
            before, after = ts.get("test_before") or {}, ts.get("test_after") or {}
            rows.append([
                str(label),
                f"{float(ts['temperature']):.3f} ({'at the search bound; ' if ts.get('at_bound') else ''}"
                f"n = {ts.get('n_val', 'n/a')})",
                f"{_dec(ts.get('val_nll_before'))} → {_dec(ts.get('val_nll_after'))}",
                f"{_pct(before.get('ece', m.get('ece')))} → {_pct(after.get('ece'))}",
                f"{_dec(before.get('brier', m.get('brier')))} → {_dec(after.get('brier'))}",
                f"{_dec(before.get('nll', m.get('nll')))} → {_dec(after.get('nll'))}",
            ])
        else:
            rows.append([str(label), "n/a (no validation predictions)", "n/a", _pct(m.get("ece")),
                         _dec(m.get("brier")), _dec(m.get("nll"))])
    return rows


def _ci_text(r: Mapping[str, Any]) -> Optional[str]:
    """``accuracy [a, b]%, ...`` for the model section, or ``None`` without intervals."""
    ci = r.get("bootstrap")
    if _ci_entry(ci, "accuracy") is None:
        return None
    parts = []
    for key, name, percent in (("accuracy", "accuracy", True), ("balanced_accuracy", "balanced accuracy", True),
                               ("macro_f1", "macro-F1", True), ("auc_ovr_macro", "AUC (OvR macro)", False)):
        entry = _ci_entry(ci, key)
        if entry is None:
            parts.append(f"{name} n/a")
        else:
            fmt = _pct if percent else _dec
            parts.append(f"{name} [{fmt(entry['low'])}, {fmt(entry['high'])}]{'%' if percent else ''}")
    return ", ".join(parts)


def _ci_method(r: Mapping[str, Any]) -> str:
    ci = r["bootstrap"]
    return (f"{100 * ci['level']:g}% CI, {ci['method']}, {ci['n_boot']} resamples of the {ci['n']} test images, "
            f"seed {ci['seed']}")


def _scaling_text(r: Mapping[str, Any]) -> Optional[str]:
    ts = r.get("temperature_scaling")
    if not ts:
        return None
    before, after = ts.get("test_before") or {}, ts.get("test_after") or {}
    return (f"T = {float(ts['temperature']):.3f} fitted on the validation split (n = {ts.get('n_val')}; validation "
            f"NLL {_dec(ts.get('val_nll_before'))} → {_dec(ts.get('val_nll_after'))}); on test: ECE "
            f"{_pct(before.get('ece'))}% → {_pct(after.get('ece'))}%, Brier {_dec(before.get('brier'))} → "
            f"{_dec(after.get('brier'))}, NLL {_dec(before.get('nll'))} → {_dec(after.get('nll'))}")


def _confusion_markdown(m: Mapping[str, Any]) -> list[str]:
    names = [_md_escape(n) for n in m["class_names"]]
    lines = [
        "| true \\ predicted | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, row in zip(names, m["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _headline_markdown(m: Mapping[str, Any]) -> str:
    parts = [
        f"accuracy {_pct(m.get('accuracy'))}%",
        f"balanced accuracy {_pct(m.get('balanced_accuracy'))}%",
        f"macro-F1 {_pct(m.get('macro_f1'))}%",
        f"weighted-F1 {_pct(m.get('weighted_f1'))}%",
        f"AUC (OvR macro / weighted) {_dec(m.get('auc_ovr_macro'))} / {_dec(m.get('auc_ovr_weighted'))}",
        f"PR-AUC (macro) {_dec(m.get('pr_auc_macro'))}",
    ]
    if m.get("pr_auc_positive") is not None:
        parts.append(f"PR-AUC (positive class) {_dec(m.get('pr_auc_positive'))}")
    parts += [
        f"MCC {_dec(m.get('mcc'))}",
        f"Cohen's kappa {_dec(m.get('cohen_kappa'))}",
    ]
    if "ece" in m:
        parts += [f"ECE {_pct(m.get('ece'))}%", f"Brier {_dec(m.get('brier'))}", f"NLL {_dec(m.get('nll'))}"]
    return ", ".join(parts)


def model_facts(r: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """The per-model facts both reports list, as (label, text, is code); each renderer only formats them."""
    m = r["metrics"]
    facts = [("Parameters", f"{_format_params(r.get('params'))}; GFLOPs per image: {_format_gflops(r.get('flops'))}",
              False)]
    if r.get("best_epoch") is not None:
        facts.append(("Checkpoint epoch", str(r["best_epoch"]), False))
    if r.get("train_time_s") is not None:
        facts.append(("Training time", _format_duration(r.get("train_time_s")), False))
    if r.get("checkpoint"):
        facts.append(("Checkpoint", str(r["checkpoint"]), True))
    val = r.get("val_metrics")
    if val:
        facts.append(("Validation (at the checkpoint)",
                      f"accuracy {_pct(val.get('accuracy'))}%, balanced accuracy "
                      f"{_pct(val.get('balanced_accuracy'))}%, macro-F1 {_pct(val.get('macro_f1'))}%", False))
    facts.append(("Test", _headline_markdown(m), False))
    ci_text = _ci_text(r)
    if ci_text:
        facts.append((_ci_method(r), ci_text, False))
    scaling = _scaling_text(r)
    if scaling:
        facts.append(("Temperature scaling", scaling, False))
    if m.get("auc_note"):
        facts.append(("Note", str(m["auc_note"]), False))
    return facts


def _model_section(label: str, r: Mapping[str, Any]) -> list[str]:
    m = r["metrics"]
    title = f"### {_md_escape(label)}"
    if r.get("model"):
        title += f" ({_code(r['model'])})"
    lines = [title, ""]
    lines += [f"- **{_md_escape(name)}:** {_code(text) if is_code else text}" for name, text, is_code in model_facts(r)]
    lines += ["", "Per class on the test split:", ""]
    lines += _per_class_markdown(m)
    lines += ["", "Confusion matrix on the test split (rows = true class, columns = predicted class):", ""]
    lines += _confusion_markdown(m)
    lines.append("")
    return lines


COMPARISON_NOTE = (
    "Accuracy, balanced accuracy and macro-F1 in percent; AUC is the one-vs-rest ROC AUC (macro average; for two "
    "classes the binary AUC). ECE: expected calibration error (15 equal-width bins of the top-class probability), "
    "before and after temperature scaling with the temperature fitted on the validation split. Each model is "
    "evaluated at the checkpoint chosen on the validation split."
)
CI_NOTE = (
    "Brackets: {level:g}% percentile bootstrap confidence interval over {n_boot} resamples of the test images (the "
    "uncertainty due to the finite test split, for the trained model; it does not cover training randomness)."
)


def comparison_note(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The note under the comparison table; it explains the brackets only when there are intervals."""
    ci = next((r["bootstrap"] for r in results.values() if _ci_entry(r.get("bootstrap"), "accuracy")), None)
    if ci is None:
        return COMPARISON_NOTE
    return COMPARISON_NOTE + " " + CI_NOTE.format(level=100 * ci["level"], n_boot=ci["n_boot"])
CALIBRATION_NOTE = (
    "Temperature scaling divides the logits by one number T fitted on the validation split (minimum NLL) and "
    "applied unchanged to the test split; it never changes the predicted class, so accuracy and the confusion "
    "matrix are the same. Arrows show before → after. ECE: expected calibration error over 15 equal-width bins of "
    "the top-class probability (0 is perfect); Brier: mean over images of the sum over classes of (p - onehot)^2, "
    "in [0, 2]; NLL: mean negative log-likelihood of the true class. Lower is better for all three."
)
FIGURE_TITLES = {
    "confusion_matrices": "Confusion matrices",
    "roc_curves": "ROC curves (one-vs-rest per class, and macro average)",
    "reliability_diagrams": "Reliability diagrams (before and after temperature scaling)",
    "training_curves": "Training curves",
}


def _markdown(results: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any], summary: Mapping[str, Any],
              figures: Mapping[str, Any] = REPORT_FILES) -> str:
    lines = ["# HDKD pipeline report", ""]
    stamp = [f"{_humanise(k)}: {_inline(k, meta[k])}" for k in _STAMP_KEYS if meta.get(k)]
    if stamp:
        lines += ["; ".join(stamp), ""]
    lines += ["## Dataset and setup", ""]
    lines += _meta_section(meta)
    lines += ["", "## Results on the test split", ""]
    lines += [format_comparison_table(results), ""]
    lines += [comparison_note(results), ""]
    paragraph = _summary_paragraph(results, summary)
    if paragraph:
        lines += [paragraph, ""]
    lines += ["## Calibration", ""]
    lines += _md_table(CALIBRATION_HEADER, calibration_rows(results))
    lines += ["", CALIBRATION_NOTE, ""]
    lines += ["## Figures", ""]
    for key, title in FIGURE_TITLES.items():
        if key in figures:
            lines += [f"![{title}]({REPORT_FILES[key]})", ""]
    lines += [
        "## Per model",
        "",
    ]
    for label, r in results.items():
        lines += _model_section(str(label), r)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------------- public


def _check_results(results: Mapping[str, Any]) -> None:
    if not results:
        raise ValueError("write_pipeline_report needs at least one model in results")
    for label, r in results.items():
        if not isinstance(r, Mapping) or not isinstance(r.get("metrics"), Mapping):
            raise ValueError(f"results[{label!r}] must be a dict with a 'metrics' dict from classification_metrics")
        for key in ("class_names", "confusion_matrix", "per_class"):
            if key not in r["metrics"]:
                raise ValueError(f"results[{label!r}]['metrics'] lacks {key!r}; use classification_metrics")


def _json_results(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    return {label: {k: v for k, v in r.items() if k != PREDICTIONS_KEY} for label, r in results.items()}


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
    from .html_report import render_html

    _check_results(results)
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
    summary = _summary(results)
    markdown = _markdown(results, meta, summary, figures)
    html_text = render_html(results, meta, summary, figures)
    document = {
        "meta": meta,
        "summary": summary,
        "results": _json_results(results),
        "files": {key: REPORT_FILES[key] for key in paths if key != "json"},
    }
    text = json.dumps(_to_jsonable(document), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["html"], html_text)
    atomic_write_text(paths["json"], text)
    return paths
