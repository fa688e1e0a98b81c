"""Resume safety on real states from a tiny `hdkd train` run: only a state of this very run is resumed."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import yaml

from hdkd.cli import main
from hdkd.config import from_dict
from hdkd.data import build_datasets
from hdkd.errors import CheckpointError
from hdkd.models.checkpoint import atomic_torch_save
from hdkd.training import trainer as trainer_module
from hdkd.training.resume import (
    STATE_FILE,
    check_resume_state,
    data_fingerprint,
    prepare_output_folder,
    remove_stale_temp_files,
    run_identity,
)
from hdkd.training.trainer import model_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch teacher on the embedded data, its resolved config, its data, and its state with a run identity
    added as the trainer will store it."""
    root = tmp_path_factory.mktemp("resume")
    out = root / "teacher"
    cache = root / "cache"
    code = main(
        ["train", "teacher", "--epochs", "1", "--max-per-class", "8", "--img-size", "32", "--workers", "0",
         "--no-progress", "-o", str(out), "--set", f"data.cache_dir={cache}"]
    )  # fmt: skip
    assert code == 0
    cfg = from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    data = build_datasets(cfg.data, cfg.model.img_size, cfg.model.in_chans)
    identity = run_identity(cfg, model_args(cfg, data.num_classes, data.in_chans), data)
    state = torch.load(out / STATE_FILE, weights_only=True)
    atomic_torch_save({**state, "run": identity}, out / STATE_FILE)
    return out, cfg, data, identity


def _copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    return out


def test_the_runs_own_state_is_resumed(trained):
    out, _, _, identity = trained
    state = check_resume_state(out / STATE_FILE, identity)
    assert state["epoch"] == 1 and state["run"] == identity


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(img_size=64), "model.img_size: state 32, this run 64"),
        (dict(class_names=["a", "b", "c", "d"]), "classes: state .*, this run"),
        (dict(data="0" * 32), r"data \(train/val images or labels\): state"),
        (dict(model="hdkd_student"), "model.name: state hdkd_teacher, this run hdkd_student"),
    ],
)
def test_a_state_of_another_run_is_refused_saying_what_differs(trained, change, message):
    out, _, _, identity = trained
    with pytest.raises(
        CheckpointError, match=f"belongs to another run .*{message}.*to start fresh, run without --resume"
    ):
        check_resume_state(out / STATE_FILE, {**identity, **change})


def test_the_fingerprint_sees_one_changed_pixel(trained):
    _, _, data, identity = trained
    assert data_fingerprint(data) == identity["data"]
    images = data.train.images.copy()
    images[0, 0, 0, 0] ^= 1
    changed = dataclasses.replace(data, train=type(data.train)(images, data.train.labels))
    assert data_fingerprint(changed) != identity["data"]


def test_corrupt_foreign_legacy_and_missing_states(trained, tmp_path):
    out = _copy(trained, tmp_path)
    identity = trained[3]
    state = torch.load(out / STATE_FILE, weights_only=True)
    legacy = {k: v for k, v in state.items() if k != "run"}
    torch.save(legacy, out / STATE_FILE)
    with pytest.raises(CheckpointError, match="does not say which run it belongs to"):
        check_resume_state(out / STATE_FILE, identity)
    torch.save({"weights": torch.zeros(2)}, out / STATE_FILE)
    with pytest.raises(CheckpointError, match="not an hdkd training state"):
        check_resume_state(out / STATE_FILE, identity)
    (out / STATE_FILE).write_bytes((trained[0] / STATE_FILE).read_bytes()[:1000])  # truncated by a crash
    with pytest.raises(CheckpointError, match="not a readable training state"):
        check_resume_state(out / STATE_FILE, identity)
    (out / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="nothing to resume .*has best.safetensors, last.safetensors"):
        check_resume_state(out / STATE_FILE, identity)
    assert check_resume_state(out / STATE_FILE, identity, missing_ok=True) is None  # killed before its first state
    empty = tmp_path / "never_started"
    with pytest.raises(CheckpointError, match="--resume: .*not found: nothing to resume"):
        check_resume_state(empty / STATE_FILE, identity)
    assert check_resume_state(empty / STATE_FILE, identity, missing_ok=True) is None


def test_a_fresh_run_moves_the_old_results_aside(trained, tmp_path):
    out = _copy(trained, tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / ".last_state.pt.abc123.tmp").write_bytes(b"half a state")  # left by a SIGKILL during a save
    aside = prepare_output_folder(out)
    assert aside.name.startswith("run.old-") and aside.parent == out.parent
    assert sorted(p.name for p in aside.iterdir()) == sorted(p.name for p in trained[0].iterdir())
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only the run's own files move
    assert prepare_output_folder(out) is None  # nothing left to move


def test_overwrite_deletes_only_the_old_run_files(trained, tmp_path):
    out = _copy(trained, tmp_path)
    (out / "notes.txt").write_text("mine")
    assert prepare_output_folder(out, overwrite=True) is None
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        prepare_output_folder(tmp_path / "file")


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / ".best.safetensors.x1y2.tmp").write_bytes(b"partial")
    (tmp_path / "keep.tmp").write_bytes(b"not ours: not hidden")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".best.safetensors.x1y2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp"]


# ------------------------------------------------------------------------------------- through `hdkd train` itself
wired = pytest.mark.skipif(
    not hasattr(trainer_module, "check_resume_state"), reason="the trainer does not call hdkd.training.resume yet"
)
QUICK = ["--epochs", "1", "--max-per-class", "8", "--img-size", "32", "--workers", "0", "--no-progress"]


@wired
def test_cli_resume_refuses_no_state_and_another_runs_state(trained, tmp_path, capsys):
    code = main(["train", "teacher", *QUICK, "-o", str(tmp_path / "empty"), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err
    out = _copy(trained, tmp_path)
    other_size = [a if a != "32" else "48" for a in QUICK]
    code = main(["train", "teacher", *other_size, "-o", str(out), "--resume", "--set", "train.epochs=2"])
    err = capsys.readouterr().err
    assert code == 2 and "model.img_size: state 32, this run 48" in err and err.count("\n") == 1
    code = main(["train", "teacher", *QUICK, "-o", str(out), "--resume", "--set", "train.epochs=2"])
    assert code == 0  # its own state: continued
    assert [r["epoch"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())] == [1, 2]


@wired
def test_cli_fresh_run_into_a_used_folder_moves_the_old_run_aside(trained, tmp_path):
    out = _copy(trained, tmp_path)
    (out / ".last.safetensors.zz.tmp").write_bytes(b"left by a SIGKILL")
    assert main(["train", "teacher", *QUICK, "-o", str(out)]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "summary.json").is_file()
    assert not list(out.glob(".*.tmp")) and len((out / "log.jsonl").read_text().splitlines()) == 1
