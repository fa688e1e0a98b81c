"""The pipeline report's content, format-neutral: the facts, rows and sentences that both renderers show.

Text that carries emphasis is a list of spans ``(style, text)`` with style ``plain``, ``bold`` or ``code``; the
Markdown renderer (``pipeline_markdown``) and the HTML renderer (``html``) each turn spans into their own markup, so
neither parses the other's output.
"""

from __future__ import annotations

import datetime as _dt
import math
import shlex
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Optional

import numpy as np

from hdkd.reporting.tables import (
    ci_entry,
    dec,
    format_gflops,
    format_params,
    pct,
)

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


TIE_EPS = 1e-12


def to_jsonable(obj: Any) -> Any:
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
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensor, without importing torch
        return to_jsonable(obj.detach().cpu().tolist())
    return str(obj)


_LABELS = {"hdkd_version": "hdkd version", "img_size": "Image size", "timestamp": "Generated"}


def humanise(key: str) -> str:
    if key in _LABELS:
        return _LABELS[key]
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def is_count_table(value: Any) -> bool:
    """{outer: {inner: number}}, e.g. class counts per split: rendered as a table."""
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(v, Mapping) and len(v) > 0 and all(is_number(x) for x in v.values()) for v in value.values())
    )


def format_number(x: Any) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}" if abs(int(x)) >= 10_000 else str(int(x))
    return f"{float(x):g}"


Span = tuple[str, str]  # (style, text): style "plain", "bold" or "code"


def join_spans(parts: list[list[Span]], sep: str) -> list[Span]:
    out: list[Span] = []
    for i, part in enumerate(parts):
        if i:
            out.append(("plain", sep))
        out += part
    return out


def inline_spans(key: str, value: Any) -> list[Span]:
    """A setup value as spans: commands as code, numbers formatted, mappings and lists joined."""
    if value is None:
        return [("plain", "n/a")]
    if "command" in key.lower() or key.lower() in {"cmd", "argv"}:
        if isinstance(value, (list, tuple)):
            value = shlex.join(str(v) for v in value)
        return [("code", str(value))]
    if is_number(value) or isinstance(value, (bool, np.bool_)):
        return [("plain", format_number(value))]
    if isinstance(value, Mapping):
        parts = [[("plain", f"{k}: "), *inline_spans(str(k), v)] for k, v in value.items()]
        return join_spans(parts, ", ") or [("plain", "(none)")]
    if isinstance(value, (list, tuple, set, frozenset)):
        return join_spans([inline_spans(key, v) for v in value], ", ") or [("plain", "(none)")]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return [("plain", value.isoformat())]
    return [("plain", str(value))]


def stamp_spans(meta: Mapping[str, Any]) -> list[Span]:
    """The line under the title: when and by which hdkd version the report was made."""
    parts = [[("plain", f"{humanise(k)}: "), *inline_spans(k, meta[k])] for k in STAMP_KEYS if meta.get(k)]
    return join_spans(parts, "; ")


STAMP_KEYS = ("timestamp", "hdkd_version")  # shown once, under the title


def format_duration(seconds: Any) -> str:
    if seconds is None or not is_number(seconds) or not math.isfinite(float(seconds)):
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def find_role(results: Mapping[str, Any], label: str) -> Optional[str]:
    if label in results:
        return label
    for key in results:
        if str(key).lower() == label:
            return key
    return None


