"""`hdkd predict`: rows, columns and probabilities against a direct run of the model and against the data path
`hdkd evaluate` uses; calibration; DICOM frames; bad files; user errors; nothing half-written."""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pydicom.data import get_testdata_file

import hdkd.models  # noqa: F401  (registers the hdkd architectures with timm)
from hdkd.commands.predict import register
from hdkd.data.dicom import read_dicom_frames
from hdkd.deploy.predict import PredictionRow, PredictionTable, predict_files
from hdkd.errors import CheckpointError, ConfigError, DataError, HDKDError
from hdkd.evaluation.inference import TorchClassifier, fit_array, read_model_image, softmax, to_input
from hdkd.models import save_checkpoint

CLASSES = ["glioma", "meningioma", "notumor"]


def make_checkpoint(path: Path, in_chans: int = 3, temperature: float | None = None) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("hdkd_student", num_classes=len(CLASSES), img_size=32, in_chans=in_chans)
    spread_head(model.eval(), in_chans)
    extra = {"class_names": CLASSES, "img_size": 32, "in_chans": in_chans, "role": "student"}
    if temperature is not None:
        extra["temperature"] = temperature
    return save_checkpoint(
        model, path, "hdkd_student", {"num_classes": len(CLASSES), "img_size": 32, "in_chans": in_chans}, extra=extra
    )


def spread_head(model: torch.nn.Module, in_chans: int) -> None:
    """A random network's logits hardly depend on its input: recentre and rescale its head on flat-colour inputs
    so that different images get clearly different classes (and a wrong preprocessing clearly other numbers)."""
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(16, in_chans, 1, 1, generator=generator) * 4 - 2).expand(16, in_chans, 32, 32)
    features = []
    hook = model.head.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    with torch.no_grad():
        model(x)
        hook.remove()
        weight = torch.randn(model.head.out_features, model.head.in_features, generator=generator)
        weight *= 3 / features[0].std(0).norm()
        model.head.weight.copy_(weight)
        model.head.bias.copy_(-weight @ features[0].mean(0))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "best.safetensors")


@pytest.fixture(scope="module")
def grey_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("grey") / "best.safetensors", in_chans=1)


