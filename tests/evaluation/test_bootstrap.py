"""Bootstrap CIs: the vectorised metrics equal scikit-learn's on each resample; intervals are sane and seeded."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from hdkd.evaluation import bootstrap_ci, classification_metrics
from hdkd.evaluation.bootstrap import BOOTSTRAP_METRICS, _resample_counts, _weighted_headline


def _case(n_classes: int, n: int, seed: int, skill: float = 1.5, round_to=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    y[:n_classes] = np.arange(n_classes)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += skill
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if round_to is not None:  # coarse probabilities: many tied scores
        p = np.round(p, round_to)
        p = np.maximum(p, 10.0**-round_to)
        p /= p.sum(axis=1, keepdims=True)
    return y, p, [f"k{c}" for c in range(n_classes)]


@pytest.mark.parametrize("n_classes", [2, 4, 7])
@pytest.mark.parametrize("round_to", [None, 1])
def test_vectorised_metrics_equal_scikit_learn_on_each_resample(n_classes, round_to):
    y, p, _ = _case(n_classes, 60, seed=n_classes, round_to=round_to)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), size=(25, len(y)))
    idx[0] = np.flatnonzero(y != 0)[rng.integers(0, (y != 0).sum(), len(y))]  # class 0 absent from this resample
    counts = np.stack([np.bincount(i, minlength=len(y)) for i in idx])
    got = _weighted_headline(y, p, counts)
    for b in range(len(idx)):
        yb, pb = y[idx[b]], p[idx[b]]
        pred = pb.argmax(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert got["accuracy"][b] == pytest.approx(skm.accuracy_score(yb, pred))
            assert got["balanced_accuracy"][b] == pytest.approx(skm.balanced_accuracy_score(yb, pred))
            assert got["macro_f1"][b] == pytest.approx(skm.f1_score(yb, pred, average="macro", zero_division=0))
        if len(np.unique(yb)) < n_classes:
            assert np.isnan(got["auc_ovr_macro"][b])  # undefined, left out of the interval
        elif n_classes == 2:
            assert got["auc_ovr_macro"][b] == pytest.approx(skm.roc_auc_score(yb, pb[:, 1]))
        else:
            assert got["auc_ovr_macro"][b] == pytest.approx(
                skm.roc_auc_score(yb, pb, multi_class="ovr", average="macro", labels=list(range(n_classes)))
            )


def test_resampling_counts():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    rng = np.random.default_rng(0)
    plain = _resample_counts(y, 50, rng, stratified=False)
    assert plain.shape == (50, 15) and (plain.sum(axis=1) == 15).all()
    strat = _resample_counts(y, 50, rng, stratified=True)
    for k, size in ((0, 7), (1, 3), (2, 5)):
        assert (strat[:, y == k].sum(axis=1) == size).all()  # class counts fixed


@pytest.mark.parametrize("n_classes", [2, 4, 7])
def test_interval_contains_estimate_and_is_seeded(n_classes):
    y, p, names = _case(n_classes, 400, seed=1)
    ci = bootstrap_ci(y, p, names, n_boot=500, seed=3)
    m = classification_metrics(y, p, names)
    assert ci["n_boot"] == 500 and ci["n"] == 400 and ci["level"] == 0.95
    for key in BOOTSTRAP_METRICS:
        entry = ci["metrics"][key]
        assert entry["estimate"] == pytest.approx(m[key])
        assert entry["low"] <= entry["estimate"] <= entry["high"]
        assert 0.0 <= entry["low"] < entry["high"] <= 1.0
        assert entry["n_valid"] == 500
    assert bootstrap_ci(y, p, names, n_boot=500, seed=3) == ci  # deterministic for a seed
    assert bootstrap_ci(y, p, names, n_boot=500, seed=4) != ci
    strat = bootstrap_ci(y, p, names, n_boot=500, seed=3, stratified=True)
    assert strat["stratified"] and "stratified" in strat["method"]


def test_interval_narrows_with_more_test_samples():
    widths = {}
    for n in (200, 3200):
        y, p, names = _case(4, n, seed=2)
        ci = bootstrap_ci(y, p, names, n_boot=400, seed=0)
        widths[n] = {k: ci["metrics"][k]["high"] - ci["metrics"][k]["low"] for k in BOOTSTRAP_METRICS}
    for key in BOOTSTRAP_METRICS:
        # sampling error shrinks like 1 / sqrt(n): 16x the samples -> about 1/4 of the width
        assert widths[3200][key] < 0.5 * widths[200][key]


def test_interval_matches_a_plain_loop_over_resamples():
    y, p, names = _case(3, 150, seed=5)
    ci = bootstrap_ci(y, p, names, n_boot=200, seed=7)
    rng = np.random.default_rng(7)  # the same resamples, drawn as bootstrap_ci draws them
    counts = _resample_counts(y, 200, rng, stratified=False)
    accs = []
    for row in counts:
        idx = np.repeat(np.arange(len(y)), row)
        accs.append(skm.accuracy_score(y[idx], p[idx].argmax(axis=1)))
    low, high = np.quantile(accs, [0.025, 0.975])
    assert ci["metrics"]["accuracy"]["low"] == pytest.approx(low)
    assert ci["metrics"]["accuracy"]["high"] == pytest.approx(high)


def test_auc_interval_none_when_a_class_is_absent_from_the_test_split():
    y, p, names = _case(3, 100, seed=6)
    y = np.where(y == 2, 0, y)
    ci = bootstrap_ci(y, p, names, n_boot=100, seed=0)
    assert ci["metrics"]["auc_ovr_macro"]["low"] is None and ci["metrics"]["auc_ovr_macro"]["n_valid"] == 0
    assert ci["metrics"]["auc_ovr_macro"]["estimate"] is None
    assert ci["metrics"]["accuracy"]["low"] is not None


def test_fast_enough():
    y, p, names = _case(7, 2000, seed=0)
    start = time.perf_counter()
    ci = bootstrap_ci(y, p, names, n_boot=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert ci["metrics"]["auc_ovr_macro"]["n_valid"] == 1000
    assert elapsed < 10.0, f"1000 resamples of 2000 x 7 took {elapsed:.1f} s"


def test_bad_arguments():
    y, p, names = _case(2, 20, seed=0)
    with pytest.raises(ValueError):
        bootstrap_ci(y, p, names, n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_ci(y, p, names, level=1.5)
