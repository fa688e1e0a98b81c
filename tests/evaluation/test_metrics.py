"""classification_metrics against scikit-learn, hand-checked specificity, degenerate splits, and the table
formatters."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from hdkd.errors import DataError
from hdkd.evaluation import classification_metrics
from hdkd.reporting.tables import format_comparison_table, format_metrics_table


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _random_case(n_classes: int, seed: int, n: int = 150):
    """Labels covering every class, and float32 softmax outputs that are informative but far from perfect."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    y[:n_classes] = np.arange(n_classes)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += rng.uniform(0.0, 2.5, size=n)
    probs = _softmax(logits).astype(np.float32)
    names = [f"class_{k}" for k in range(n_classes)]
    return y, probs, names


def _specificity_by_hand(cm: np.ndarray, k: int) -> float:
    """TN / (TN + FP) for class k, summing confusion-matrix cells one by one."""
    tn = fp = 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if i != k and j != k:
                tn += cm[i, j]
            elif i != k and j == k:
                fp += cm[i, j]
    return tn / (tn + fp) if tn + fp else 0.0


@pytest.mark.parametrize("n_classes", [2, 4, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn(n_classes, seed):
    y, probs, names = _random_case(n_classes, seed)
    m = classification_metrics(y, probs, names)
    pred = probs.argmax(axis=1)
    labels = list(range(n_classes))

    assert m["n"] == len(y)
    assert m["class_names"] == names
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted", zero_division=0))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    cm = skm.confusion_matrix(y, pred, labels=labels)
    assert m["confusion_matrix"] == cm.tolist()

    p64 = probs.astype(np.float64)
    if n_classes == 2:
        auc = skm.roc_auc_score(y, p64[:, 1])
        assert m["auc_ovr_macro"] == pytest.approx(auc)
        assert m["auc_ovr_weighted"] == pytest.approx(auc)
    else:
        p64 = p64 / p64.sum(axis=1, keepdims=True)
        assert m["auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(y, p64, multi_class="ovr", average="macro"))
        assert m["auc_ovr_weighted"] == pytest.approx(skm.roc_auc_score(y, p64, multi_class="ovr", average="weighted"))
    assert m["auc_note"] is None

    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    assert list(m["per_class"]) == names
    for k, name in enumerate(names):
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(prec[k])
        assert pc["recall"] == pytest.approx(rec[k])
        assert pc["f1"] == pytest.approx(f1[k])
        assert pc["support"] == sup[k] == int((y == k).sum())
        assert pc["specificity"] == pytest.approx(_specificity_by_hand(cm, k))
        # specificity of k = recall of "not k" in the one-vs-rest problem
        assert pc["specificity"] == pytest.approx(skm.recall_score(y != k, pred != k))
        assert pc["auc"] == pytest.approx(skm.roc_auc_score(y == k, probs[:, k]))


@pytest.mark.parametrize("n_classes", [2, 4, 7])
def test_result_is_plain_json(n_classes):
    y, probs, names = _random_case(n_classes, seed=3)
    m = classification_metrics(y, probs, names)
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert type(m["n"]) is int and type(m["accuracy"]) is float
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    assert all(type(pc["support"]) is int for pc in m["per_class"].values())


def test_predictions_are_argmax_of_probs():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.45, 0.1, 0.45 - 1e-9]])
    probs = probs / probs.sum(axis=1, keepdims=True)
    m = classification_metrics(y, probs, ["a", "b", "c"])
    # predictions: 1, 1, 2, 0
    assert m["confusion_matrix"] == [[0, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(0.5)


def test_specificity_tiny_example_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 0, 2, 0])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    m = classification_metrics(y, probs, ["normal", "benign", "malignant"])
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [1, 0, 1]]
    pc = m["per_class"]
    # class normal: negatives are samples 2..5; samples 3 and 5 are predicted "normal" -> TN 2 / 4
    assert pc["normal"]["specificity"] == pytest.approx(0.5)
    # class benign: negatives 0, 1, 4, 5; sample 1 predicted "benign" -> TN 3 / 4
    assert pc["benign"]["specificity"] == pytest.approx(0.75)
    # class malignant: negatives 0..3, none predicted "malignant" -> 4 / 4
    assert pc["malignant"]["specificity"] == pytest.approx(1.0)
    assert pc["normal"]["precision"] == pytest.approx(1 / 3)
    assert pc["normal"]["recall"] == pytest.approx(0.5)
    assert pc["malignant"]["precision"] == pytest.approx(1.0)
    assert pc["malignant"]["recall"] == pytest.approx(0.5)
    assert pc["malignant"]["support"] == 2


