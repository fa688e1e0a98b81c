"""Evaluation: metrics of softmax outputs, calibration and temperature scaling, bootstrap confidence intervals,
comparison tables, figures and the pipeline report (Markdown, JSON and self-contained HTML)."""
from .assess import assess_predictions
from .bootstrap import bootstrap_ci
from .calibration import apply_temperature, fit_temperature, temperature_scaling_report
from .metrics import (
    brier_score,
    calibration_metrics,
    classification_metrics,
    expected_calibration_error,
    format_comparison_table,
    format_metrics_table,
    reliability_bins,
)
from .plots import plot_confusion_matrices, plot_reliability_diagrams, plot_roc_curves, plot_training_curves
from .report import write_pipeline_report

__all__ = [
    "classification_metrics",
    "calibration_metrics",
    "expected_calibration_error",
    "brier_score",
    "reliability_bins",
    "fit_temperature",
    "apply_temperature",
    "temperature_scaling_report",
    "bootstrap_ci",
    "assess_predictions",
    "format_metrics_table",
    "format_comparison_table",
    "plot_confusion_matrices",
    "plot_roc_curves",
    "plot_reliability_diagrams",
    "plot_training_curves",
    "write_pipeline_report",
]
