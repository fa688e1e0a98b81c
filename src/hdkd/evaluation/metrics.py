"""Classification metrics for a model's softmax outputs, and plain-text / Markdown tables of them.

Every number comes from scikit-learn (the reference implementation); the only hand-made metric is the per-class
specificity, TN / (TN + FP), read off the confusion matrix. The result is a JSON-serialisable dict of plain Python
floats, ints, lists and ``None`` so it can be written straight into ``report.json``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from ..errors import DataError

__all__ = ["classification_metrics", "format_metrics_table", "format_comparison_table"]

# Tolerance on "each row of probs sums to 1" (and on the [0, 1] range): float32 and even float16 softmax outputs are
# inside it; logits or unnormalised scores are almost always far outside it.
_ROW_SUM_ATOL = 1e-2


def _as_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, lists and (CPU or GPU) torch tensors without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach()
        if x.is_floating_point():
            x = x.float()  # half / bfloat16 -> float32 (numpy has no bfloat16)
        x = x.cpu().numpy()
    return np.asarray(x)


def _validate(y_true: Any, probs: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = _as_numpy(y_true)
    p = _as_numpy(probs)
    names = [str(c) for c in class_names]
    if y.ndim != 1:
        raise DataError(f"y_true must be 1-D (one label per sample), got shape {y.shape}")
    if p.ndim != 2:
        raise DataError(f"probs must be 2-D (samples x classes), got shape {p.shape}")
    if y.shape[0] != p.shape[0]:
        raise DataError(f"y_true has {y.shape[0]} samples but probs has {p.shape[0]} rows")
    if y.shape[0] == 0:
        raise DataError("cannot compute metrics on an empty split (0 samples)")
    if len(names) != p.shape[1]:
        raise DataError(f"probs has {p.shape[1]} columns but {len(names)} class names were given")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"class names must be unique, duplicated: {dupes}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            pass  # integral floats (e.g. from a float tensor) are fine
        else:
            raise DataError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    n_classes = p.shape[1]
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise DataError(
            f"y_true has labels outside 0..{n_classes - 1} (e.g. {int(y[bad][0])}) for {n_classes} classes"
        )
    p = p.astype(np.float64)
    nonfinite = ~np.isfinite(p).all(axis=1)
    if nonfinite.any():
        raise DataError(f"probs has non-finite values (NaN/inf) in {int(nonfinite.sum())} rows; did training diverge?")
    if p.min() < -_ROW_SUM_ATOL or p.max() > 1 + _ROW_SUM_ATOL:
        raise DataError("probs must be softmax probabilities in [0, 1]; got values outside it (logits?)")
    row_sums = p.sum(axis=1)
    if np.abs(row_sums - 1.0).max() > _ROW_SUM_ATOL:
        raise DataError(
            f"probs rows must sum to 1 (softmax probabilities); worst row sums to {row_sums[np.argmax(np.abs(row_sums - 1))]:.4f}"
        )
    # Remove float32 rounding so scikit-learn's own "sums to 1" check for multiclass AUC always passes.
    p = np.clip(p, 0.0, None)
    p = p / p.sum(axis=1, keepdims=True)
    return y, p, names


def _float_or_none(x: Any) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """Metrics of predictions ``argmax(probs)`` against ``y_true``.

    Args:
        y_true: (N,) integer class indices in ``0..C-1``.
        probs: (N, C) softmax probabilities (each row sums to 1).
        class_names: C names, index-aligned with the columns of ``probs``.

    Returns a JSON-serialisable dict with keys ``n``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
    ``weighted_f1``, ``auc_ovr_macro``, ``auc_ovr_weighted``, ``auc_note``, ``mcc``, ``cohen_kappa``, ``per_class``
    ({name: {precision, recall, specificity, f1, support, auc}}), ``confusion_matrix`` (rows = true class, columns =
    predicted class, every class present) and ``class_names``. Accuracy-type values are fractions in [0, 1].

    Conventions:
        * Undefined ratios (a class never predicted, or absent) count as 0 (``zero_division=0``); specificity too.
        * ``balanced_accuracy``, ``macro_f1`` and ``weighted_f1`` follow scikit-learn's defaults: they average over the
          classes that occur in ``y_true`` or in the predictions (balanced accuracy: in ``y_true``), so a class absent
          from a small test split does not count as a 0 in the average. ``per_class`` always lists every class.
        * AUC is one-vs-rest on the probabilities; with 2 classes both AUC keys hold the binary AUC of class 1. When a
          class is absent from ``y_true`` the AUC is undefined: the keys are ``None`` and ``auc_note`` says why
          (``auc_note`` is ``None`` otherwise). Per-class AUC is ``None`` only for the absent classes.
        * ``cohen_kappa`` is ``None`` when undefined (e.g. every label and prediction is the same single class).

    Raises:
        DataError: shapes disagree, labels are out of range, or ``probs`` are not probabilities.
    """
    y, p, names = _validate(y_true, probs, class_names)
    n_classes = p.shape[1]
    labels = list(range(n_classes))
    y_pred = p.argmax(axis=1)

    with warnings.catch_warnings():
        # Degenerate splits (a class never predicted / absent) are handled explicitly below; keep the log clean.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message=r"y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message=r"A single label was found in 'y_true' and 'y_pred'")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"sklearn\.")

        cm = skm.confusion_matrix(y, y_pred, labels=labels)
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y, y_pred, labels=labels, average=None, zero_division=0
        )
        accuracy = skm.accuracy_score(y, y_pred)
        balanced = skm.balanced_accuracy_score(y, y_pred)
        macro_f1 = skm.f1_score(y, y_pred, average="macro", zero_division=0)
        weighted_f1 = skm.f1_score(y, y_pred, average="weighted", zero_division=0)
        mcc = skm.matthews_corrcoef(y, y_pred)
        kappa = skm.cohen_kappa_score(y, y_pred)

        present = np.bincount(y, minlength=n_classes) > 0
        per_class_auc: list[Optional[float]] = [None] * n_classes
        if present.sum() >= 2:
            for k in range(n_classes):
                if present[k]:
                    per_class_auc[k] = _float_or_none(skm.roc_auc_score((y == k).astype(int), p[:, k]))
        if present.all():
            auc_note = None
            if n_classes == 2:
                auc_macro = auc_weighted = _float_or_none(skm.roc_auc_score(y, p[:, 1]))
            else:
                auc_macro = _float_or_none(
                    skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels)
                )
                auc_weighted = _float_or_none(
                    skm.roc_auc_score(y, p, multi_class="ovr", average="weighted", labels=labels)
                )
        else:
            auc_macro = auc_weighted = None
            missing = [names[k] for k in range(n_classes) if not present[k]]
            auc_note = f"ROC AUC undefined: class(es) absent from y_true: {', '.join(missing)}"

    # Specificity = TN / (TN + FP), one-vs-rest per class, from the confusion matrix.
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    per_class = {}
    for k, name in enumerate(names):
        neg = tn[k] + fp[k]
        per_class[name] = {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "specificity": float(tn[k] / neg) if neg > 0 else 0.0,
            "f1": float(f1[k]),
            "support": int(support[k]),
            "auc": per_class_auc[k],
        }

    return {
        "n": int(y.shape[0]),
        "accuracy": float(accuracy),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(macro_f1),
        "weighted_f1": float(weighted_f1),
        "auc_ovr_macro": auc_macro,
        "auc_ovr_weighted": auc_weighted,
        "auc_note": auc_note,
        "mcc": _float_or_none(mcc),
        "cohen_kappa": _float_or_none(kappa),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "class_names": names,
    }


# ----------------------------------------------------------------------------------------------------------- tables


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100.0 * float(x):.2f}"


def _dec(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}f}"


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align_left: int = 1) -> list[str]:
    """Monospace table: the first ``align_left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            str(c).ljust(w) if i < align_left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Plain-text report of one ``classification_metrics`` dict: headline metrics, per-class table, confusion matrix.

    Accuracy-type values are shown as percentages with 2 decimals; AUC, MCC and kappa as 4-decimal numbers.
    """
    names = list(metrics["class_names"])
    lines = [f"Samples: {metrics['n']}"]
    headline = [
        ("Accuracy (%)", _pct(metrics.get("accuracy"))),
        ("Balanced accuracy (%)", _pct(metrics.get("balanced_accuracy"))),
        ("Macro F1 (%)", _pct(metrics.get("macro_f1"))),
        ("Weighted F1 (%)", _pct(metrics.get("weighted_f1"))),
        ("ROC AUC, OvR macro", _dec(metrics.get("auc_ovr_macro"))),
        ("ROC AUC, OvR weighted", _dec(metrics.get("auc_ovr_weighted"))),
        ("Matthews corr. coef.", _dec(metrics.get("mcc"))),
        ("Cohen's kappa", _dec(metrics.get("cohen_kappa"))),
    ]
    width = max(len(k) for k, _ in headline)
    lines += [f"{k.ljust(width)}  {v}" for k, v in headline]
    if metrics.get("auc_note"):
        lines.append(f"Note: {metrics['auc_note']}")

    lines += ["", "Per class (%):"]
    rows = []
    for name in names:
        pc = metrics["per_class"][name]
        rows.append(
            [name, _pct(pc["precision"]), _pct(pc["recall"]), _pct(pc["specificity"]), _pct(pc["f1"]),
             str(pc["support"])]
        )
    lines += _text_table(["class", "precision", "recall", "specificity", "F1", "support"], rows)

    lines += ["", "Confusion matrix (rows = true class, columns = predicted class):"]
    cm = metrics["confusion_matrix"]
    cm_rows = [[name, *(str(v) for v in row)] for name, row in zip(names, cm)]
    lines += _text_table(["true \\ pred", *names], cm_rows)
    return "\n".join(lines)


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _format_params(params: Any) -> str:
    return "n/a" if params is None else f"{int(params):,}"


def _format_gflops(flops: Any) -> str:
    if flops is None:
        return "n/a"
    flops = float(flops)
    if not math.isfinite(flops):
        return "n/a"
    return f"{flops / 1e9:.3f}" if flops >= 1e7 else f"{flops / 1e9:.3g}"


def format_comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table comparing models: one row per model (in the given order).

    Each value needs ``metrics`` (a ``classification_metrics`` dict) and may have ``params`` (int) and ``flops``
    (FLOPs per image, shown as GFLOPs). Accuracy, balanced accuracy and macro-F1 are percentages with 2 decimals;
    AUC (one-vs-rest macro) has 4 decimals; anything missing or undefined shows as ``n/a``.
    """
    lines = [
        "| Model | Params | GFLOPs | Accuracy (%) | Balanced accuracy (%) | Macro-F1 (%) | AUC (OvR macro) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, res in results.items():
        m = res.get("metrics")
        if m is None:
            raise ValueError(f"results[{label!r}] has no 'metrics' entry")
        lines.append(
            "| "
            + " | ".join(
                [
                    _md_escape(label),
                    _format_params(res.get("params")),
                    _format_gflops(res.get("flops")),
                    _pct(m.get("accuracy")),
                    _pct(m.get("balanced_accuracy")),
                    _pct(m.get("macro_f1")),
                    _dec(m.get("auc_ovr_macro")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)