@pytest.mark.parametrize("n_classes, missing", [(4, 2), (7, 0), (3, 2)])
def test_auc_none_when_a_class_is_missing(n_classes, missing):
    y, probs, names = _random_case(n_classes, seed=5)
    y = np.where(y == missing, (missing + 1) % n_classes, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no crash and no warning spam
        m = classification_metrics(y, probs, names)
    assert m["auc_ovr_macro"] is None and m["auc_ovr_weighted"] is None
    assert names[missing] in m["auc_note"]
    assert m["per_class"][names[missing]]["support"] == 0
    assert m["per_class"][names[missing]]["auc"] is None
    present = [k for k in range(n_classes) if k != missing]
    for k in present:
        assert m["per_class"][names[k]]["auc"] == pytest.approx(skm.roc_auc_score(y == k, probs[:, k]))
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    json.dumps(m, allow_nan=False)


def test_single_class_split_does_not_crash():
    y = np.zeros(5, dtype=int)
    probs = np.tile([0.9, 0.1], (5, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, probs, ["neg", "pos"])
    assert m["accuracy"] == 1.0
    assert m["auc_ovr_macro"] is None and "pos" in m["auc_note"]
    assert m["per_class"]["neg"]["specificity"] == 0.0  # no negatives: zero_division convention
    assert m["per_class"]["pos"]["precision"] == 0.0  # never predicted, no warning
    json.dumps(m, allow_nan=False)


def test_class_never_predicted_has_zero_scores_without_warnings():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.tile([0.5, 0.3, 0.2], (6, 1))  # always predicts class 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["per_class"]["b"]["precision"] == 0.0 and m["per_class"]["b"]["f1"] == 0.0
    assert m["per_class"]["b"]["specificity"] == 1.0


@pytest.mark.parametrize(
    "y, probs, names, fragment",
    [
        (np.array([0, 1, 1]), np.full((2, 2), 0.5), ["a", "b"], "3 samples"),
        (np.array([0, 1]), np.full((2, 2), 0.5), ["a", "b", "c"], "3 class names"),
        (np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"], "outside"),
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.3, 0.1]]), ["a", "b"], "logits"),
        (np.array([0, 1]), np.array([[0.2, 0.2], [0.5, 0.5]]), ["a", "b"], "sum to 1"),
        (np.array([0, 1]), np.array([[np.nan, 0.5], [0.5, 0.5]]), ["a", "b"], "non-finite"),
        (np.array([0, 1]), np.full((2, 2), 0.5), ["a", "a"], "unique"),
        (np.array([], dtype=int), np.zeros((0, 2)), ["a", "b"], "empty"),
        (np.array([0.5, 1.0]), np.full((2, 2), 0.5), ["a", "b"], "integer"),
    ],
)
def test_bad_inputs_raise_data_error(y, probs, names, fragment):
    with pytest.raises(DataError, match=fragment):
        classification_metrics(y, probs, names)


def test_format_metrics_table_contains_names_and_numbers():
    y, probs, _ = _random_case(4, seed=7)
    names = ["glioma", "meningioma", "no_tumor", "pituitary"]
    m = classification_metrics(y, probs, names)
    text = format_metrics_table(m)
    assert f"{100 * m['accuracy']:.2f}" in text
    assert f"{100 * m['balanced_accuracy']:.2f}" in text
    assert f"{100 * m['macro_f1']:.2f}" in text
    assert f"{m['auc_ovr_macro']:.4f}" in text
    assert f"{m['mcc']:.4f}" in text
    lines = text.splitlines()
    for name in names:
        pc = m["per_class"][name]
        row = next(line for line in lines if line.split()[:1] == [name])  # first row: per-class table
        assert row.split()[1:] == [
            f"{100 * pc['precision']:.2f}",
            f"{100 * pc['recall']:.2f}",
            f"{100 * pc['specificity']:.2f}",
            f"{100 * pc['f1']:.2f}",
            f"{pc['auc']:.4f}",
            f"{pc['pr_auc']:.4f}",
            str(pc["support"]),
        ]
    cm_start = next(i for i, line in enumerate(lines) if line.startswith("Confusion matrix"))
    header = lines[cm_start + 1].split()
    assert header[-4:] == names
    for name, counts in zip(names, m["confusion_matrix"]):
        row = next(line for line in lines[cm_start:] if line.split()[:1] == [name])
        assert row.split()[1:] == [str(c) for c in counts]


def test_format_metrics_table_shows_missing_auc_as_na():
    y = np.array([0, 0, 1, 1])
    probs = np.tile([0.2, 0.3, 0.5], (4, 1))
    text = format_metrics_table(classification_metrics(y, probs, ["x", "y", "z"]))
    assert "n/a" in text and "absent" in text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_format_comparison_table():
    y, probs, names = _random_case(3, seed=11)
    m = classification_metrics(y, probs, names)
    y2 = np.where(y == 2, 0, y)
    m_no_auc = classification_metrics(y2, probs, names)
    results = {
        "teacher": {"params": 12_345_678, "flops": 4.5e9, "metrics": m},
        "student": {"params": 2_000_000, "flops": 6.0e8, "metrics": m_no_auc},
        "hdkd": {"params": 2_000_000, "flops": None, "metrics": m},
    }
    table = format_comparison_table(results)
    lines = table.splitlines()
    assert _cells(lines[0]) == [
        "Model",
        "Params",
        "GFLOPs",
        "Accuracy (%)",
        "Balanced accuracy (%)",
        "Macro-F1 (%)",
        "AUC (OvR macro)",
        "ECE (%)",
        "ECE after temp. scaling (%)",
    ]
    assert set(lines[1]) <= set("|-: ")
    rows = {(c := _cells(line))[0]: c for line in lines[2:]}
    assert list(rows) == ["teacher", "student", "hdkd"]
    assert rows["teacher"] == [
        "teacher",
        "12,345,678",
        "4.500",
        f"{100 * m['accuracy']:.2f}",
        f"{100 * m['balanced_accuracy']:.2f}",
        f"{100 * m['macro_f1']:.2f}",
        f"{m['auc_ovr_macro']:.4f}",
        f"{100 * m['ece']:.2f}",
        "n/a",
    ]
    assert rows["student"][2] == "0.600"
    assert rows["student"][3] == f"{100 * m_no_auc['accuracy']:.2f}"
    assert rows["student"][6] == "n/a"
    assert rows["hdkd"][2] == "n/a"
