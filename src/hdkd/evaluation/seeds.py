"""Mean and standard deviation of the headline test metrics over training seeds (``hdkd pipeline --seeds``).

The bootstrap interval of one run covers the finite test split; this covers the training randomness. The standard
deviation is the sample standard deviation (``ddof=1``, ``numpy.std(values, ddof=1)``), ``None`` for a single seed.
A value that is undefined in a run (``None``, e.g. the AUC when a class is absent from the test split) is left out of
that metric's mean and std, and ``n`` says how many runs were used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from hdkd.evaluation.metrics import HEADLINE_METRICS

__all__ = [
    "HALF_WIDTH_GOAL",
    "SEED_METRICS",
    "seeds_for_half_width",
    "signed_rank_p",
    "summarise_seeds",
    "t_quantile",
]

SEED_METRICS = HEADLINE_METRICS


def summarise_seeds(
    per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]], reports: Optional[Mapping[int, str]] = None
) -> dict[str, Any]:
    """``{seed: {model: {"metrics": classification_metrics}}}`` -> mean / std / values per model and metric.

    Returns ``{"seeds", "std", "reports", "models": {model: {metric: {"mean", "std", "n", "values"}}}}`` (fractions,
    as in ``report.json``; ``values`` in seed order, ``None`` where undefined).
    """
    seeds = list(per_seed)
    models: list[str] = []
    for results in per_seed.values():
        for label in results:
            if label not in models:
                models.append(label)
    out: dict[str, Any] = {}
    for label in models:
        out[label] = {}
        for key in SEED_METRICS:
            values = []
            for seed in seeds:
                r = per_seed[seed].get(label)
                v = None if r is None else (r.get("metrics") or {}).get(key)
                values.append(None if v is None else float(v))
            defined = np.array([v for v in values if v is not None], dtype=np.float64)
            out[label][key] = {
                "mean": float(defined.mean()) if defined.size else None,
                "std": float(defined.std(ddof=1)) if defined.size > 1 else None,
                "n": int(defined.size),
                "values": values,
            }
    return {
        "seeds": [int(s) for s in seeds],
        "std": "sample standard deviation over seeds (ddof=1)",
        "reports": {str(k): v for k, v in (reports or {}).items()},
        "models": out,
    }


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom: a two-sided 95 % interval's factor."""
    from scipy.stats import t  # scipy comes with scikit-learn; imported only when an interval is computed

    return float(t.ppf(0.975, df))


HALF_WIDTH_GOAL = 0.015  # issue 15: a paired difference's 95 % interval at most ±1.5 points on each side


def seeds_for_half_width(std: float, goal: float = HALF_WIDTH_GOAL, most: int = 200) -> Optional[int]:
    """The fewest paired seeds n (>= 2) whose 95 % t interval, t(n-1) std / sqrt(n), is at most ``goal`` wide on
    each side at this spread; None beyond ``most``. What a user plans a seed-repeated comparison with."""
    from scipy.stats import t

    n = np.arange(2, most + 1)
    fits = np.flatnonzero(t.ppf(0.975, n - 1) * std / np.sqrt(n) <= goal)
    return int(n[fits[0]]) if fits.size else None


def signed_rank_p(differences) -> Optional[float]:
    """Two-sided p-value of Wilcoxon's signed-rank test that paired differences centre on 0 (scipy's, zeros
    dropped); None when every difference is 0. Beside the t interval because one collapsed run, common on small
    medical datasets, can move a mean and a std far more than it moves ranks."""
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=np.float64)
    if not np.any(d != 0):
        return None
    return float(wilcoxon(d).pvalue)
