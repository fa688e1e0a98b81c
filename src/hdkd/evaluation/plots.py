"""PNG figures for the report: confusion matrices side by side, and training curves of several models.

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

from ..io import atomic_write

__all__ = ["plot_confusion_matrices", "plot_training_curves"]

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
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=font,
                        color="white" if norm[i, j] > 0.5 else "black")
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
    (fraction or percentage). An empty history just has no line. Returns ``path``.
    """
    fig = Figure(figsize=(12.0, 4.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    plotted = False
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
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_title(name)
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
