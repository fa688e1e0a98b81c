"""`hdkd export`: ONNX Runtime computes what PyTorch computes, the file describes itself, int8 stays close, bad
input is one clear error and leaves nothing behind."""

import argparse
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image

import hdkd.models  # noqa: F401  (registers the models with timm)
from hdkd.commands import export as export_command
from hdkd.commands.export import register
from hdkd.deploy import export as export_module
from hdkd.deploy.export import export_onnx
from hdkd.deploy.onnx_classifier import INPUT_NAME, OUTPUT_NAME, OnnxClassifier
from hdkd.errors import CheckpointError, ConfigError, DataError, HDKDError
from hdkd.evaluation.inference import ModelInfo, TorchClassifier, read_model_image, to_input
from hdkd.models import save_checkpoint
from hdkd.reporting.model_card import render_model_card

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
MODELS = ("hdkd_teacher", "hdkd_student", "hdkd")
# small but complete: every block type (stem, MBCSA with and without downsampling, CBAM, DFLT) at 32 px
TINY = {
    "num_classes": 4,
    "img_size": 32,
    "in_chans": 3,
    "depths": [1, 2, 2],
    "widths": [16, 24, 32],
    "hidden_dim": 32,
    "embed_dim": 64,
    "dflt_depth": 1,
    "dflt_heads": 2,
    "dflt_head_dim": 16,
    "dflt_mlp_dim": 64,
}
# big enough for its weights, not the graph, to dominate the file: int8 must shrink it
SMALL = {
    **TINY,
    "widths": [32, 64, 128],
    "hidden_dim": 64,
    "embed_dim": 128,
    "dflt_heads": 4,
    "dflt_head_dim": 32,
    "dflt_mlp_dim": 256,
}


