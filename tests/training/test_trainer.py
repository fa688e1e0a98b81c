import json

import pytest
import torch
from safetensors.torch import load_file

from hdkd.config import build_config
from hdkd.training import train


def _cfg(tmp_path, role, *extra):
    return build_config(role, overrides=[f"output={tmp_path / role}", "model.img_size=32", "data.max_per_class=12",
                                         "train.batch_size=8", "train.progress=false", "data.num_workers=0",
                                         *extra])


def test_resume_continues_exactly(tmp_path):
    """Two epochs in one go and one epoch + resume give bit-identical weights (CPU, deterministic)."""
    straight = train(_cfg(tmp_path / "a", "student", "train.epochs=2", "train.deterministic=true"))
    first = _cfg(tmp_path / "b", "student", "train.epochs=1", "train.deterministic=true")
    train(first)
    resumed = train(_cfg(tmp_path / "b", "student", "train.epochs=2", "train.deterministic=true"), resume=True)
    a, b = load_file(straight.last_checkpoint), load_file(resumed.last_checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert len((tmp_path / "b" / "student" / "log.jsonl").read_text().splitlines()) == 2


def test_outputs_and_selection_on_validation(tmp_path):
    result = train(_cfg(tmp_path, "teacher", "train.epochs=2"))
    out = tmp_path / "teacher"
    for name in ("best.safetensors", "last.safetensors", "last_state.pt", "log.jsonl", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    best = max(history, key=lambda r: r["val_balanced_accuracy"])
    assert result.best_epoch == best["epoch"]
    assert result.best_val["balanced_accuracy"] == pytest.approx(best["val_balanced_accuracy"])
    assert not any("test" in key for key in history[0])


def test_hdkd_role_distils_from_a_trained_teacher(tmp_path):
    teacher = train(_cfg(tmp_path, "teacher", "train.epochs=1"))
    result = train(_cfg(tmp_path, "hdkd", "train.epochs=1", f"distill.teacher={teacher.best_checkpoint}"))
    record = result.history[0]
    assert record["train_feature"] > 0 and record["train_kd"] > 0
    assert record["train_loss"] == pytest.approx(
        0.5 * record["train_ce"] + 0.5 * record["train_kd"] + 10 * record["train_feature"], rel=1e-4)


@pytest.mark.slow
def test_short_training_on_real_brain_mri_beats_chance(tmp_path, brain_mri):
    """A few epochs of the teacher on 100 images per class at 32 px: validation accuracy well above 25 %."""
    cfg = build_config("teacher", overrides=[
        f"output={tmp_path / 't'}", f"data.path={brain_mri}", "data.max_per_class=100", "data.val_fraction=0.2",
        "model.img_size=32", "train.epochs=6", "train.batch_size=32", "train.progress=false"])
    result = train(cfg)
    assert result.best_val["n"] >= 80
    assert result.best_val["accuracy"] > 0.5, result.history
