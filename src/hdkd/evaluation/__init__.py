"""Evaluation: metrics of softmax outputs, comparison tables, figures and the pipeline report."""
from .metrics import classification_metrics, format_comparison_table, format_metrics_table
from .plots import plot_confusion_matrices, plot_training_curves
from .report import write_pipeline_report

__all__ = [
    "classification_metrics",
    "format_metrics_table",
    "format_comparison_table",
    "plot_confusion_matrices",
    "plot_training_curves",
    "write_pipeline_report",
]
