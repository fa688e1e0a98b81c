"""Everything the report says about one model, from its test (and validation) predictions, in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from hdkd.evaluation.bootstrap import bootstrap_ci
from hdkd.evaluation.calibration import temperature_scaling_report
from hdkd.evaluation.metrics import _validate, classification_metrics

__all__ = ["assess_predictions"]


def assess_predictions(
    y_test: Any,
    probs_test: Any,
    class_names: Sequence[str],
    y_val: Optional[Any] = None,
    probs_val: Optional[Any] = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Test metrics, bootstrap CIs and temperature scaling (fitted on validation) of one model.

    Args:
        y_test, probs_test: test labels and softmax probabilities.
        class_names: the class names.
        y_val, probs_val: validation labels and probabilities of the same model (same checkpoint); the temperature
            is fitted on them only. Without them there is no temperature scaling (``None``).
        n_boot: bootstrap resamples for the confidence intervals (0: none, ``None`` in the result).
        seed: seed of the bootstrap resampling.

    Returns ``{"metrics", "bootstrap", "temperature_scaling", "predictions"}``: ``metrics`` from
    ``classification_metrics``; ``bootstrap`` from ``bootstrap_ci``; ``temperature_scaling`` from
    ``temperature_scaling_report``; ``predictions`` ``{"y_true", "probs", "class_names"}`` as numpy arrays (for the
    ROC figure; ``write_pipeline_report`` does not put them into ``report.json``).
    """
    y, p, names = _validate(y_test, probs_test, class_names)
    metrics = classification_metrics(y, p, names)
    ci = bootstrap_ci(y, p, names, n_boot=n_boot, seed=seed, estimates=metrics) if n_boot and n_boot > 0 else None
    scaling = None
    if y_val is not None and probs_val is not None and len(np.asarray(y_val)) > 0:
        yv, pv, _ = _validate(y_val, probs_val, names)
        scaling = temperature_scaling_report(yv, pv, y, p)
    return {
        "metrics": metrics,
        "bootstrap": ci,
        "temperature_scaling": scaling,
        "predictions": {"y_true": y, "probs": p, "class_names": list(names)},
    }
