"""The command line end to end on the embedded dataset, and bad input: one clear line, nothing left behind."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hdkd.cli import main
from hdkd.evaluation.inference import ModelInfo


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pipeline_end_to_end_on_embedded_data(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _run(["pipeline", "-o", str(out), "--epochs", "1", "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"teacher", "student", "hdkd"}
    for role in ("teacher", "student", "hdkd"):
        metrics = report["results"][role]["metrics"]
        assert metrics["n"] == 120 and 0.0 <= metrics["accuracy"] <= 1.0
        assert (out / role / "best.safetensors").is_file()
    assert report["results"]["hdkd"]["params"] < report["results"]["teacher"]["params"]
    md = (out / "report.md").read_text()
    assert "| teacher |" in md and "| hdkd |" in md
    assert (out / "confusion_matrices.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "training_curves.png").stat().st_size > 5000
    assert "| hdkd |" in stdout
    for role in ("teacher", "student", "hdkd"):  # the temperature fitted on validation travels with each model
        info = ModelInfo.from_checkpoint(out / role / "best.safetensors")
        fitted = report["results"][role]["temperature_scaling"]["temperature"]
        assert info.temperature == pytest.approx(fitted) and info.training_data == report["meta"]["dataset"]
        assert info.metrics["accuracy"] == pytest.approx(report["results"][role]["metrics"]["accuracy"])

    # evaluate the distilled checkpoint on the same split: same metrics as the report
    code, stdout, err = _run(
        ["evaluate", str(out / "hdkd" / "best.safetensors"), "--split", "test", "-o", str(tmp_path / "m.json")], capsys
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"] == pytest.approx(report["results"]["hdkd"]["metrics"]["accuracy"])
    assert metrics["amp"] == report["results"]["hdkd"]["amp"] in ("bf16", "none")  # both in this machine's default
    assert "balanced" in stdout.lower() and "confusion" in stdout.lower()


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "hdkd", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("hdkd ")


def _folder_dataset(root, classes=("a", "b"), per_class=10):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _assert_clean_failure(code, err, *needles, out=None):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("hdkd: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if out is not None:
        assert not out.exists(), f"{out} was created by a failed run"


def test_missing_data_path(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(["train", "teacher", "--data", str(tmp_path / "nowhere"), "-o", str(out)], capsys)
    _assert_clean_failure(code, err, "nowhere", "does not exist", out=out)


def test_corrupt_image(tmp_path, capsys):
    data = _folder_dataset(tmp_path / "d")
    (data / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    out = tmp_path / "out"
    code, _, err = _run(["pipeline", "--data", str(data), "-o", str(out), "--img-size", "32"], capsys)
    _assert_clean_failure(code, err, "broken.jpg", out=out)


def test_empty_class_folder(tmp_path, capsys):
    data = _folder_dataset(tmp_path / "d")
    (data / "train" / "c").mkdir()
    (data / "test" / "c").mkdir()
    out = tmp_path / "out"
    code, _, err = _run(["train", "student", "--data", str(data), "-o", str(out), "--img-size", "32"], capsys)
    _assert_clean_failure(code, err, "c", "empty", out=out)


def test_non_image_file(tmp_path, capsys):
    data = _folder_dataset(tmp_path / "d")
    (data / "train" / "b" / "notes.txt").write_text("a radiologist's note")
    out = tmp_path / "out"
    code, _, err = _run(["train", "teacher", "--data", str(data), "-o", str(out), "--img-size", "32"], capsys)
    _assert_clean_failure(code, err, "notes.txt", out=out)


def test_teacher_checkpoint_with_wrong_class_count(tmp_path, capsys):
    three = _folder_dataset(tmp_path / "three", classes=("a", "b", "c"), per_class=4)
    two = _folder_dataset(tmp_path / "two", classes=("a", "b"), per_class=4)
    common = ["--img-size", "32", "--epochs", "1", "--no-progress", "--set", "data.val_fraction=0.25"]
    assert main(["train", "teacher", "--data", str(three), "-o", str(tmp_path / "t3"), *common]) == 0
    capsys.readouterr()
    out = tmp_path / "h2"
    code, _, err = _run(
        [
            "train",
            "hdkd",
            "--data",
            str(two),
            "-o",
            str(out),
            "--teacher",
            str(tmp_path / "t3" / "best.safetensors"),
            *common,
        ],
        capsys,
    )
    _assert_clean_failure(code, err, "best.safetensors", "classes", out=out)


def test_evaluate_rejects_wrong_class_count(tmp_path, capsys, official_fixtures):
    data = _folder_dataset(tmp_path / "d")
    code, _, err = _run(["evaluate", str(official_fixtures / "teacher_4cls_224.pth"), "--data", str(data)], capsys)
    _assert_clean_failure(code, err, "teacher_4cls_224.pth")


def test_pipeline_jobs_trains_roles_in_processes_like_one_process(tmp_path, capsys, monkeypatch):
    """--jobs 2: teacher and student side by side, HDKD after its teacher, then the usual report; with one thread
    per process the weights equal those of the one-process pipeline."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.setattr("hdkd.training.parallel.available_cpus", lambda: 2)  # one thread per worker
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = [
            "pipeline",
            "--epochs",
            "1",
            "--no-progress",
            "--max-per-class",
            "8",
            "--workers",
            "0",
            "--bootstrap",
            "0",
            "--set",
            "train.deterministic=true",
        ]
        code, _, err = _run([*common, "-o", str(tmp_path / "serial")], capsys)
        assert code == 0, err
        code, stdout, err = _run([*common, "-o", str(tmp_path / "jobs"), "--jobs", "2"], capsys)
        assert code == 0, err
    finally:
        torch.set_num_threads(threads)
    trained = [line.split()[1] for line in err.splitlines() if line.strip().startswith("trained ")]
    assert sorted(trained) == ["hdkd", "student", "teacher"] and trained.index("teacher") < trained.index("hdkd")
    report = json.loads((tmp_path / "jobs" / "report.json").read_text())
    assert set(report["results"]) == {"teacher", "student", "hdkd"}
    for role in ("teacher", "student", "hdkd"):
        log = (tmp_path / "jobs" / role / "log.jsonl").read_text().splitlines()
        assert len(log) == 1  # trained once, by a worker; the main process only evaluated it
        a = load_file(tmp_path / "serial" / role / "best.safetensors")
        b = load_file(tmp_path / "jobs" / role / "best.safetensors")
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a), role
