"""The report figures are complete PNG files, written atomically, whatever the inputs look like."""

from __future__ import annotations

import numpy as np

from hdkd.reporting.plots import (
    plot_confusion_matrices,
    plot_reliability_diagrams,
    plot_roc_curves,
    plot_training_curves,
)

from ._helpers import assert_valid_png, fake_assessed, fake_history, fake_metrics, fake_predictions, png_size


def test_confusion_matrices_one_panel_per_model(tmp_path):
    one = plot_confusion_matrices({"teacher": fake_metrics(4, 0, 2.0)}, tmp_path / "one.png")
    three = plot_confusion_matrices(
        {"teacher": fake_metrics(4, 0, 2.0), "student": fake_metrics(4, 1, 1.0), "hdkd": fake_metrics(4, 2, 1.5)},
        tmp_path / "three.png",
    )
    assert one == tmp_path / "one.png"
    assert_valid_png(one)
    assert_valid_png(three)
    assert png_size(three)[0] > 2 * png_size(one)[0]  # panels side by side


def test_confusion_matrix_with_empty_row_and_many_classes(tmp_path):
    metrics = fake_metrics(12, 3, 1.0, n=200)
    metrics["confusion_matrix"][5] = [0] * 12  # a class with no test samples: row normalisation must not divide by 0
    path = plot_confusion_matrices({"model": metrics}, tmp_path / "sub" / "dir" / "cm.png")
    assert_valid_png(path)


def test_training_curves_with_gaps_extra_keys_and_empty_history(tmp_path):
    histories = {
        "teacher": fake_history(8, 0),
        "student": [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}, {"epoch": 2, "train_loss": 0.8}],
        "hdkd": [],
    }
    path = plot_training_curves(histories, tmp_path / "curves.png")
    assert_valid_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no temp files left behind


def test_training_curves_without_any_data(tmp_path):
    assert_valid_png(plot_training_curves({"teacher": [], "student": [{"epoch": 1}]}, tmp_path / "c.png"))


def test_png_is_replaced_atomically(tmp_path):
    path = tmp_path / "cm.png"
    path.write_bytes(b"old")
    plot_confusion_matrices({"m": fake_metrics(2, 0, 1.0)}, path)
    assert_valid_png(path)
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def test_roc_curves_one_panel_per_model_binary_multiclass_and_missing(tmp_path):
    y4, p4 = fake_predictions(4, 0, 1.5)
    y2, p2 = fake_predictions(2, 1, 1.0)
    y3, p3 = fake_predictions(3, 2, 1.0)
    y3 = np.where(y3 == 2, 0, y3)  # a class absent from y_true: no curve, no crash
    one = plot_roc_curves({"m": {"y_true": y4, "probs": p4, "class_names": list("abcd")}}, tmp_path / "one.png")
    three = plot_roc_curves(
        {
            "teacher": {"y_true": y4, "probs": p4, "class_names": list("abcd")},
            "student": {"y_true": y2, "probs": p2},
            "hdkd": {"y_true": y3, "probs": p3, "class_names": list("xyz")},
            "none": None,
        },
        tmp_path / "three.png",
    )
    assert_valid_png(one)
    assert_valid_png(three)
    assert png_size(three)[0] > 3 * png_size(one)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "three.png"]


def test_reliability_diagrams_before_and_after(tmp_path):
    a = fake_assessed(4, 0, 2.0)
    ts = a["temperature_scaling"]
    both = plot_reliability_diagrams(
        {
            "teacher": {
                "before": ts["test_before"]["reliability"],
                "after": ts["test_after"]["reliability"],
                "temperature": ts["temperature"],
            },
            "student": {"before": a["metrics"]["reliability"], "after": None, "temperature": None},
        },
        tmp_path / "both.png",
    )
    before_only = plot_reliability_diagrams({"m": {"before": a["metrics"]["reliability"]}}, tmp_path / "b.png")
    missing = plot_reliability_diagrams({"m": {"before": None}}, tmp_path / "none.png")
    for path in (both, before_only, missing):
        assert_valid_png(path, min_bytes=2_000)
    assert png_size(both)[1] > 1.6 * png_size(before_only)[1]  # second row: after temperature scaling


def test_training_curves_with_losses_on_very_different_scales(tmp_path):
    histories = {
        "student": fake_history(4, 0),
        "hdkd": [dict(row, train_loss=100 * row["train_loss"]) for row in fake_history(4, 1)],
    }
    assert_valid_png(plot_training_curves(histories, tmp_path / "log.png"))  # loss axis switches to log scale
