"""Evaluation (computing only): metrics of softmax outputs, calibration and temperature scaling, bootstrap
confidence intervals, seed summaries, inference over a loader and the one way a checkpoint is evaluated."""

from hdkd.evaluation.assess import assess_predictions
from hdkd.evaluation.bootstrap import bootstrap_ci
from hdkd.evaluation.calibration import apply_temperature, fit_temperature, temperature_scaling_report
from hdkd.evaluation.metrics import (
    brier_score,
    calibration_metrics,
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
)
from hdkd.evaluation.predict import predict

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
    "predict",
]
