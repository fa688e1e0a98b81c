"""PR-AUC, ECE, Brier score and NLL: against scikit-learn or an independent numpy computation; ECE by hand."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from hdkd.evaluation import (
    brier_score,
    calibration_metrics,
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
)
from hdkd.reporting.tables import format_metrics_table


def _case(n_classes: int, seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    y[:n_classes] = np.arange(n_classes)
    logits = rng.normal(size=(n, n_classes)) * rng.uniform(0.5, 3.0)
    logits[np.arange(n), y] += rng.uniform(0.0, 2.5, size=n)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    return y, probs, [f"c{k}" for k in range(n_classes)]


def _ece_loop(y, probs, n_bins=15):
    """Independent ECE: a Python loop over samples and bins, bin b holding confidences in (b/M, (b+1)/M]."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(len(y)) if (lo < probs[i].max() <= hi) or (b == 0 and probs[i].max() == 0)]
        if not members:
            continue
        acc = np.mean([probs[i].argmax() == y[i] for i in members])
        conf = np.mean([probs[i].max() for i in members])
        total += len(members) / len(y) * abs(acc - conf)
    return total


@pytest.mark.parametrize("n_classes", [2, 4, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_new_metrics_match_references(n_classes, seed):
    y, probs, names = _case(n_classes, seed)
    m = classification_metrics(y, probs, names)
    p = probs.astype(np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    onehot = np.eye(n_classes)[y]

    # PR-AUC: scikit-learn's average precision, one-vs-rest
    for k, name in enumerate(names):
        assert m["per_class"][name]["pr_auc"] == pytest.approx(skm.average_precision_score(y == k, p[:, k]))
    assert m["pr_auc_macro"] == pytest.approx(skm.average_precision_score(onehot, p, average="macro"))
    if n_classes == 2:
        assert m["pr_auc_positive"] == pytest.approx(skm.average_precision_score(y, p[:, 1]))
    else:
        assert m["pr_auc_positive"] is None

    # Brier: independent numpy loop; binary: twice scikit-learn's binary Brier score
    by_hand = np.mean([sum((p[i, k] - (y[i] == k)) ** 2 for k in range(n_classes)) for i in range(len(y))])
    assert m["brier"] == pytest.approx(by_hand)
    assert brier_score(y, probs) == pytest.approx(by_hand)
    if n_classes == 2:
        assert m["brier"] == pytest.approx(2 * skm.brier_score_loss(y, p[:, 1]))
    try:  # scikit-learn >= 1.7 has the multi-class Brier score; without halving it is ours
        reference = skm.brier_score_loss(y, p, labels=list(range(n_classes)), scale_by_half=False)
    except TypeError:
        reference = None
    if reference is not None:
        assert m["brier"] == pytest.approx(reference)

    # NLL: scikit-learn's log_loss, and -mean(log p_true)
    assert m["nll"] == pytest.approx(skm.log_loss(y, p, labels=list(range(n_classes))))
    assert m["nll"] == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-6)

    # ECE: independent loop, 15 bins
    assert m["ece_bins"] == 15
    assert m["ece"] == pytest.approx(_ece_loop(y, probs))
    assert expected_calibration_error(y, probs) == pytest.approx(m["ece"])
    assert 0.0 <= m["ece"] <= 1.0
    bins = m["reliability"]
    assert sum(bins["count"]) == len(y) and len(bins["edges"]) == 16
    json.dumps(m, allow_nan=False)


def test_ece_tiny_example_by_hand():
    # 5 bins of width 0.2, right-closed. Top-class confidences: 0.9, 0.9, 0.7, 0.5, 0.5, 0.3.
    probs = np.array(
        [
            [0.9, 0.05, 0.05, 0.0],  # correct      -> bin (0.8, 1.0]
            [0.05, 0.9, 0.05, 0.0],  # wrong (y=0)  -> bin (0.8, 1.0]
            [0.7, 0.1, 0.1, 0.1],  # correct      -> bin (0.6, 0.8]
            [0.5, 0.3, 0.2, 0.0],  # correct      -> bin (0.4, 0.6]
            [0.1, 0.5, 0.4, 0.0],  # wrong (y=2)  -> bin (0.4, 0.6]
            [0.3, 0.25, 0.25, 0.2],  # wrong (y=3)  -> bin (0.2, 0.4]
        ]
    )
    y = np.array([0, 0, 0, 0, 2, 3])
    # bin (0.8,1]: acc 1/2, conf 0.9 -> |0.5-0.9| * 2/6; bin (0.6,0.8]: acc 1, conf 0.7 -> 0.3 * 1/6;
    # bin (0.4,0.6]: acc 1/2, conf 0.5 -> 0; bin (0.2,0.4]: acc 0, conf 0.3 -> 0.3 * 1/6
    expected = 0.4 * 2 / 6 + 0.3 / 6 + 0.0 + 0.3 / 6
    assert expected_calibration_error(y, probs, n_bins=5) == pytest.approx(expected)
    bins = reliability_bins(y, probs, n_bins=5)
    assert bins["count"] == [0, 1, 2, 1, 2]
    assert bins["accuracy"] == [None, 0.0, 0.5, 1.0, 0.5]
    assert bins["confidence"][4] == pytest.approx(0.9)
    # perfectly calibrated: confidence 0.75 and 3 of 4 correct -> ECE 0
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(np.array([0, 0, 0, 1]), probs) == pytest.approx(0.0)
    # always right with confidence 1 -> 0; always wrong with confidence 1 -> 1
    assert expected_calibration_error(np.array([0, 1]), np.eye(2)) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 0]), np.eye(2)) == pytest.approx(1.0)


def test_calibration_metrics_with_missing_class_and_single_class_without_warnings():
    y, probs, names = _case(4, 3)
    y = np.where(y == 2, 1, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, probs, names)
        c = calibration_metrics(np.zeros(5, dtype=int), np.tile([0.9, 0.1], (5, 1)))
    assert m["per_class"]["c2"]["pr_auc"] is None and m["pr_auc_macro"] is None
    assert m["per_class"]["c1"]["pr_auc"] == pytest.approx(skm.average_precision_score(y == 1, probs[:, 1]))
    assert c["ece"] == pytest.approx(0.1) and c["brier"] == pytest.approx(0.02)
    assert c["nll"] == pytest.approx(-np.log(0.9))


def test_metrics_table_shows_calibration_and_intervals():
    y, probs, names = _case(2, 4)
    m = classification_metrics(y, probs, names)
    m["bootstrap"] = {
        "method": "percentile bootstrap",
        "level": 0.95,
        "n_boot": 100,
        "seed": 0,
        "n": len(y),
        "metrics": {"accuracy": {"estimate": m["accuracy"], "low": 0.5, "high": 0.9, "n_valid": 100}},
    }
    text = format_metrics_table(m)
    assert f"{100 * m['ece']:.2f}" in text and f"{m['brier']:.4f}" in text and f"{m['nll']:.4f}" in text
    assert f"{m['pr_auc_positive']:.4f}" in text
    assert "[50.00, 90.00]" in text and "100 resamples" in text
