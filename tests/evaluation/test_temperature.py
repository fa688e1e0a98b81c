"""Temperature scaling: recovers a known temperature, lowers the validation NLL, logits == probabilities input."""

from __future__ import annotations

import numpy as np
import pytest

from hdkd.evaluation import apply_temperature, assess_predictions, fit_temperature, temperature_scaling_report
from hdkd.evaluation.calibration import T_BOUNDS, temperature_nll


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _draw(t0: float, n: int, n_classes: int, seed: int):
    """Logits z and labels drawn from softmax(z / t0): the NLL-optimal temperature of z is t0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3.0, size=(n, n_classes))
    p = _softmax(z / t0)
    u = rng.random(n)[:, None]
    y = (u > np.cumsum(p, axis=1)).sum(axis=1)  # inverse-CDF sampling, one draw per row
    return z, np.minimum(y, n_classes - 1)


@pytest.mark.parametrize("t0, n_classes", [(2.5, 4), (0.5, 7), (1.0, 2)])
def test_recovers_known_temperature(t0, n_classes):
    z, y = _draw(t0, 8_000, n_classes, seed=int(10 * t0) + n_classes)
    t_hat = fit_temperature(z, y)
    assert t_hat == pytest.approx(t0, rel=0.08)
    # the same temperature from probabilities (log p differs from z by a per-sample constant)
    assert fit_temperature(_softmax(z), y) == pytest.approx(t_hat, rel=1e-5)
    # the fallback search without scipy finds the same optimum
    assert fit_temperature(z, y, use_scipy=False) == pytest.approx(t_hat, rel=1e-4)


def test_reduces_validation_nll_and_keeps_predictions():
    z, y = _draw(1.0, 3000, 5, seed=1)
    over_confident = _softmax(z * 2.0)  # a model whose logits are too large
    t = fit_temperature(over_confident, y)
    assert t == pytest.approx(2.0, rel=0.15)  # logits twice too large
    assert temperature_nll(over_confident, y, t) < temperature_nll(over_confident, y, 1.0)
    for other in (0.5 * t, 2.0 * t):
        assert temperature_nll(over_confident, y, t) <= temperature_nll(over_confident, y, other)
    scaled = apply_temperature(over_confident, t)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    np.testing.assert_array_equal(scaled.argmax(axis=1), over_confident.argmax(axis=1))
    np.testing.assert_allclose(apply_temperature(z * 2.0, t, kind="logits"), scaled, atol=1e-9)
    np.testing.assert_allclose(apply_temperature(z, 1.0, kind="logits"), _softmax(z), atol=1e-12)


def test_report_fits_on_validation_only():
    z_val, y_val = _draw(0.5, 2000, 3, seed=2)
    z_test, y_test = _draw(0.5, 2000, 3, seed=3)
    p_val, p_test = _softmax(z_val), _softmax(z_test)
    report = temperature_scaling_report(y_val, p_val, y_test, p_test)
    assert report["fitted_on"] == "validation" and report["n_val"] == 2000
    assert report["temperature"] == pytest.approx(fit_temperature(p_val, y_val))
    assert report["temperature"] != pytest.approx(fit_temperature(p_test, y_test), rel=1e-6)  # not fitted on test
    assert report["val_nll_after"] < report["val_nll_before"]
    assert report["test_after"]["nll"] < report["test_before"]["nll"]
    assert report["test_after"]["ece"] < report["test_before"]["ece"]
    # the validation split changes the temperature, the test split does not
    other = temperature_scaling_report(y_val, p_val, y_test[:500], p_test[:500])
    assert other["temperature"] == report["temperature"]


def test_degenerate_inputs():
    # perfectly separated validation data: the NLL keeps falling as T -> 0, the bound is returned
    z = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert T_BOUNDS[0] <= fit_temperature(z, np.array([0, 1])) < 1.2 * T_BOUNDS[0]
    # probabilities with exact zeros (float32 underflow) are fine
    p = np.array([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8]])
    t = fit_temperature(p, np.array([0, 1, 1]))
    assert T_BOUNDS[0] <= t <= T_BOUNDS[1]
    assert np.isfinite(apply_temperature(p, t)).all()
    with pytest.raises(ValueError):
        apply_temperature(p, 0.0)


def test_assess_predictions_without_validation_has_no_scaling():
    z, y = _draw(1.0, 200, 3, seed=4)
    a = assess_predictions(y, _softmax(z), ["a", "b", "c"], n_boot=0)
    assert a["temperature_scaling"] is None and a["bootstrap"] is None
    assert a["metrics"]["n"] == 200 and a["predictions"]["probs"].shape == (200, 3)


def test_report_flags_a_temperature_at_the_bound():
    y = np.array([0, 1, 2, 3] * 10)
    constant = np.tile([0.1, 0.1, 0.7, 0.1], (40, 1))  # always predicts class 2 with confidence 0.7
    report = temperature_scaling_report(y, constant, y, constant)
    assert report["at_bound"] and report["temperature"] == pytest.approx(T_BOUNDS[1], rel=0.01)
    assert report["test_after"]["ece"] < 0.01  # flattened to about 1/4, the accuracy
    z, yy = _draw(1.0, 500, 3, seed=8)
    assert not temperature_scaling_report(yy, _softmax(z), yy, _softmax(z))["at_bound"]
