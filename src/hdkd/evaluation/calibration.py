"""Temperature scaling (Guo et al., 2017), fitted on the validation split only, and its effect on the test split.

One scalar ``T > 0`` divides the logits before the softmax: ``softmax(z / T)``. ``T > 1`` softens over-confident
predictions, ``T < 1`` sharpens under-confident ones; the arg-max, hence accuracy, balanced accuracy, F1 and the
confusion matrix, never changes. ``T`` is the minimiser of the validation negative log-likelihood, so the test split
stays untouched until the before/after comparison.

Probabilities work as well as logits: ``log softmax(z) = z - logsumexp(z)`` differs from ``z`` by a per-sample
constant, which the softmax ignores, so ``softmax(log(p) / T) == softmax(z / T)``. The pipeline only keeps
probabilities, so it uses that. A probability of exactly 0 (float32 softmax underflow, log-odds below about -103) is
clipped to ``1e-45`` (about the smallest float32) before the log.

Fitting: the NLL is minimised over ``log T`` in ``[log 0.01, log 100]``. The NLL is convex in ``1 / T`` (a log-sum-exp
of linear functions minus a linear function), hence unimodal in ``log T``: a coarse grid of 81 points locates the
basin, and ``scipy.optimize.minimize_scalar`` (bounded Brent) refines it between the grid neighbours; without scipy a
golden-section search on the same bracket does it (same optimum to ~1e-6 in ``log T``). An optimum on a bound (e.g.
a perfectly separated validation split, whose NLL keeps falling as ``T -> 0``) is returned as the bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from hdkd.errors import DataError
from hdkd.evaluation.metrics import _as_numpy, calibration_metrics

__all__ = ["fit_temperature", "apply_temperature", "temperature_nll", "temperature_scaling_report", "T_BOUNDS"]

T_BOUNDS = (0.01, 100.0)
_PROB_FLOOR = 1e-45
_PROB_ATOL = 1e-3


def _looks_like_probs(x: np.ndarray) -> bool:
    return bool(x.min() >= -1e-6 and x.max() <= 1 + 1e-6 and np.abs(x.sum(axis=1) - 1.0).max() <= _PROB_ATOL)


def _as_logits(scores: Any, kind: str = "auto") -> np.ndarray:
    """(N, C) float64 logits; probabilities (``kind="probs"``, or detected by ``"auto"``) become log-probabilities."""
    x = _as_numpy(scores).astype(np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise DataError(f"expected (samples x classes) scores with >= 2 classes and >= 1 sample, got {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("scores have non-finite values (NaN/inf)")
    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"kind must be 'auto', 'logits' or 'probs', got {kind!r}")
    if kind == "probs" or (kind == "auto" and _looks_like_probs(x)):
        if not _looks_like_probs(x):
            raise DataError("kind='probs' but the rows are not probabilities (in [0, 1], summing to 1)")
        return np.log(np.clip(x, _PROB_FLOOR, None))
    return x


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(-np.mean(_log_softmax(logits / temperature)[np.arange(y.shape[0]), y]))


def _labels(y: Any, n: int, n_classes: int) -> np.ndarray:
    y = _as_numpy(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"labels must be 1-D with one label per row of scores ({n}), got shape {y.shape}")
    if not np.all(np.isfinite(y.astype(np.float64))) or not np.all(y == np.round(y)):
        raise DataError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"labels outside 0..{n_classes - 1}")
    return y


def temperature_nll(scores: Any, labels: Any, temperature: float, kind: str = "auto") -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = _as_logits(scores, kind)
    return _nll(z, _labels(labels, z.shape[0], z.shape[1]), float(temperature))


def _golden_section(f, lo: float, hi: float, tol: float = 1e-7, max_iter: int = 200) -> float:
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(max_iter):
        if b - a <= tol:
            break
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    return (a + b) / 2.0


def fit_temperature(scores: Any, labels: Any, kind: str = "auto", use_scipy: Optional[bool] = None) -> float:
    """The temperature minimising the NLL of ``labels`` under ``softmax(scores / T)``: fit it on VALIDATION data.

    Args:
        scores: (N, C) validation logits, or softmax probabilities (their logs are used; see the module docstring).
        labels: (N,) validation labels.
        kind: ``"logits"``, ``"probs"`` or ``"auto"`` (probabilities when every row is in [0, 1] and sums to 1).
        use_scipy: force (True) or forbid (False) ``scipy.optimize``; by default it is used when installed.

    Returns ``T`` in ``T_BOUNDS`` as a float.
    """
    z = _as_logits(scores, kind)
    y = _labels(labels, z.shape[0], z.shape[1])
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])

    def objective(log_t: float) -> float:
        return _nll(z, y, math.exp(log_t))

    grid = np.linspace(lo, hi, 81)
    values = np.array([objective(g) for g in grid])
    best = int(np.argmin(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]

    minimize_scalar = None
    if use_scipy is not False:
        try:
            from scipy.optimize import minimize_scalar
        except ImportError:
            if use_scipy:
                raise
    if minimize_scalar is not None:
        res = minimize_scalar(objective, bounds=(a, b), method="bounded", options={"xatol": 1e-8})
        log_t = float(res.x)
    else:
        log_t = _golden_section(objective, a, b)
    # Keep the grid point if the refinement somehow ended worse (flat objective, numerical noise).
    if objective(log_t) > values[best]:
        log_t = float(grid[best])
    return float(min(max(math.exp(log_t), T_BOUNDS[0]), T_BOUNDS[1]))


def apply_temperature(scores: Any, temperature: float, kind: str = "auto") -> np.ndarray:
    """``softmax(scores / T)`` as (N, C) float64 probabilities (log-probabilities are used for probability input)."""
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    z = _as_logits(scores, kind)
    return np.exp(_log_softmax(z / temperature))


def temperature_scaling_report(
    val_labels: Any, val_probs: Any, test_labels: Any, test_probs: Any, class_names: Optional[Sequence[str]] = None
) -> dict[str, Any]:
    """Fit ``T`` on validation, then the test calibration before and after scaling with it (JSON-serialisable).

    Returns ``{"temperature", "at_bound", "fitted_on": "validation", "n_val", "val_nll_before", "val_nll_after",
    "test_before", "test_after"}``; ``test_before`` / ``test_after`` are ``calibration_metrics`` dicts (ECE, Brier,
    NLL, bins); ``at_bound`` is true when the fitted T is (within 1 %) at an end of ``T_BOUNDS`` (e.g. a model that
    always predicts one class is "calibrated" by flattening its probabilities: T -> large).
    ``class_names`` is accepted for symmetry with the other evaluation functions and not needed.
    """
    del class_names
    z_val = _as_logits(val_probs, "probs")
    y_val = _labels(val_labels, z_val.shape[0], z_val.shape[1])
    temperature = fit_temperature(z_val, y_val, kind="logits")
    test_after = apply_temperature(test_probs, temperature, kind="probs")
    return {
        "temperature": temperature,
        "at_bound": bool(temperature <= 1.01 * T_BOUNDS[0] or temperature >= T_BOUNDS[1] / 1.01),
        "fitted_on": "validation",
        "n_val": int(y_val.shape[0]),
        "val_nll_before": _nll(z_val, y_val, 1.0),
        "val_nll_after": _nll(z_val, y_val, temperature),
        "test_before": calibration_metrics(test_labels, test_probs),
        "test_after": calibration_metrics(test_labels, test_after),
    }
