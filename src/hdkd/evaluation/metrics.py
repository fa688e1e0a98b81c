"""Classification metrics for a model's softmax outputs, and plain-text / Markdown tables of them.

Every number comes from scikit-learn (the reference implementation) except three simple ones computed here with
numpy: the per-class specificity, TN / (TN + FP), read off the confusion matrix; the expected calibration error
(ECE, which scikit-learn does not have); and the multi-class Brier score (scikit-learn only has it from 1.7 on). The
result is a JSON-serialisable dict of plain Python floats, ints, lists and ``None`` so it can be written straight
into ``report.json``.

Calibration (how far the predicted probabilities are from the observed frequencies):

* **ECE**, expected calibration error (Guo et al., 2017): the top-label confidence ``max_k p_k`` of each sample is
  put into one of ``n_bins`` (default 15) equal-width bins, right-closed ``((b-1)/M, b/M]`` (a confidence of exactly
  0 goes into the first bin); ECE = sum over bins of (bin size / N) * |accuracy in bin - mean confidence in bin|.
  0 is perfect; empty bins contribute nothing. The per-bin values are returned too (``reliability``) for the
  reliability diagram.
* **Brier score**, multi-class form (Brier, 1950): mean over samples of sum over classes of (p_k - onehot_k)^2, in
  [0, 2]. With two classes this is *twice* the binary Brier score scikit-learn's ``brier_score_loss(y, p[:, 1])``
  returns (both classes' squared errors are counted); the same definition is used for every class count so that
  numbers stay comparable.
* **NLL**, negative log-likelihood (mean cross-entropy) of the true class, scikit-learn's ``log_loss`` with
  ``labels`` = every class (probabilities clipped by scikit-learn to its float epsilon).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from hdkd.errors import DataError

__all__ = [
    "classification_metrics",
    "calibration_metrics",
    "expected_calibration_error",
    "brier_score",
    "reliability_bins",
    "ECE_BINS",
]

# The metrics every summary leads with (seed summaries, ablation records and reports, model metadata).
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr_macro", "ece")
RECORD_METRICS = HEADLINE_METRICS + ("n", "weighted_f1", "mcc", "cohen_kappa", "brier", "nll")


def headline_metrics(metrics: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The scalar metrics worth recording of a ``classification_metrics`` result (no per-class tables)."""
    metrics = metrics or {}
    return {k: metrics[k] for k in RECORD_METRICS if k in metrics}


ECE_BINS = 15  # equal-width confidence bins for the ECE and the reliability diagram

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
        raise DataError(f"y_true has labels outside 0..{n_classes - 1} (e.g. {int(y[bad][0])}) for {n_classes} classes")
    p = p.astype(np.float64)
    nonfinite = ~np.isfinite(p).all(axis=1)
    if nonfinite.any():
        raise DataError(f"probs has non-finite values (NaN/inf) in {int(nonfinite.sum())} rows; did training diverge?")
    if p.min() < -_ROW_SUM_ATOL or p.max() > 1 + _ROW_SUM_ATOL:
        raise DataError("probs must be softmax probabilities in [0, 1]; got values outside it (logits?)")
    row_sums = p.sum(axis=1)
    if np.abs(row_sums - 1.0).max() > _ROW_SUM_ATOL:
        raise DataError(
            f"probs rows must sum to 1 (softmax probabilities); worst row sums to "
            f"{row_sums[np.argmax(np.abs(row_sums - 1))]:.4f}"
        )
    # Remove float32 rounding so scikit-learn's own "sums to 1" check for multiclass AUC always passes.
    p = np.clip(p, 0.0, None)
    p = p / p.sum(axis=1, keepdims=True)
    return y, p, names


