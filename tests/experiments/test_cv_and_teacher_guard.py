"""Issue 15: k-fold estimates (hdkd pipeline --folds K) and the teacher guard in the pipeline and `train hdkd`."""

import json

import numpy as np
import pytest

from hdkd.cli import main
from hdkd.config import build_config
from hdkd.distillation.guard import compare_teacher, enforce_stronger_teacher
from hdkd.errors import ConfigError
from hdkd.experiments.cv import fold_indices, run_cv
from hdkd.experiments.pipeline import run_pipeline
from hdkd.models import read_checkpoint_metadata

TINY = [
    "model.img_size=32",
    "data.max_per_class=8",
    "train.epochs=1",
    "train.max_steps_per_epoch=1",
    "train.batch_size=4",
    "train.progress=false",
    "data.num_workers=0",
    "model.depths=[1,1,1]",
    "model.widths=[8,8,16]",
    "model.dflt_depth=1",
    "model.dflt_heads=2",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HDKD_CACHE_DIR", str(tmp_path / "cache"))


def tiny_config(tmp_path, *extra):
    return build_config(None, [], TINY + [f"output={tmp_path / 'out'}", *extra])


# ------------------------------------------------------------------------------------------------------ folds
def test_folds_are_stratified_disjoint_and_cover_the_pool():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    folds = fold_indices(labels, 5, seed=0)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(range(len(labels)))  # each image tested exactly once
    for rest, h in folds:
        assert not set(rest) & set(h) and len(rest) + len(h) == len(labels)
        assert list(np.bincount(labels[h])) == [2, 4, 6]  # the class ratio in every fold


def test_grouped_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 3)  # 30 lesions, 3 images each
    labels = np.repeat(rng.integers(0, 2, 30), 3)
    for rest, held in fold_indices(labels, 3, seed=1, groups=groups):
        assert not set(groups[rest]) & set(groups[held])


def test_too_few_images_for_k_folds_is_one_clear_error():
    with pytest.raises(Exception, match="--folds 5"):
        fold_indices(np.array([0, 0, 1, 1, 1, 1]), 5, seed=0)
    with pytest.raises(ConfigError, match="at least 2"):
        fold_indices(np.array([0, 1]), 1, seed=0)


def test_cv_trains_each_fold_and_reports_mean_and_std_over_folds(tmp_path):
    outcome = run_cv(tiny_config(tmp_path), 2, roles=("student",), n_boot=0)
    out = tmp_path / "out"
    summary = json.loads((out / "cv_report.json").read_text())
    per_fold = [json.loads((out / f"fold_{i}_of_2" / "report.json").read_text()) for i in range(2)]
    values = [r["results"]["student"]["metrics"]["balanced_accuracy"] for r in per_fold]
    entry = summary["models"]["student"]["balanced_accuracy"]
    assert entry["values"] == pytest.approx(values)
    assert entry["mean"] == pytest.approx(np.mean(values)) and entry["std"] == pytest.approx(np.std(values, ddof=1))
    # the pool is train + validation (4 classes x 8 + the validation carved from it); the official test split unused
    pool = summary["pool"]["images"]
    assert sum(s["test"] for s in summary["fold_sizes"].values()) == pool
    assert all(s["train"] + s["val"] + s["test"] == pool for s in summary["fold_sizes"].values())
    assert "official test split: not used" in (out / "cv_report.md").read_text()
    assert "fold 0 of 2" in per_fold[0]["meta"]["splits"]["test"]
    assert outcome["table"].startswith("| Model |")


def test_cli_folds_refuses_jobs_and_seeds(tmp_path, capsys):
    args = ["pipeline", "--folds", "2", "-o", str(tmp_path / "x")] + sum((["--set", s] for s in TINY), [])
    assert main(args + ["--jobs", "2"]) == 2
    assert main(args + ["--seeds", "0", "1"]) == 2
    assert "--folds" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------------------------------------- teacher guard
def test_teacher_guard_verdicts():
    weaker = compare_teacher(0.6, 0.7, "balanced_accuracy")
    assert weaker["weaker"] and weaker["message"].startswith("WARNING: the teacher is the weaker model")
    assert "5 to 10 points" in weaker["message"]
    assert compare_teacher(0.7, 0.7, "balanced_accuracy")["weaker"] is False  # a tie is not weaker
    assert compare_teacher(None, 0.7, "balanced_accuracy")["weaker"] is None
    enforce_stronger_teacher(weaker, required=False)
    with pytest.raises(ConfigError, match="require_stronger_teacher"):
        enforce_stronger_teacher(weaker, required=True)
    enforce_stronger_teacher(compare_teacher(0.8, 0.7, "balanced_accuracy"), required=True)


def test_pipeline_records_the_teacher_check_from_the_validation_scores(tmp_path, capsys):
    outcome = run_pipeline(tiny_config(tmp_path), n_boot=0)
    teacher = outcome["results"]["teacher"]["val_metrics"]["balanced_accuracy"]
    student = outcome["results"]["student"]["val_metrics"]["balanced_accuracy"]
    check = json.loads((tmp_path / "out" / "report.json").read_text())["meta"]["teacher_check"]
    assert f"{teacher:.4f} for the teacher, {student:.4f} for the student trained alone" in check
    assert check.startswith("WARNING") == (teacher < student)
    assert "teacher check:" in capsys.readouterr().err
    assert "Teacher check" in (tmp_path / "out" / "report.md").read_text()


def test_required_stronger_teacher_stops_before_hdkd_trains(tmp_path, monkeypatch):
    import hdkd.experiments.pipeline as pipeline

    monkeypatch.setattr(pipeline, "compare_val_metrics", lambda t, s, m: compare_teacher(0.25, 0.5, m))
    cfg = tiny_config(tmp_path, "distill.require_stronger_teacher=true")
    with pytest.raises(ConfigError, match="require_stronger_teacher: the teacher's validation balanced_accuracy"):
        run_pipeline(cfg, n_boot=0)
    out = tmp_path / "out"
    assert (out / "teacher" / "summary.json").is_file() and (out / "student" / "summary.json").is_file()
    assert not (out / "hdkd").exists()


def test_train_hdkd_prints_the_teachers_validation_score(tmp_path, capsys):
    sets = sum((["--set", s] for s in TINY), [])
    assert main(["train", "teacher", "-o", str(tmp_path / "t")] + sets) == 0
    checkpoint = tmp_path / "t" / "best.safetensors"
    score = read_checkpoint_metadata(checkpoint)["extra"]["val_balanced_accuracy"]
    capsys.readouterr()
    assert main(["train", "hdkd", "--teacher", str(checkpoint), "-o", str(tmp_path / "h")] + sets) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"teacher {checkpoint}: validation balanced_accuracy {score:.4f} (at its best checkpoint)"
