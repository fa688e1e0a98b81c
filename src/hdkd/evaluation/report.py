"""The pipeline report: ``report.json``, ``report.md`` and two PNGs comparing teacher, student and HDKD.

Write order makes a crash visible: stale ``report.json`` / ``report.md`` from an earlier run are removed first, the
PNGs are drawn next, and the Markdown and then the JSON are written last, each atomically. A folder holding a
``report.json`` therefore always holds a complete report of one run.
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
from .metrics import _dec, _format_gflops, _format_params, _md_escape, _pct, format_comparison_table
from .plots import plot_confusion_matrices, plot_training_curves

__all__ = ["write_pipeline_report", "REPORT_FILES"]

# Keys of the returned dict -> file names inside out_dir.
REPORT_FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "confusion_matrices": "confusion_matrices.png",
    "training_curves": "training_curves.png",
}

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


def _per_class_markdown(m: Mapping[str, Any]) -> list[str]:
    lines = [
        "| Class | Precision (%) | Recall / sensitivity (%) | Specificity (%) | F1 (%) | AUC (OvR) | Support |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in m["class_names"]:
        pc = m["per_class"][name]
        lines.append(
            f"| {_md_escape(name)} | {_pct(pc['precision'])} | {_pct(pc['recall'])} | {_pct(pc['specificity'])} | "
            f"{_pct(pc['f1'])} | {_dec(pc.get('auc'))} | {pc['support']} |"
        )
    return lines


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
        f"MCC {_dec(m.get('mcc'))}",
        f"Cohen's kappa {_dec(m.get('cohen_kappa'))}",
    ]
    return ", ".join(parts)


def _model_section(label: str, r: Mapping[str, Any]) -> list[str]:
    m = r["metrics"]
    title = f"### {_md_escape(label)}"
    if r.get("model"):
        title += f" ({_code(r['model'])})"
    lines = [title, ""]
    lines.append(f"- **Parameters:** {_format_params(r.get('params'))}; **GFLOPs per image:** "
                 f"{_format_gflops(r.get('flops'))}")
    if r.get("best_epoch") is not None:
        lines.append(f"- **Checkpoint epoch:** {r['best_epoch']}")
    if r.get("train_time_s") is not None:
        lines.append(f"- **Training time:** {_format_duration(r.get('train_time_s'))}")
    if r.get("checkpoint"):
        lines.append(f"- **Checkpoint:** {_code(r['checkpoint'])}")
    val = r.get("val_metrics")
    if val:
        lines.append(
            f"- **Validation (at the checkpoint):** accuracy {_pct(val.get('accuracy'))}%, balanced accuracy "
            f"{_pct(val.get('balanced_accuracy'))}%, macro-F1 {_pct(val.get('macro_f1'))}%"
        )
    lines.append(f"- **Test:** {_headline_markdown(m)}")
    if m.get("auc_note"):
        lines.append(f"- **Note:** {_md_escape(m['auc_note'])}")
    lines += ["", "Per class on the test split:", ""]
    lines += _per_class_markdown(m)
    lines += ["", "Confusion matrix on the test split (rows = true class, columns = predicted class):", ""]
    lines += _confusion_markdown(m)
    lines.append("")
    return lines


def _markdown(results: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    lines = ["# HDKD pipeline report", ""]
    stamp = [f"{_humanise(k)}: {_inline(k, meta[k])}" for k in _STAMP_KEYS if meta.get(k)]
    if stamp:
        lines += ["; ".join(stamp), ""]
    lines += ["## Dataset and setup", ""]
    lines += _meta_section(meta)
    lines += ["", "## Results on the test split", ""]
    lines += [format_comparison_table(results), ""]
    lines += [
        "Accuracy, balanced accuracy and macro-F1 in percent; AUC is the one-vs-rest ROC AUC (macro average; for two "
        "classes the binary AUC). Each model is evaluated at the checkpoint chosen on the validation split.",
        "",
    ]
    paragraph = _summary_paragraph(results, summary)
    if paragraph:
        lines += [paragraph, ""]
    lines += [
        f"![Confusion matrices]({REPORT_FILES['confusion_matrices']})",
        "",
        f"![Training curves]({REPORT_FILES['training_curves']})",
        "",
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


def write_pipeline_report(out_dir: Path, results: dict[str, dict], meta: dict) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``confusion_matrices.png`` and ``training_curves.png`` into ``out_dir``.

    Args:
        out_dir: folder to write into (created if missing).
        results: model label (``"teacher"``, ``"student"``, ``"hdkd"``; order kept) -> dict with ``metrics``
            (``classification_metrics`` on the test split, required) and optionally ``model`` (timm name),
            ``params``, ``flops`` (per image), ``val_metrics``, ``history`` (per-epoch dicts), ``best_epoch``,
            ``train_time_s`` and ``checkpoint``.
        meta: free-form run information (dataset, class counts per split, img_size, epochs, seed, command,
            hdkd_version, timestamp, ...), written to the JSON as given and listed in the Markdown.

    Returns ``{"json", "markdown", "confusion_matrices", "training_curves"}`` -> path. Stale ``report.json`` and
    ``report.md`` are deleted first and rewritten last (atomically), so a crash never leaves a report that looks
    complete.
    """
    _check_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: out_dir / name for key, name in REPORT_FILES.items()}
    for key in ("json", "markdown"):
        paths[key].unlink(missing_ok=True)

    plot_confusion_matrices({label: r["metrics"] for label, r in results.items()}, paths["confusion_matrices"])
    plot_training_curves({label: r.get("history") or [] for label, r in results.items()}, paths["training_curves"])

    # Render both texts before writing either, so a rendering error leaves neither file behind.
    summary = _summary(results)
    markdown = _markdown(results, meta, summary)
    document = {
        "meta": meta,
        "summary": summary,
        "results": results,
        "files": {key: name for key, name in REPORT_FILES.items() if key != "json"},
    }
    text = json.dumps(_to_jsonable(document), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["json"], text)
    return paths