def summarise_results(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Machine-readable summary: best model(s) by test balanced accuracy and the HDKD-vs-student differences."""
    scored = {
        label: float(r["metrics"]["balanced_accuracy"])
        for label, r in results.items()
        if r["metrics"].get("balanced_accuracy") is not None
    }
    best_value = max(scored.values()) if scored else None
    best = [label for label, v in scored.items() if best_value is not None and best_value - v <= TIE_EPS]
    summary: dict[str, Any] = {
        "best_by_test_balanced_accuracy": best,
        "best_test_balanced_accuracy": best_value,
        "hdkd_minus_student_accuracy_points": None,
        "hdkd_minus_student_balanced_accuracy_points": None,
        "test_samples": {label: r["metrics"].get("n") for label, r in results.items()},
    }
    hdkd, student = find_role(results, "hdkd"), find_role(results, "student")
    if hdkd is not None and student is not None:
        for key in ("accuracy", "balanced_accuracy"):
            a, b = results[hdkd]["metrics"].get(key), results[student]["metrics"].get(key)
            if a is not None and b is not None:
                summary[f"hdkd_minus_student_{key}_points"] = 100.0 * (float(a) - float(b))
    return summary


def summary_spans(results: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any]) -> list[Span]:
    sentences = []
    best = summary["best_by_test_balanced_accuracy"]
    if best:
        value = pct(summary["best_test_balanced_accuracy"])
        names = join_spans([[("bold", str(b))] for b in best], " and ")
        verb = "has the best" if len(best) == 1 else "tie for the best"
        sentences.append(
            [("plain", "On the test split, "), *names, ("plain", f" {verb} balanced accuracy ({value}%).")]
        )
    hdkd, student = find_role(results, "hdkd"), find_role(results, "student")
    diff = summary["hdkd_minus_student_accuracy_points"]
    if diff is not None:
        acc_h = pct(results[hdkd]["metrics"]["accuracy"])
        acc_s = pct(results[student]["metrics"]["accuracy"])
        sentence = (
            f"HDKD reaches {acc_h}% test accuracy against {acc_s}% for the same student trained alone: "
            f"{diff:+.2f} accuracy points"
        )
        bal = summary["hdkd_minus_student_balanced_accuracy_points"]
        if bal is not None:
            sentence += f" ({bal:+.2f} points of balanced accuracy)"
        sentences.append([("plain", sentence + ".")])
    teacher = find_role(results, "teacher")
    if teacher is not None and results[teacher]["metrics"].get("accuracy") is not None:
        sentence = f"The teacher reaches {pct(results[teacher]['metrics']['accuracy'])}% test accuracy"
        ref = hdkd if hdkd is not None else student
        p_t, p_r = results[teacher].get("params"), results[ref].get("params") if ref is not None else None
        if p_t and p_r:
            sentence += f" with {float(p_t) / float(p_r):.1f}x the parameters of the {ref} model"
        sentences.append([("plain", sentence + ".")])
    counts = {n for n in summary["test_samples"].values() if n is not None}
    if len(counts) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in summary["test_samples"].items())
        sentences.append(
            [
                ("bold", "Warning:"),
                ("plain", f" the models were evaluated on different numbers of test samples ({detail})."),
            ]
        )
    elif counts:
        sentences.append([("plain", f"Test split: {counts.pop()} samples.")])
    return join_spans(sentences, " ")


CALIBRATION_HEADER = ["Model", "T (fitted on validation)", "Validation NLL", "Test ECE (%)", "Test Brier", "Test NLL"]


def calibration_rows(results: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per model: the temperature and each calibration number as ``before -> after`` scaling."""
    rows = []
    for label, r in results.items():
        m = r["metrics"]
        ts = r.get("temperature_scaling")
        if ts:
            before, after = ts.get("test_before") or {}, ts.get("test_after") or {}
            rows.append(
                [
                    str(label),
                    f"{float(ts['temperature']):.3f} ({'at the search bound; ' if ts.get('at_bound') else ''}"
                    f"n = {ts.get('n_val', 'n/a')})",
                    f"{dec(ts.get('val_nll_before'))} → {dec(ts.get('val_nll_after'))}",
                    f"{pct(before.get('ece', m.get('ece')))} → {pct(after.get('ece'))}",
                    f"{dec(before.get('brier', m.get('brier')))} → {dec(after.get('brier'))}",
                    f"{dec(before.get('nll', m.get('nll')))} → {dec(after.get('nll'))}",
                ]
            )
        else:
            rows.append(
                [
                    str(label),
                    "n/a (no validation predictions)",
                    "n/a",
                    pct(m.get("ece")),
                    dec(m.get("brier")),
                    dec(m.get("nll")),
                ]
            )
    return rows


def ci_text(r: Mapping[str, Any]) -> Optional[str]:
    """``accuracy [a, b]%, ...`` for the model section, or ``None`` without intervals."""
    ci = r.get("bootstrap")
    if ci_entry(ci, "accuracy") is None:
        return None
    parts = []
    for key, name, percent in (
        ("accuracy", "accuracy", True),
        ("balanced_accuracy", "balanced accuracy", True),
        ("macro_f1", "macro-F1", True),
        ("auc_ovr_macro", "AUC (OvR macro)", False),
    ):
        entry = ci_entry(ci, key)
        if entry is None:
            parts.append(f"{name} n/a")
        else:
            fmt = pct if percent else dec
            parts.append(f"{name} [{fmt(entry['low'])}, {fmt(entry['high'])}]{'%' if percent else ''}")
    return ", ".join(parts)


def ci_method(r: Mapping[str, Any]) -> str:
    ci = r["bootstrap"]
    return (
        f"{100 * ci['level']:g}% CI, {ci['method']}, {ci['n_boot']} resamples of the {ci['n']} test images, "
        f"seed {ci['seed']}"
    )


def scaling_text(r: Mapping[str, Any]) -> Optional[str]:
    ts = r.get("temperature_scaling")
    if not ts:
        return None
    before, after = ts.get("test_before") or {}, ts.get("test_after") or {}
    return (
        f"T = {float(ts['temperature']):.3f} fitted on the validation split (n = {ts.get('n_val')}; validation "
        f"NLL {dec(ts.get('val_nll_before'))} → {dec(ts.get('val_nll_after'))}); on test: ECE "
        f"{pct(before.get('ece'))}% → {pct(after.get('ece'))}%, Brier {dec(before.get('brier'))} → "
        f"{dec(after.get('brier'))}, NLL {dec(before.get('nll'))} → {dec(after.get('nll'))}"
    )


def headline_text(m: Mapping[str, Any]) -> str:
    parts = [
        f"accuracy {pct(m.get('accuracy'))}%",
        f"balanced accuracy {pct(m.get('balanced_accuracy'))}%",
        f"macro-F1 {pct(m.get('macro_f1'))}%",
        f"weighted-F1 {pct(m.get('weighted_f1'))}%",
        f"AUC (OvR macro / weighted) {dec(m.get('auc_ovr_macro'))} / {dec(m.get('auc_ovr_weighted'))}",
        f"PR-AUC (macro) {dec(m.get('pr_auc_macro'))}",
    ]
    if m.get("pr_auc_positive") is not None:
        parts.append(f"PR-AUC (positive class) {dec(m.get('pr_auc_positive'))}")
    parts += [
        f"MCC {dec(m.get('mcc'))}",
        f"Cohen's kappa {dec(m.get('cohen_kappa'))}",
    ]
    if "ece" in m:
        parts += [f"ECE {pct(m.get('ece'))}%", f"Brier {dec(m.get('brier'))}", f"NLL {dec(m.get('nll'))}"]
    return ", ".join(parts)


def model_facts(r: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """The per-model facts both reports list, as (label, text, is code); each renderer only formats them."""
    m = r["metrics"]
    facts = [
        ("Parameters", f"{format_params(r.get('params'))}; GFLOPs per image: {format_gflops(r.get('flops'))}", False)
    ]
    if r.get("best_epoch") is not None:
        facts.append(("Checkpoint epoch", str(r["best_epoch"]), False))
    if r.get("train_time_s") is not None:
        facts.append(("Training time", format_duration(r.get("train_time_s")), False))
    if r.get("checkpoint"):
        facts.append(("Checkpoint", str(r["checkpoint"]), True))
    val = r.get("val_metrics")
    if val:
        facts.append(
            (
                "Validation (at the checkpoint)",
                f"accuracy {pct(val.get('accuracy'))}%, balanced accuracy "
                f"{pct(val.get('balanced_accuracy'))}%, macro-F1 {pct(val.get('macro_f1'))}%",
                False,
            )
        )
    facts.append(("Test", headline_text(m), False))
    interval = ci_text(r)
    if interval:
        facts.append((ci_method(r), interval, False))
    scaling = scaling_text(r)
    if scaling:
        facts.append(("Temperature scaling", scaling, False))
    if m.get("auc_note"):
        facts.append(("Note", str(m["auc_note"]), False))
    return facts


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
    ci = next((r["bootstrap"] for r in results.values() if ci_entry(r.get("bootstrap"), "accuracy")), None)
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


def check_results(results: Mapping[str, Any]) -> None:
    if not results:
        raise ValueError("write_pipeline_report needs at least one model in results")
    for label, r in results.items():
        if not isinstance(r, Mapping) or not isinstance(r.get("metrics"), Mapping):
            raise ValueError(f"results[{label!r}] must be a dict with a 'metrics' dict from classification_metrics")
        for key in ("class_names", "confusion_matrix", "per_class"):
            if key not in r["metrics"]:
                raise ValueError(f"results[{label!r}]['metrics'] lacks {key!r}; use classification_metrics")


def json_results(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    return {label: {k: v for k, v in r.items() if k != PREDICTIONS_KEY} for label, r in results.items()}