def tiny_model(name: str, seed: int = 0, arch: dict = TINY) -> torch.nn.Module:
    """A tiny model whose BatchNorms have non-trivial running statistics (so a graph that dropped them fails)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **arch)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def make_checkpoint(folder, name: str, temperature=None, seed: int = 0, arch: dict = TINY):
    extra = {
        "class_names": CLASSES,
        "img_size": 32,
        "in_chans": 3,
        "role": {"hdkd_teacher": "teacher", "hdkd_student": "student"}.get(name, name),
    }
    if temperature is not None:
        extra["temperature"] = temperature
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(tiny_model(name, seed, arch), folder / "best.safetensors", name, arch, extra=extra)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {name: make_checkpoint(root / name, name, temperature=1.7 if name == "hdkd" else None) for name in MODELS}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Class folders with Training/Testing splits: textured images whose class changes their brightness."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, count in (("Training", 30), ("Testing", 8)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = np.clip(rng.normal(60 * label + 40, 40, size=(40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{i}.png")
    return root


def cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export", *map(str, argv)])
    return args.func(args)


def random_inputs(n: int, seed: int = 1) -> torch.Tensor:
    info = ModelInfo(
        model_name="x",
        class_names=tuple(CLASSES),
        img_size=32,
        in_chans=3,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return to_input(images, info)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_runtime_matches_pytorch_at_batch_1_and_5(checkpoints, tmp_path, name):
    out = tmp_path / "model.onnx"
    result = export_onnx(checkpoints[name], out)
    assert result["check"]["max_abs_diff"] <= 1e-4
    reference, exported = TorchClassifier.from_checkpoint(checkpoints[name]), OnnxClassifier(out)
    for n in (1, 5):
        x = random_inputs(n, seed=n)
        expected, got = reference.logits(x), exported.logits(x)
        assert got.shape == (n, 4)
        assert np.abs(got - expected).max() <= 1e-4
    graph = onnx.load(str(out))
    (graph_input,), (graph_output,) = graph.graph.input, graph.graph.output
    assert (graph_input.name, graph_output.name) == (INPUT_NAME, OUTPUT_NAME)
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # one file: every weight inside it; beside it only the model card
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in graph.graph.initializer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.md", "model.onnx"]


def test_metadata_round_trips_through_onnx_runtime_alone(checkpoints, tmp_path):
    out = tmp_path / "model.onnx"
    export_onnx(checkpoints["hdkd"], out)
    assert OnnxClassifier(out).info == ModelInfo.from_checkpoint(checkpoints["hdkd"])
    props = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(props["hdkd.class_names"]) == CLASSES
    assert (props["hdkd.img_size"], props["hdkd.in_chans"], props["hdkd.temperature"]) == ("32", "3", "1.7")
    assert json.loads(props["hdkd.mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert props["hdkd.role"] == "hdkd" and props["hdkd.precision"] == "float32"
    assert props["hdkd.hdkd_version"]


def test_distilled_student_returns_the_mean_of_its_two_heads(checkpoints, tmp_path):
    out = tmp_path / "model.onnx"
    export_onnx(checkpoints["hdkd"], out)
    model = TorchClassifier.from_checkpoint(checkpoints["hdkd"]).model
    x = random_inputs(3)
    with torch.no_grad():
        tokens = model.forward_features(x)
        cls_logits, dist_logits = model.head(tokens[:, 0]).numpy(), model.head_dist(tokens[:, 1]).numpy()
    assert np.abs(cls_logits - dist_logits).max() > 1e-2  # the heads differ, so the mean is not either head
    got = OnnxClassifier(out).logits(x)
    np.testing.assert_allclose(got, (cls_logits + dist_logits) / 2, atol=1e-4, rtol=0)


def test_int8_is_smaller_and_mostly_agrees(image_folder, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "small", "hdkd", arch=SMALL)
    out = tmp_path / "model.onnx"
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(checkpoint, fp32)
    assert cli([checkpoint, "-o", out, "--int8", "--calibration", image_folder, "--calibration-images", 48]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert out.stat().st_size < 0.5 * fp32.stat().st_size
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = OnnxClassifier(out)
    assert int8.info == OnnxClassifier(fp32).info
    assert int8.session.get_modelmeta().custom_metadata_map["hdkd.precision"] == "int8"
    images = [read_model_image(p, int8.info) for p in sorted((image_folder / "Training").rglob("*.png"))[:60]]
    x = to_input(np.stack(images), int8.info)
    agreement = np.mean(int8.logits(x).argmax(1) == OnnxClassifier(fp32).logits(x).argmax(1))
    assert agreement >= 0.9
    report = json.loads(out.with_suffix(".int8.json").read_text())
    assert report["quantization"]["calibration_split"] == "train"
    assert report["quantization"]["calibration_images"] == 48
    assert report["test"]["n"] == 32 and report["test"]["prediction_agreement"] >= 0.9
    assert report["size_bytes"]["int8"] == out.stat().st_size
    assert report["latency_batch1"]["float32_ms"] > 0 and report["latency_batch1"]["int8_ms"] > 0
    card = out.with_suffix(".md").read_text()
    assert "int8 quantization" in card and "not a medical device" in card


def test_calibration_never_reads_the_test_split(checkpoints, image_folder, tmp_path, monkeypatch):
    requested = []
    real = export_module.build_datasets

    def spy(cfg, img_size, in_chans=None, splits=("train", "val", "test")):
        requested.append(tuple(splits))
        return real(cfg, img_size, in_chans, splits=splits)

    monkeypatch.setattr(export_module, "build_datasets", spy)
    out = tmp_path / "model.onnx"
    cli(
        [
            checkpoints["hdkd_student"],
            "-o",
            out,
            "--int8",
            "--calibration",
            image_folder,
            "--calibration-images",
            16,
            "--no-per-channel",
        ]
    )
    assert requested[0] == ("train",)  # calibration: the train split alone
    assert requested[1:] == [("test",)]  # then, for the report only, the test split
    report = json.loads(out.with_suffix(".int8.json").read_text())
    assert report["quantization"]["per_channel"] is False
    assert report["quantization"]["per_channel_chosen_by"] == "set by the user"


def test_a_failed_check_writes_nothing(checkpoints, tmp_path, monkeypatch):
    other = tiny_model("hdkd_student", seed=1)  # same architecture, other weights: a wrong graph
    real = export_module.export_graph
    monkeypatch.setattr(export_module, "export_graph", lambda model, info, opset: real(other, info, opset))
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(CheckpointError, match="disagrees with PyTorch"):
        cli([checkpoints["hdkd_student"], "-o", out])
    assert not out.exists() and not out.with_suffix(".md").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_check_images_are_compared_too(checkpoints, image_folder, tmp_path):
    out = tmp_path / "model.onnx"
    result = export_onnx(checkpoints["hdkd_teacher"], out, check_images=image_folder / "Testing")
    assert result["check"]["per_batch"]["check images"] <= 1e-4
    assert result["check"]["images"] == 8 + 1 + 32


def test_report_fills_metrics_temperature_and_data_into_metadata_and_card(checkpoints, tmp_path):
    ckpt = checkpoints["hdkd_student"]
    run = tmp_path / "run"
    report = {
        "meta": {
            "dataset": "Brain Tumor MRI (class folders); train 1542, val 572, test 1311",
            "class_counts": {"test": {c: 10 for c in CLASSES}},
            "confidence_intervals": "95% percentile bootstrap, 1000 resamples of the test images, seed 0",
        },
        "results": {
            "student": {
                "checkpoint": str(ckpt),
                "model": "hdkd_student",
                "metrics": {"n": 40, "accuracy": 0.875, "balanced_accuracy": 0.86, "macro_f1": 0.85, "ece": 0.05},
                "bootstrap": {"metrics": {"accuracy": {"estimate": 0.875, "low": 0.8, "high": 0.95}}},
                "temperature_scaling": {
                    "temperature": 1.25,
                    "fitted_on": "validation",
                    "n_val": 572,
                    "test_before": {"ece": 0.05, "nll": 0.4},
                    "test_after": {"ece": 0.03, "nll": 0.35},
                },
            }
        },
    }
    run.mkdir()
    (run / "report.json").write_text(json.dumps(report))
    out = tmp_path / "model.onnx"
    cli([ckpt, "-o", out, "--report", run / "report.json"])
    info = OnnxClassifier(out).info
    assert info.temperature == 1.25
    assert info.training_data.startswith("Brain Tumor MRI")
    assert info.metrics["accuracy"] == 0.875 and info.metrics["n"] == 40  # flat, as the pipeline stores them
    card = out.with_suffix(".md").read_text()
    assert "87.50 %" in card and "80.00 % to 95.00 %" in card
    assert "T = 1.2500" in card and "572 images" in card
    assert "Brain Tumor MRI" in card and "not a medical device" in card
    assert all(name in card for name in CLASSES)


def test_report_of_another_run_is_refused(checkpoints, tmp_path):
    (tmp_path / "report.json").write_text(
        json.dumps({"results": {"hdkd": {"checkpoint": "/elsewhere/x.safetensors", "metrics": {}}}})
    )
    with pytest.raises(ConfigError, match="no result for"):
        cli([checkpoints["hdkd"], "-o", tmp_path / "m.onnx", "--report", tmp_path / "report.json"])
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "argv, error, message",
    [
        (["--format", "tflite"], ConfigError, "unknown export format 'tflite'"),
        (["--opset", "13"], ConfigError, "--opset"),
        (["--int8"], ConfigError, "--calibration"),
        (["--calibration-images", "0", "--int8", "--calibration", "DATA"], ConfigError, "--calibration-images"),
        (["--check-images", "MISSING"], DataError, "not a folder"),
    ],
)
def test_bad_options_are_one_clear_error(checkpoints, image_folder, tmp_path, argv, error, message):
    argv = [str(image_folder) if a == "DATA" else str(tmp_path / "nothing") if a == "MISSING" else a for a in argv]
    out = tmp_path / "model.onnx"
    with pytest.raises(error, match=message):
        cli([checkpoints["hdkd"], "-o", out, *argv])
    assert not out.exists()


def test_bad_files_are_one_clear_error(checkpoints, image_folder, tmp_path):
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    for checkpoint in (garbage, tmp_path / "missing.safetensors"):
        with pytest.raises(CheckpointError, match=checkpoint.name):
            cli([checkpoint, "-o", tmp_path / "a.onnx"])
    with pytest.raises(ConfigError, match="ending in .onnx"):
        export_onnx(checkpoints["hdkd"], tmp_path / "model.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        export_onnx(checkpoints["hdkd"], tmp_path / "b.onnx", check_images=tmp_path / "empty")
    other_classes = tmp_path / "other"
    for name in ("cat", "dog"):
        (other_classes / "Training" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(other_classes / "Training" / name / f"{i}.png")
    with pytest.raises(DataError, match="differ from the model's"):
        cli([checkpoints["hdkd"], "-o", tmp_path / "c.onnx", "--int8", "--calibration", other_classes])
    assert not any(p.suffix in (".onnx", ".md", ".json") for p in tmp_path.iterdir())
    assert all(issubclass(e, HDKDError) for e in (CheckpointError, ConfigError, DataError))


def test_model_card_renders_sparse_facts_and_escapes_names():
    card = render_model_card(
        {
            "file": "m.onnx",
            "model": {"name": "hdkd", "params": 10},
            "classes": ["a|b", "<script>"],
            "input": {"img_size": 32, "in_chans": 1},
        }
    )
    assert "a\\|b" in card and "&lt;script&gt;" in card and "<script>" not in card
    assert "No test metrics recorded" in card and "Uncalibrated" in card and "not a medical device" in card
    assert "grey" in card and "32 x 32" in card


def test_the_command_states_the_library_defaults():
    assert export_command.FORMATS == export_module.FORMATS
    assert export_command.DEFAULT_OPSET == export_module.DEFAULT_OPSET


def test_onnx_matches_pytorch_on_real_brain_mri_images(checkpoints, brain_mri, tmp_path):
    out = tmp_path / "model.onnx"
    result = export_onnx(checkpoints["hdkd"], out, check_images=brain_mri / "Testing")
    assert result["check"]["per_batch"]["check images"] <= 1e-4
    assert result["check"]["images"] == 8 + 1 + 64  # 64 real images, spread over the four class folders