def picture(path: Path, seed: int, size: tuple[int, int] = (40, 56), mode: str = "RGB") -> Path:
    """A flat colour of its own (so that different files get clearly different predictions) plus noise."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-20, 21, (size[1], size[0], 3))
    array = np.clip(rng.integers(0, 256, 3) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(array).convert(mode)
    image.save(path)
    return path


def image_folder(root: Path) -> list[Path]:
    """Mixed modes, sizes and formats in nested class folders (as a scanner export or a dataset would be)."""
    return [
        picture(root / "a" / "one.png", 1),
        picture(root / "a" / "two.jpg", 2, (64, 64), "L"),
        picture(root / "b" / "deep" / "three.png", 3, (20, 30), "RGBA"),
        picture(root / "b" / "four.bmp", 4),
    ]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["predict", *argv])
    return args.func(args)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_rows_columns_and_probabilities_equal_a_direct_run(checkpoint, tmp_path, capsys):
    files = image_folder(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "predictions.csv"
    assert run_cli([str(checkpoint), str(tmp_path / "in"), "-o", str(out), "--no-progress"]) == 0
    rows = read_csv(out)
    header = list(rows[0])
    assert header == ["path", "frame", "predicted", "p_glioma", "p_meningioma", "p_notumor", "error"]
    assert [r["path"] for r in rows] == [str(f) for f in sorted(files)]  # recursive, sorted, .txt skipped

    classifier = TorchClassifier.from_checkpoint(checkpoint)
    images = [read_model_image(Path(r["path"]), classifier.info) for r in rows]
    expected = classifier.probabilities(images, batch_size=1)
    # An independent forward pass: PIL decode, bilinear resize, ImageNet normalisation, softmax.
    for row, probs in zip(rows, expected, strict=True):
        got = np.array([float(row[f"p_{c}"]) for c in CLASSES])
        np.testing.assert_allclose(got, probs, atol=1e-6)  # batch of 4 vs 1: float32 rounding
        assert row["predicted"] == CLASSES[int(np.argmax(probs))] and row["frame"] == "" and row["error"] == ""
    with Image.open(files[0]) as img:
        x = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array([0.229, 0.224, 0.225], dtype=np.float32)
    with torch.no_grad():
        logits = classifier.model(torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()).numpy()
    np.testing.assert_allclose(expected[sorted(files).index(files[0])], softmax(logits)[0], atol=1e-5)
    assert len(set(r["predicted"] for r in rows)) > 1  # the sharpened head tells these images apart
    err = capsys.readouterr().err
    assert "4 of 4 rows predicted" in err and "1 file skipped" in err and "uncalibrated" in err


def test_preprocessing_and_predictions_equal_the_evaluation_data_path(checkpoint, tmp_path):
    from hdkd.config import DataConfig
    from hdkd.data import build_eval_dataset

    root = tmp_path / "data"
    for split in ("Training", "Testing"):
        for k, name in enumerate(CLASSES):
            for i in range(2):
                mode = ("RGB", "L", "P")[(k + i) % 3]
                picture(
                    root / split / name / f"{name}_{i}.png", 10 * k + i + (split == "Testing"), (30 + 7 * i, 44), mode
                )
    config = DataConfig(path=str(root), cache_dir=str(tmp_path / "cache"), val_fraction=0.0)  # 2 train images
    dataset = build_eval_dataset(config, 32, 3, "test")
    classifier = TorchClassifier.from_checkpoint(checkpoint)
    table = predict_files(classifier, [root / "Testing"], batch_size=4, progress=False)
    assert [Path(r.path).parent.name for r in table.rows] == [CLASSES[label] for label in dataset.labels]
    prepared = np.stack([read_model_image(Path(r.path), classifier.info) for r in table.rows])
    np.testing.assert_array_equal(prepared, dataset.images)  # byte-identical to what training and evaluation see
    with torch.no_grad():
        inputs = torch.stack([dataset[i][0] for i in range(len(dataset))])
        evaluated = torch.softmax(classifier.model(inputs), dim=1).numpy()
    # batches of 4 against one of 6: oneDNN's GEMM blocking depends on the row count, so the same image's logits may
    # differ in the last float digits (1.7e-6 seen in a probability)
    np.testing.assert_allclose(np.stack([r.probabilities for r in table.rows]), evaluated, atol=1e-5)
    assert [table.predicted(r) for r in table.rows] == [CLASSES[i] for i in evaluated.argmax(1)]


def test_temperature_applied_and_switched_off(tmp_path):
    path = make_checkpoint(tmp_path / "calibrated.safetensors", temperature=2.5)
    files = image_folder(tmp_path / "in")
    classifier = TorchClassifier.from_checkpoint(path)
    prepared = [read_model_image(f, classifier.info) for f in sorted(files)]
    raw = classifier.logits(to_input(prepared, classifier.info))
    calibrated = predict_files(classifier, [tmp_path / "in"], progress=False)
    plain = predict_files(classifier, [tmp_path / "in"], calibrated=False, progress=False)
    assert calibrated.temperature == 2.5 and plain.temperature is None
    np.testing.assert_allclose(np.stack([r.probabilities for r in calibrated.rows]), softmax(raw, 2.5), atol=1e-6)
    np.testing.assert_allclose(np.stack([r.probabilities for r in plain.rows]), softmax(raw), atol=1e-6)
    assert np.abs(softmax(raw, 2.5) - softmax(raw)).max() > 0.01  # the two really differ

    on, off = tmp_path / "on.csv", tmp_path / "off.csv"
    assert run_cli([str(path), str(tmp_path / "in"), "-o", str(on), "--no-progress"]) == 0
    assert run_cli([str(path), str(tmp_path / "in"), "-o", str(off), "--no-progress", "--no-calibration"]) == 0
    p_on = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in read_csv(on)])
    p_off = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in read_csv(off)])
    np.testing.assert_allclose(p_on, softmax(raw, 2.5), atol=1e-6)
    np.testing.assert_allclose(p_off, softmax(raw), atol=1e-6)


def test_one_bad_file_gets_an_error_row_and_exit_status_1(checkpoint, tmp_path, capsys):
    files = image_folder(tmp_path / "in")
    broken = tmp_path / "in" / "a" / "broken.jpg"
    broken.write_bytes(files[1].read_bytes()[:200])  # a truncated JPEG
    text = tmp_path / "in" / "b" / "text.png"
    text.write_text("hello")
    out = tmp_path / "predictions.csv"
    assert run_cli([str(checkpoint), str(tmp_path / "in"), "-o", str(out), "--no-progress", "--batch-size", "2"]) == 1
    rows = {r["path"]: r for r in read_csv(out)}
    assert len(rows) == 6
    for bad in (broken, text):
        row = rows[str(bad)]
        assert row["error"].startswith(str(bad)) and "corrupt or unreadable image" in row["error"]
        assert row["predicted"] == "" and all(row[f"p_{c}"] == "" for c in CLASSES)
    good = [r for r in rows.values() if not r["error"]]
    assert len(good) == 4 and all(r["predicted"] in CLASSES for r in good)
    assert all(abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-6 for r in good)
    assert "4 of 6 rows predicted, 2 failed" in capsys.readouterr().err


def test_dicom_gives_a_row_per_frame(grey_checkpoint, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(get_testdata_file("rtdose.dcm", download=False), folder / "IM0001")  # 15 frames, no suffix
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), folder / "ct.dcm")
    shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm", download=False), folder / "colour.jpg")  # DICOM inside
    classifier = TorchClassifier.from_checkpoint(grey_checkpoint)
    table = predict_files(classifier, [folder], batch_size=8, progress=False)
    assert [(Path(r.path).name, r.frame) for r in table.rows] == (
        [("IM0001", i) for i in range(1, 16)] + [("colour.jpg", 1), ("colour.jpg", 2), ("ct.dcm", 1)]
    )
    assert table.failed == 0
    frames = [fit_array(f, classifier.info) for f in read_dicom_frames(folder / "IM0001")]
    np.testing.assert_allclose(
        np.stack([r.probabilities for r in table.rows[:15]]), classifier.probabilities(frames), atol=1e-5
    )  # batches of 8 vs 15
    windowed = predict_files(classifier, [folder / "ct.dcm"], window=(40, 400), progress=False)
    expected = classifier.probabilities(
        [fit_array(read_dicom_frames(folder / "ct.dcm", (40, 400))[0], classifier.info)]
    )
    np.testing.assert_allclose(windowed.rows[0].probabilities, expected[0], atol=1e-6)
    assert not np.allclose(windowed.rows[0].probabilities, table.rows[-1].probabilities, atol=1e-4)
    csv_rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert [r["frame"] for r in csv_rows[:3]] == ["1", "2", "3"]


def test_unreadable_dicom_row_names_the_problem(grey_checkpoint, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm", download=False), folder / "good.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm", download=False), folder / "plan.dcm")
    table = predict_files(TorchClassifier.from_checkpoint(grey_checkpoint), [folder], progress=False)
    assert table.failed == 1 and "holds no image" in table.rows[1].error and table.rows[0].probabilities is not None


def test_nothing_half_written_when_interrupted(checkpoint, tmp_path, monkeypatch):
    image_folder(tmp_path / "in")
    out = tmp_path / "predictions.csv"
    out.write_text("the previous predictions\n")
    calls = {"n": 0}
    original = TorchClassifier.probabilities

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TorchClassifier, "probabilities", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_cli([str(checkpoint), str(tmp_path / "in"), "-o", str(out), "--batch-size", "2", "--no-progress"])
    assert calls["n"] == 2 and out.read_text() == "the previous predictions\n"
    monkeypatch.setattr(TorchClassifier, "probabilities", original)

    def failing_replace(src, dst):
        raise KeyboardInterrupt  # the moment between writing the temporary file and renaming it

    monkeypatch.setattr("hdkd.io.os.replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        run_cli([str(checkpoint), str(tmp_path / "in"), "-o", str(out), "--no-progress"])
    assert out.read_text() == "the previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "predictions.csv"]  # no temporary file left


def test_user_errors_are_one_line_hdkd_errors(checkpoint, tmp_path):
    image_folder(tmp_path / "in")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    out = str(tmp_path / "p.csv")
    cases = [
        ([str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path)], ConfigError, "is a folder"),
        ([str(checkpoint), str(tmp_path / "missing"), "-o", out], DataError, "no such file or folder"),
        ([str(checkpoint), str(tmp_path / "empty"), "-o", out], DataError, "no image or DICOM files found"),
        ([str(tmp_path / "in" / "a" / "one.png"), str(tmp_path / "in"), "-o", out], CheckpointError, ".safetensors"),
        ([str(checkpoint), str(tmp_path / "in"), "-o", out, "--window", "40", "0"], ConfigError, "--window"),
        ([str(checkpoint), str(tmp_path / "in"), "-o", out, "--batch-size", "0"], ConfigError, "--batch-size"),
    ]
    for argv, error, text in cases:
        with pytest.raises(error, match=text) as caught:
            run_cli(argv + ["--no-progress"])
        assert isinstance(caught.value, HDKDError) and "\n" not in str(caught.value)
    assert not Path(out).exists()


def test_standard_output(checkpoint, tmp_path, capsys):
    files = image_folder(tmp_path / "in")
    assert run_cli([str(checkpoint), str(files[0]), str(files[0]), "-o", "-", "--no-progress"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 1 and rows[0]["path"] == str(files[0])  # a file given twice is predicted once
    assert "written to standard output" in captured.err


def test_table_csv_quotes_awkward_paths():
    path = 'scan, "left"\nview.png'
    table = PredictionTable(
        ("a", "b"),
        rows=[PredictionRow(path, None, np.array([0.25, 0.75])), PredictionRow("x.png", None, None, "x.png: corrupt")],
    )
    parsed = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert parsed[0]["path"] == path and parsed[0]["predicted"] == "b" and parsed[0]["p_b"] == "0.75"
    assert parsed[1]["predicted"] == "" and parsed[1]["error"] == "x.png: corrupt" and table.failed == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_model_predicts_as_its_checkpoint(checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx")
    from hdkd.evaluation.inference import ModelInfo

    classifier = TorchClassifier.from_checkpoint(checkpoint)  # a plain export, as `hdkd export` will write it
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        classifier.model,
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    graph = onnx.load(str(path))
    for key, value in ModelInfo.from_checkpoint(checkpoint).to_metadata().items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
    image_folder(tmp_path / "in")
    assert run_cli([str(path), str(tmp_path / "in"), "-o", str(tmp_path / "onnx.csv"), "--no-progress"]) == 0
    assert run_cli([str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "torch.csv"), "--no-progress"]) == 0
    onnx_rows, torch_rows = read_csv(tmp_path / "onnx.csv"), read_csv(tmp_path / "torch.csv")
    assert [r["predicted"] for r in onnx_rows] == [r["predicted"] for r in torch_rows]
    for a, b in zip(onnx_rows, torch_rows, strict=True):
        np.testing.assert_allclose(
            [float(a[f"p_{c}"]) for c in CLASSES], [float(b[f"p_{c}"]) for c in CLASSES], atol=1e-5
        )
    with pytest.raises(ConfigError, match="ONNX model runs on the CPU"):
        run_cli([str(path), str(tmp_path / "in"), "-o", str(tmp_path / "x.csv"), "--device", "cuda"])
