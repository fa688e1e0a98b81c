"""PNG figures for the report: confusion matrices, ROC curves and reliability diagrams side by side (one panel per
model), and training curves of several models.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas (``Figure`` + ``FigureCanvasAgg``), never
through ``pyplot``: nothing is registered in pyplot's global figure list (so nothing needs closing and nothing leaks in
long runs), no display is needed, and importing this module does not switch the backend of a user's notebook or GUI.
Each PNG is written atomically (temp file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from hdkd.io import atomic_write

__all__ = ["plot_confusion_matrices", "plot_training_curves", "plot_roc_curves", "plot_reliability_diagrams"]

_DPI = 120


def _save_png(fig: Figure, path: os.PathLike | str) -> Path:
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly (headless, no pyplot)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=_DPI))


def _row_normalised(cm: np.ndarray) -> np.ndarray:
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)


def plot_confusion_matrices(named_metrics: Mapping[str, Mapping[str, Any]], path: os.PathLike | str) -> Path:
    """One confusion-matrix panel per model, side by side, written as a PNG to ``path``.

    ``named_metrics`` maps a model label to a ``classification_metrics`` dict. Cells are annotated with counts and
    coloured by the row-normalised value (the fraction of the true class, i.e. per-class recall on the diagonal), on a
    shared 0..1 colour scale. Returns ``path``.
    """
    if not named_metrics:
        raise ValueError("plot_confusion_matrices needs at least one model")
    n_classes = max(len(m["class_names"]) for m in named_metrics.values())
    side = max(3.2, 0.5 * n_classes + 1.6)
    n_models = len(named_metrics)
    fig = Figure(figsize=(side * n_models + 1.2, side + 0.9), layout="constrained")
    axes = fig.subplots(1, n_models, squeeze=False)[0]
    font = 9 if n_classes <= 10 else max(4, int(90 / n_classes))
    image = None
    for ax, (label, m) in zip(axes, named_metrics.items()):
        cm = np.asarray(m["confusion_matrix"], dtype=np.int64)
        names = [str(c) for c in m["class_names"]]
        norm = _row_normalised(cm)
        image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, labels=names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
        ax.set_yticks(ticks, labels=names, fontsize=font)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        title = str(label)
        if m.get("accuracy") is not None and m.get("balanced_accuracy") is not None:
            title += f"\nacc {100 * m['accuracy']:.2f}%  |  bal. acc {100 * m['balanced_accuracy']:.2f}%"
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of true class")
    return _save_png(fig, path)


def _number(value: Any) -> float:
    """A history value as a float, NaN when missing/None/non-numeric (NaN breaks the plotted line there)."""
    if value is None:
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _series(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([_number(row.get(key)) for row in history], dtype=np.float64)


def _epochs(history: Sequence[Mapping[str, Any]]) -> np.ndarray:
    xs = [_number(row.get("epoch")) for row in history]
    if any(math.isnan(x) for x in xs):
        return np.arange(1, len(history) + 1, dtype=np.float64)
    return np.array(xs, dtype=np.float64)


def plot_training_curves(named_histories: Mapping[str, Sequence[Mapping[str, Any]]], path: os.PathLike | str) -> Path:
    """Loss and accuracy panels, one colour per model (train solid, validation dashed), written as a PNG to ``path``.

    Each history is a list of per-epoch dicts with ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss`` and
    ``val_accuracy``; other keys are ignored, and missing or ``None`` values leave a gap. Accuracy is plotted as given
    (fraction or percentage). An empty history just has no line. The loss axis is logarithmic when the positive
    losses span more than a factor of 20 (e.g. an HDKD training loss with its feature term next to plain
    cross-entropies), so that every curve stays readable. Returns ``path``.
    """
    fig = Figure(figsize=(12.0, 4.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    plotted = False
    losses: list[np.ndarray] = []
    for i, (label, history) in enumerate(named_histories.items()):
        history = list(history or [])
        if not history:
            continue
        x = _epochs(history)
        color = f"C{i % 10}"
        marker: Optional[str] = "o" if len(history) <= 40 else None
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            for split, style in (("train", "-"), ("val", "--")):
                y = _series(history, f"{split}_{metric}")
                if np.isnan(y).all():
                    continue
                ax.plot(x, y, linestyle=style, color=color, marker=marker, markersize=3, label=f"{label} ({split})")
                plotted = True
                if metric == "loss":
                    losses.append(y[np.isfinite(y)])
    loss_values = np.concatenate(losses) if losses else np.array([])
    log_loss = bool(loss_values.size and loss_values.min() > 0 and loss_values.max() / loss_values.min() > 20)
    if log_loss:
        ax_loss.set_yscale("log")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_title(name + (" (log scale)" if ax is ax_loss and log_loss else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not plotted:
        for ax in (ax_loss, ax_acc):
            ax.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax.transAxes)
    return _save_png(fig, path)


def _panel_message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area (numpy 2 renamed ``trapz`` to ``trapezoid``)."""
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(trapezoid(y, x))


