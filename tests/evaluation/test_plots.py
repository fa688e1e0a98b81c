"""The two report figures are complete PNG files, written atomically, whatever the histories look like."""
from __future__ import annotations

from hdkd.evaluation import plot_confusion_matrices, plot_training_curves

from ._helpers import assert_valid_png, fake_history, fake_metrics, png_size


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