def _float_or_none(x: Any) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def _default_names(probs: Any) -> list[str]:
    p = _as_numpy(probs)
    n = p.shape[1] if p.ndim == 2 else 0
    return [str(k) for k in range(n)]


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Right-closed equal-width bins ((b-1)/M, b/M], b = 1..M, as 0-based indices; 0 goes into the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def reliability_bins(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> dict:
    """Per-bin data of the reliability diagram (top-label confidence, ``n_bins`` equal-width bins on [0, 1]).

    Returns ``{"n_bins", "edges", "count", "confidence", "accuracy"}``: ``edges`` has ``n_bins + 1`` values;
    ``count`` the samples per bin; ``confidence`` / ``accuracy`` the mean top-label probability and the fraction
    of correct predictions in each bin (``None`` for empty bins). Bins are right-closed, see the module docstring.
    """
    y, p, _ = _validate(y_true, probs, _default_names(probs))
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    n_bins = int(n_bins)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return {
        "n_bins": n_bins,
        "edges": [float(e) for e in np.linspace(0.0, 1.0, n_bins + 1)],
        "count": [int(c) for c in count],
        "confidence": [float(conf_sum[b] / count[b]) if count[b] else None for b in range(n_bins)],
        "accuracy": [float(acc_sum[b] / count[b]) if count[b] else None for b in range(n_bins)],
    }


def _ece_from_bins(bins: Mapping[str, Any]) -> float:
    total = sum(bins["count"])
    return float(
        sum(c / total * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c)
    )


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins on the top-label confidence (fraction in [0, 1]; 0 is perfect)."""
    return _ece_from_bins(reliability_bins(y_true, probs, n_bins))


def brier_score(y_true: Any, probs: Any) -> float:
    """Multi-class Brier score: mean over samples of sum over classes of (p_k - onehot_k)^2, in [0, 2].

    For two classes it is twice scikit-learn's binary ``brier_score_loss(y, p[:, 1])``.
    """
    y, p, _ = _validate(y_true, probs, _default_names(probs))
    onehot = np.zeros_like(p)
    onehot[np.arange(y.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def calibration_metrics(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> dict:
    """``{"ece", "ece_bins", "brier", "nll", "reliability"}`` of softmax probabilities (see the module docstring)."""
    y, p, _ = _validate(y_true, probs, _default_names(probs))
    bins = reliability_bins(y, p, n_bins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred values do not sum to one" after float rounding
        nll = skm.log_loss(y, p, labels=list(range(p.shape[1])))
    return {
        "ece": _ece_from_bins(bins),
        "ece_bins": bins["n_bins"],
        "brier": brier_score(y, p),
        "nll": _float_or_none(nll),
        "reliability": bins,
    }


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """Metrics of predictions ``argmax(probs)`` against ``y_true``.

    Args:
        y_true: (N,) integer class indices in ``0..C-1``.
        probs: (N, C) softmax probabilities (each row sums to 1).
        class_names: C names, index-aligned with the columns of ``probs``.

    Returns a JSON-serialisable dict with keys ``n``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
    ``weighted_f1``, ``auc_ovr_macro``, ``auc_ovr_weighted``, ``auc_note``, ``pr_auc_macro``, ``pr_auc_positive``,
    ``mcc``, ``cohen_kappa``, ``ece``, ``ece_bins``, ``brier``, ``nll``, ``reliability``, ``per_class``
    ({name: {precision, recall, specificity, f1, support, auc, pr_auc}}), ``confusion_matrix`` (rows = true class,
    columns = predicted class, every class present) and ``class_names``. Accuracy-type values are fractions in
    [0, 1]; ECE, Brier, NLL and ``reliability`` are described in the module docstring.

    Conventions:
        * Undefined ratios (a class never predicted, or absent) count as 0 (``zero_division=0``); specificity too.
        * ``balanced_accuracy``, ``macro_f1`` and ``weighted_f1`` follow scikit-learn's defaults: they average over the
          classes that occur in ``y_true`` or in the predictions (balanced accuracy: in ``y_true``), so a class absent
          from a small test split does not count as a 0 in the average. ``per_class`` always lists every class.
        * AUC is one-vs-rest on the probabilities; with 2 classes both AUC keys hold the binary AUC of class 1. When a
          class is absent from ``y_true`` the AUC is undefined: the keys are ``None`` and ``auc_note`` says why
          (``auc_note`` is ``None`` otherwise). Per-class AUC is ``None`` only for the absent classes.
        * PR-AUC is scikit-learn's average precision (the area under the precision-recall curve as a step
          function), one-vs-rest per class on ``probs[:, k]``; ``pr_auc_macro`` is the unweighted mean over every
          class (for two classes too: the mean of both classes' APs); ``pr_auc_positive`` is the AP of class 1 for
          binary problems (the usual "positive class" number) and ``None`` otherwise. A class absent from ``y_true``
          has no AP (``None``) and then ``pr_auc_macro`` is ``None`` too, as for the ROC AUC. The AP of a
          classifier that guesses equals the class prevalence, not 0.5.
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
        per_class_ap: list[Optional[float]] = [None] * n_classes
        for k in range(n_classes):
            if present[k]:
                per_class_ap[k] = _float_or_none(skm.average_precision_score((y == k).astype(int), p[:, k]))
        if present.sum() >= 2:
            for k in range(n_classes):
                if present[k]:
                    per_class_auc[k] = _float_or_none(skm.roc_auc_score((y == k).astype(int), p[:, k]))
        pr_auc_macro = _float_or_none(np.mean(per_class_ap)) if all(v is not None for v in per_class_ap) else None
        pr_auc_positive = per_class_ap[1] if n_classes == 2 else None
        if present.all():
            auc_note = None
            if n_classes == 2:
                auc_macro = auc_weighted = _float_or_none(skm.roc_auc_score(y, p[:, 1]))
            else:
                auc_macro = _float_or_none(skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels))
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
            "pr_auc": per_class_ap[k],
        }
    calibration = calibration_metrics(y, p)

    return {
        "n": int(y.shape[0]),
        "accuracy": float(accuracy),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(macro_f1),
        "weighted_f1": float(weighted_f1),
        "auc_ovr_macro": auc_macro,
        "auc_ovr_weighted": auc_weighted,
        "auc_note": auc_note,
        "pr_auc_macro": pr_auc_macro,
        "pr_auc_positive": pr_auc_positive,
        "mcc": _float_or_none(mcc),
        "cohen_kappa": _float_or_none(kappa),
        "ece": calibration["ece"],
        "ece_bins": calibration["ece_bins"],
        "brier": calibration["brier"],
        "nll": calibration["nll"],
        "reliability": calibration["reliability"],
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "class_names": names,
    }


# ----------------------------------------------------------------------------------------------------------- tables