def plot_roc_curves(named_predictions: Mapping[str, Optional[Mapping[str, Any]]], path: os.PathLike | str) -> Path:
    """One ROC panel per model, side by side: one-vs-rest curve of every class plus the macro-average curve.

    ``named_predictions`` maps a model label to ``{"y_true": (N,), "probs": (N, C), "class_names": [...]}`` (or
    ``None``: the panel says so). The macro-average curve is the mean of the per-class TPRs interpolated on the union
    of their FPR points, so its area equals the mean of the per-class AUCs (the reported macro AUC). With two
    classes only the curve of class 1 is drawn (class 0's one-vs-rest curve is the same curve). A class absent from
    ``y_true`` has no curve and is marked "absent" in the legend. Returns ``path``.
    """
    if not named_predictions:
        raise ValueError("plot_roc_curves needs at least one model")
    n_models = len(named_predictions)
    fig = Figure(figsize=(4.6 * n_models + 0.4, 4.9), layout="constrained")
    axes = fig.subplots(1, n_models, squeeze=False)[0]
    for ax, (label, pred) in zip(axes, named_predictions.items()):
        ax.set_title(str(label), fontsize=10)
        if not pred:
            _panel_message(ax, "no test predictions")
            continue
        y = np.asarray(pred["y_true"]).astype(np.int64)
        probs = np.asarray(pred["probs"], dtype=np.float64)
        names = [str(c) for c in pred.get("class_names") or range(probs.shape[1])]
        classes = [1] if probs.shape[1] == 2 else list(range(probs.shape[1]))
        curves = []
        for k in classes:
            positive = y == k
            if positive.all() or not positive.any():
                ax.plot([], [], color=f"C{k % 10}", label=f"{names[k]} (absent)")
                continue
            fpr, tpr, _ = roc_curve(positive.astype(int), probs[:, k])
            area = _area(fpr, tpr)
            curves.append((fpr, tpr))
            ax.plot(fpr, tpr, color=f"C{k % 10}", linewidth=1.3, label=f"{names[k]} (AUC {area:.3f})")
        if len(classes) > 1 and len(curves) == len(classes):
            grid = np.unique(np.concatenate([c[0] for c in curves]))
            mean_tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves], axis=0)
            area = float(np.mean([_area(f, t) for f, t in curves]))
            ax.plot(
                grid, mean_tpr, color="black", linewidth=2.2, linestyle="-", label=f"macro average (AUC {area:.3f})"
            )
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7 if len(classes) <= 8 else 5, loc="lower right")
    return _save_png(fig, path)


def _reliability_panel(fig: Figure, cell, bins: Optional[Mapping[str, Any]], title: str) -> None:
    """Reliability diagram in grid cell ``cell``: accuracy per bin (bars) over a small histogram of the bin sizes."""
    ax, ax_hist = cell.subgridspec(2, 1, height_ratios=[4, 1], hspace=0.05).subplots(sharex=True)
    if not bins or not bins.get("count"):
        ax.set_title(title, fontsize=9.5)
        _panel_message(ax, "not available")
        ax_hist.set_axis_off()
        return
    edges = np.asarray(bins["edges"], dtype=np.float64)
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    count = np.asarray(bins["count"])
    filled = count > 0
    acc = np.array([a if a is not None else np.nan for a in bins["accuracy"]], dtype=np.float64)
    conf = np.array([c if c is not None else np.nan for c in bins["confidence"]], dtype=np.float64)
    ax.bar(
        centers[filled],
        acc[filled],
        width=width[filled],
        color="#3b75af",
        edgecolor="white",
        linewidth=0.6,
        label="accuracy in bin",
    )
    gap_low = np.minimum(acc, conf)[filled]
    gap = np.abs(conf - acc)[filled]
    ax.bar(
        centers[filled],
        gap,
        bottom=gap_low,
        width=width[filled],
        fill=False,
        hatch="///",
        edgecolor="#d62728",
        linewidth=0.8,
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    total = count.sum()
    ece = float(np.nansum(count[filled] / total * np.abs(acc[filled] - conf[filled])))
    ax.set_title(f"{title}\nECE {100 * ece:.2f}%, n = {int(total)}", fontsize=9.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelbottom=False)
    ax_hist.bar(centers, count / total, width=width, color="#8c8c8c", edgecolor="white", linewidth=0.6)
    ax_hist.set_xlim(0, 1)
    ax_hist.set_ylabel("share", fontsize=8)
    ax_hist.tick_params(labelsize=7)
    ax_hist.grid(True, alpha=0.3)
    ax_hist.set_xlabel("confidence (max probability)")


def plot_reliability_diagrams(named_calibration: Mapping[str, Mapping[str, Any]], path: os.PathLike | str) -> Path:
    """Reliability diagrams, one column per model: as trained (top row) and after temperature scaling (bottom row).

    ``named_calibration`` maps a model label to ``{"before": bins, "after": bins or None, "temperature": T or
    None}``, where ``bins`` is a ``reliability_bins`` dict (``classification_metrics(...)["reliability"]``). Bars are
    the accuracy per confidence bin, the hatched red band the gap to the bin's mean confidence, and the dashed
    diagonal is perfect calibration; under each diagram a grey histogram shows the share of images per bin (bins with
    few images are noisy). The bottom row is left out when no model has an ``after``. Returns ``path``.
    """
    if not named_calibration:
        raise ValueError("plot_reliability_diagrams needs at least one model")
    n_models = len(named_calibration)
    two_rows = any(c.get("after") for c in named_calibration.values())
    n_rows = 2 if two_rows else 1
    fig = Figure(figsize=(4.2 * n_models + 0.4, 5.0 * n_rows), layout="constrained")
    grid = fig.add_gridspec(n_rows, n_models)
    for j, (label, c) in enumerate(named_calibration.items()):
        _reliability_panel(fig, grid[0, j], c.get("before"), f"{label}: as trained")
        if two_rows:
            t = c.get("temperature")
            title = f"{label}: temperature-scaled" + (
                f", T = {float(t):.3g} (from validation)" if t is not None else ""
            )
            _reliability_panel(fig, grid[1, j], c.get("after"), title)
    return _save_png(fig, path)
