"""A checkpoint as one self-describing ONNX file, checked against PyTorch before anything is written.

The graph takes ``images`` (float32, N x in_chans x H x W, normalised as in training; N is dynamic) and returns
``logits`` as the model computes them in eval mode, so the distilled student (`hdkd`) returns the mean of its class
and distillation heads. The weights are inside the one file, and its metadata (`ModelInfo.to_metadata`, plus
``hdkd.precision``) says how to prepare an image, so ONNX Runtime alone can use it (`OnnxClassifier`).

Exporter: torch 2.14's default (``dynamo=True``, torch.export) cannot keep the batch dynamic for these models: the
CBAM channel attention runs the average- and max-pooled descriptors through one MLP as a batch of 2N and splits it
with ``chunk(2)``, a split torch.export can only prove for one batch size. The TorchScript-based exporter
(``dynamo=False``, deprecated upstream but maintained in 2.14) traces the same graph with a dynamic batch, agrees
with PyTorch to ~1e-7 for all three models and exports in under a second. BatchNorms are not folded first: ONNX
Runtime fuses Conv+BatchNorm itself when it loads the graph, so folding gains no speed.

Every export is checked before it is written: ONNX Runtime must reproduce PyTorch's logits within ``tolerance``
(max abs difference) on random normalised images, at batch 1 and at a larger batch, and on real images when given
(``check_images``, and the first calibration images with ``int8``); otherwise CheckpointError and no file. The
int8 model (`hdkd.deploy.quantize`) is compared with the float one instead: accuracy on the test split (reported,
never used to choose anything), file size and batch-1 latency, written beside the model as ``<model>.int8.json``.
What the model card states is computed here (`model_card_facts`); `hdkd.reporting.model_card` lays it out as
``<model>.md`` beside the model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnx
import torch
import torch.nn as nn
from PIL import Image

from hdkd.data import build_datasets
from hdkd.deploy.onnx_classifier import INPUT_NAME, OUTPUT_NAME, onnx_session
from hdkd.deploy.quantize import (
    choose_per_channel,
    cpu_session,
    fidelity,
    interleaved_latencies,
    quantize_int8,
    session_logits,
)
from hdkd.errors import CheckpointError, ConfigError, DataError
from hdkd.evaluation.inference import ModelInfo, TorchClassifier, read_model_image, softmax, to_input
from hdkd.evaluation.metrics import HEADLINE_METRICS, classification_metrics, headline_metrics
from hdkd.io import atomic_write, atomic_write_text, remove_stale
from hdkd.models import count_params
from hdkd.reporting.model_card import render_model_card
from hdkd.version import __version__

FORMATS = ("onnx",)
DEFAULT_OPSET = 20  # native Gelu: the float graph runs as fast as at 17, its int8 graph ~12 % faster
MIN_OPSET, MAX_OPSET = 14, 20  # scaled_dot_product_attention needs 14; 20 is the TorchScript exporter's last
TOLERANCE = 1e-4
RANDOM_CHECK_IMAGES = 8
MAX_CHECK_IMAGES = 64
SELECTION_IMAGES = 200  # held-out training images that choose per-channel vs per-tensor weight scales
PRECISION_KEY = "hdkd.precision"
QUANTIZATION_KEY = "hdkd.quantization"

Log = Callable[[str], None]


class InferenceGraph(nn.Module):
    """What the exported graph computes: normalised images -> logits of the model in eval mode.

    The wrapper itself is put in eval mode: the exporter restores the mode of the module it is given afterwards,
    recursively, and a wrapper left in train mode would switch the wrapped model back to training.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    calibration: Any = None,
    calibration_images: int = 300,
    per_channel: Optional[bool] = None,
    evaluate_data: Any = None,
    check_images: str | Path | None = None,
    report: str | Path | None = None,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    latency_repeats: int = 50,
    log: Optional[Log] = None,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``output`` (and, with ``int8``, quantize it); see the module docstring.

    ``calibration`` and ``evaluate_data`` are `DataConfig`s (``hdkd.config``): the first gives the training images
    that calibrate int8 (never its test split); the test split of ``evaluate_data`` (default: of ``calibration``)
    measures the int8 accuracy change. ``per_channel`` None chooses per-channel or per-tensor weight scales on
    held-out training images. ``report`` is a pipeline's report.json: its test metrics with their intervals for the
    model card, and its temperature, data description and metrics where the checkpoint has none (`info_with_report`).
    Returns the paths written (model, model card, int8 report), what was measured and the card's facts.
    """
    log = log or (lambda message: None)
    _check_options(output, opset, int8, calibration, calibration_images, tolerance, latency_repeats)
    output = Path(output)
    torch_model = TorchClassifier.from_checkpoint(checkpoint)
    pipeline = pipeline_result(report, checkpoint) if report else None
    info = info_with_report(torch_model.info, pipeline)
    train_images = training_images(calibration, info, seed, calibration_images + SELECTION_IMAGES) if int8 else None

    with tempfile.TemporaryDirectory(prefix="hdkd-export-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        write_onnx(export_graph(torch_model.model, info, opset), metadata(info, "float32"), fp32_path)
        check = check_against_torch(
            torch_model, fp32_path, check_inputs(info, check_images, train_images, seed), tolerance
        )
        log(
            f"ONNX Runtime agrees with PyTorch: max abs logit difference {check['max_abs_diff']:.2e} "
            f"<= {tolerance:g} on {check['images']} images"
        )
        final, int8_report = fp32_path, None
        if int8:
            final = Path(tmp) / "int8.onnx"
            int8_report = quantize_and_compare(
                fp32_path,
                final,
                info,
                train_images,
                calibration_images,
                per_channel,
                evaluate_data or calibration,
                latency_repeats,
                log,
            )
        data = final.read_bytes()

    card = model_card_facts(checkpoint, output, torch_model, info, opset, check, pipeline, int8_report, len(data))
    paths = write_outputs(output, data, int8_report, render_model_card(card))
    return {"paths": paths, "info": info, "check": check, "int8": int8_report, "size_bytes": len(data), "card": card}


def write_outputs(output: Path, data: bytes, int8_report: Optional[dict], card: str) -> dict[str, Path]:
    """Write the model last, after its card and int8 report, once everything is computed: an ``.onnx`` beside its
    card is always one export's whole output, and a kill midway leaves no model (an earlier export's model and
    companions are removed first, so they never sit beside this export's card)."""
    report_path, card_path = output.with_suffix(".int8.json"), output.with_suffix(".md")
    remove_stale(output.parent, [output.name, report_path.name, card_path.name])
    paths = {}
    if int8_report is not None:
        paths["int8_report"] = atomic_write_text(report_path, json.dumps(int8_report, indent=2) + "\n")
    paths["model_card"] = atomic_write_text(card_path, card)
    paths["model"] = atomic_write(output, lambda f: f.write(data))
    return paths


def _check_options(output, opset, int8, calibration, calibration_images, tolerance, latency_repeats) -> None:
    if Path(output).suffix != ".onnx":
        raise ConfigError(f"--output: expected a file name ending in .onnx, got {str(output)!r}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset: expected an ONNX opset from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    if int8 and calibration is None:
        raise ConfigError(
            "--int8: needs --calibration DATA, the dataset whose training images calibrate the int8 ranges"
        )
    if int8 and calibration_images < 1:
        raise ConfigError(f"--calibration-images: expected a positive number of images, got {calibration_images}")
    if not tolerance > 0:
        raise ConfigError(f"tolerance: expected a positive max abs logit difference, got {tolerance}")
    if latency_repeats < 1:
        raise ConfigError(f"latency_repeats: expected at least 1, got {latency_repeats}")


# ---------------------------------------------------------------------------------------------- the float graph


def export_graph(model: nn.Module, info: ModelInfo, opset: int) -> onnx.ModelProto:
    """The eval-mode model as an ONNX graph with a dynamic batch (TorchScript-based exporter: module docstring)."""
    example = torch.zeros(2, info.in_chans, info.img_size, info.img_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the exporter's own deprecation notice, and the tracer's note on the model's Python-level branches
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                InferenceGraph(model),
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types; say which model and opset failed
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{info.model_name}: ONNX export at opset {opset} failed ({first})") from None
    graph = onnx.load_from_string(buffer.getvalue())
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        raise CheckpointError(f"{info.model_name}: the exported graph has a fixed batch size ({batch.dim_value})")
    return graph


def metadata(info: ModelInfo, precision: str, quantization: Optional[dict] = None) -> dict[str, str]:
    """The ONNX metadata_props: the ModelInfo fields, the precision and, for int8, how it was quantized."""
    props = {**info.to_metadata(), PRECISION_KEY: precision}
    if quantization is not None:
        props[QUANTIZATION_KEY] = json.dumps(quantization)
    return props


def write_onnx(model: onnx.ModelProto, props: dict[str, str], path: Path) -> Path:
    """Set the metadata (replacing any), check the graph, and write it with every weight inside the one file."""
    del model.metadata_props[:]
    for key, value in sorted(props.items()):
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "hdkd", __version__
    model.doc_string = (
        f"{props.get('hdkd.model_name', 'model')}: images (float32 N x C x H x W, normalised) -> "
        f"logits; see the hdkd.* metadata"
    )
    onnx.checker.check_model(model)
    data = model.SerializeToString()  # raises for graphs over protobuf's 2 GB limit, far above these models
    atomic_write(path, lambda f: f.write(data))
    return path


def set_metadata(path: Path, props: dict[str, str]) -> Path:
    return write_onnx(onnx.load(str(path)), props, path)


# ------------------------------------------------------------------------------------------ the check vs PyTorch


def check_inputs(
    info: ModelInfo, check_images: str | Path | None, train_images: Optional[np.ndarray], seed: int
) -> dict[str, torch.Tensor]:
    """Named batches of normalised inputs to compare on: random images, batch 1 and batch 8, plus real images."""
    rng = np.random.default_rng(seed)
    shape = (RANDOM_CHECK_IMAGES, info.img_size, info.img_size, info.in_chans)
    random_images = to_input(rng.integers(0, 256, size=shape, dtype=np.uint8), info)
    batches = {"random": random_images, "random (batch 1)": random_images[:1]}
    if check_images is not None:
        batches["check images"] = to_input(np.stack(read_check_images(check_images, info)), info)
    if train_images is not None and len(train_images):
        batches["calibration images"] = to_input(train_images[:16], info)
    return batches


def read_check_images(folder: str | Path, info: ModelInfo) -> list[np.ndarray]:
    """Up to MAX_CHECK_IMAGES image files under ``folder`` (recursive; evenly spaced in sorted order, so that every
    class folder is represented), as the model's training saw them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--check-images: {folder} is not a folder")
    suffixes = set(Image.registered_extensions())
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"--check-images: no image files in {folder}")
    chosen = np.unique(np.linspace(0, len(files) - 1, min(len(files), MAX_CHECK_IMAGES)).round().astype(int))
    return [read_model_image(files[i], info) for i in chosen]


def check_against_torch(
    torch_model: TorchClassifier, onnx_path: Path, batches: dict[str, torch.Tensor], tolerance: float
) -> dict[str, Any]:
    """Max abs logit difference ONNX Runtime vs PyTorch per batch; CheckpointError when one exceeds ``tolerance``."""
    session = onnx_session(onnx_path, threads=1)
    diffs = {}
    for name, inputs in batches.items():
        expected = torch_model.logits(inputs)
        got = session.run(None, {INPUT_NAME: inputs.numpy()})[0]
        diffs[name] = float(np.abs(np.asarray(got, np.float64) - expected).max())
    worst = max(diffs, key=diffs.get)
    if not diffs[worst] <= tolerance:  # also catches NaN
        raise CheckpointError(
            f"{torch_model.info.model_name}: the ONNX graph disagrees with PyTorch on the "
            f"{worst} inputs (max abs logit difference {diffs[worst]:.3g} > {tolerance:g}); "
            f"nothing written"
        )
    return {
        "max_abs_diff": max(diffs.values()),
        "tolerance": tolerance,
        "per_batch": diffs,
        "images": sum(len(b) for b in batches.values()),
    }


# --------------------------------------------------------------------------------------------------- int8


def training_images(data_config: Any, info: ModelInfo, seed: int, count: int) -> np.ndarray:
    """``count`` (at most) images of the training split drawn at random with ``seed``: uint8 (N, H, W, C) at the
    model's size.

    Only the train split is built (``build_datasets(..., splits=("train",))``); SMOTE is switched off, so that only
    real images calibrate. The dataset's classes must be the model's.
    """
    built = build_datasets(
        dataclasses.replace(data_config, smote=None), info.img_size, info.in_chans, splits=("train",)
    )
    where = data_config.path or "the embedded synthetic dataset"
    if built.train is None or len(built.train) == 0:
        raise DataError(f"--calibration: {where} has no training images to calibrate on")
    _check_classes(built.class_names, info, f"--calibration: {where}")
    images = built.train.images
    return images[np.random.default_rng(seed).permutation(len(images))[:count]]


def load_test_split(data_config: Any, info: ModelInfo) -> Optional[tuple[np.ndarray, np.ndarray, str]]:
    """(uint8 images, labels, description) of the test split, or None when the data has none."""
    built = build_datasets(dataclasses.replace(data_config, smote=None), info.img_size, info.in_chans, splits=("test",))
    if built.test is None:
        return None
    _check_classes(built.class_names, info, f"test data {data_config.path or 'embedded synthetic dataset'}")
    return built.test.images, built.test.labels, built.description


def _check_classes(names: list[str], info: ModelInfo, where: str) -> None:
    """The data's classes must be the model's; a model that knows only label indices (trained on a MedMNIST file
    before hdkd knew MedMNIST's names) matches any data with as many classes."""
    indices_only = list(info.class_names) == [str(i) for i in range(len(names))]
    if list(names) != list(info.class_names) and not indices_only:
        raise DataError(f"{where}: classes {names} differ from the model's {list(info.class_names)}")


def quantize_and_compare(
    fp32_path: Path,
    int8_path: Path,
    info: ModelInfo,
    train_images: np.ndarray,
    calibration_images: int,
    per_channel: Optional[bool],
    evaluate_data: Any,
    latency_repeats: int,
    log: Log,
) -> dict[str, Any]:
    """Quantize (choosing per-channel scales on held-out training images when ``per_channel`` is None), then
    compare int8 with float: fidelity, test accuracy (reported only), file size and batch-1 latency."""
    calibration = to_input(train_images[:calibration_images], info).numpy()
    held_out = to_input(train_images[calibration_images : calibration_images + SELECTION_IMAGES], info).numpy()
    settings = [per_channel] if per_channel is not None else [True, False]
    fp32_session = cpu_session(fp32_path)
    reference = session_logits(fp32_session, held_out)
    candidates, logits = {}, {}
    for setting in settings:
        log(f"int8: calibrating on {len(calibration)} training images ({_scales(setting)} weight scales)")
        candidates[setting] = quantize_int8(
            fp32_path, int8_path.with_name(f"int8_{setting}.onnx"), calibration, INPUT_NAME, setting
        )
        logits[setting] = session_logits(cpu_session(candidates[setting]), held_out)
    chosen = settings[0] if len(settings) == 1 or len(held_out) == 0 else choose_per_channel(reference, logits)
    candidates[chosen].replace(int8_path)
    quantization = {
        "method": "onnxruntime static quantization (QDQ, uint8 activations, int8 weights, MinMax ranges)",
        "per_channel": chosen,
        "calibration_images": len(calibration),
        "calibration_split": "train",
        "per_channel_chosen_by": _chosen_by(per_channel, held_out),
    }
    set_metadata(int8_path, metadata(info, "int8", quantization))

    report: dict[str, Any] = {
        "quantization": quantization,
        "held_out_fidelity": {_scales(s): fidelity(reference, logits[s]) for s in settings} if len(held_out) else {},
    }
    report["size_bytes"] = {"float32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size}
    report["size_ratio"] = report["size_bytes"]["int8"] / report["size_bytes"]["float32"]
    report["latency_batch1"] = batch1_latency(fp32_path, int8_path, info, latency_repeats)
    report["test"] = test_comparison(fp32_path, int8_path, info, evaluate_data, log) if evaluate_data else None
    report["hdkd_version"] = __version__
    return report


def _scales(per_channel: bool) -> str:
    return "per-channel" if per_channel else "per-tensor"


def _chosen_by(per_channel: Optional[bool], held_out: np.ndarray) -> str:
    if per_channel is not None:
        return "set by the user"
    if len(held_out) == 0:
        return "default (no training images left to compare the settings on)"
    return (
        f"top-1 agreement with the float model, then logit RMSE, on {len(held_out)} held-out training images "
        f"(not the calibration images, never test)"
    )


def batch1_latency(fp32_path: Path, int8_path: Path, info: ModelInfo, repeats: int, threads: int = 1) -> dict[str, Any]:
    """Median batch-1 latency (ms) of both models in ONNX Runtime, interleaved runs, ``threads`` intra-op threads."""
    image = np.random.default_rng(0).standard_normal((1, info.in_chans, info.img_size, info.img_size), dtype=np.float32)
    sessions = {"float32": cpu_session(fp32_path, threads), "int8": cpu_session(int8_path, threads)}
    runs = {name: (lambda s=s: s.run(None, {INPUT_NAME: image})) for name, s in sessions.items()}
    medians = interleaved_latencies(runs, repeats)
    return {
        "float32_ms": medians["float32"] * 1e3,
        "int8_ms": medians["int8"] * 1e3,
        "speedup": medians["float32"] / medians["int8"],
        "threads": threads,
        "repeats": repeats,
        "how": "median of interleaved batch-1 runs in ONNX Runtime (CPU)",
    }


def test_comparison(
    fp32_path: Path, int8_path: Path, info: ModelInfo, data_config: Any, log: Log
) -> Optional[dict[str, Any]]:
    """Test-split metrics of the float and the int8 ONNX models (reported; nothing is chosen with them)."""
    split = load_test_split(data_config, info)
    if split is None:
        return None
    images, labels, description = split
    log(f"int8: evaluating float32 and int8 on {len(labels)} test images (reported only)")
    out: dict[str, Any] = {"data": description, "n": int(len(labels))}
    predictions = {}
    for name, path in (("float32", fp32_path), ("int8", int8_path)):
        session = cpu_session(path)
        logits = np.concatenate(
            [session_logits(session, to_input(images[i : i + 64], info).numpy()) for i in range(0, len(images), 64)]
        )
        metrics = classification_metrics(labels, softmax(logits), list(info.class_names))
        out[name] = {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
        predictions[name] = logits.argmax(1)
    out["accuracy_change_points"] = 100 * (out["int8"]["accuracy"] - out["float32"]["accuracy"])
    out["prediction_agreement"] = float(np.mean(predictions["float32"] == predictions["int8"]))
    return out


# ------------------------------------------------------------------------------ the pipeline report, the card


def pipeline_result(report: str | Path, checkpoint: str | Path) -> dict[str, Any]:
    """The entry of a pipeline's report.json for ``checkpoint``: {"role", "result", "meta"}.

    Matched by path: the entry's checkpoint is this file, or this file is <report folder>/<role>/<its name> (the
    pipeline's layout, still true when the run folder was moved).
    """
    report = Path(report)
    try:
        data = json.loads(report.read_text())
        results, meta = data["results"], data.get("meta") or {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--report: {report} is not a readable pipeline report.json ({exc})") from None
    target = Path(checkpoint).resolve()
    for role, result in results.items():
        recorded = Path(str(result.get("checkpoint") or ""))
        if recorded.name and target in (recorded.resolve(), (report.parent / role / recorded.name).resolve()):
            return {"role": role, "result": result, "meta": meta, "path": str(report)}
    raise ConfigError(f"--report: {report} has no result for {checkpoint} (roles {', '.join(results)})")


def metrics_with_intervals(result: dict[str, Any]) -> dict[str, Any]:
    """Test metrics of a report entry, each {"estimate", "low", "high"} where the bootstrap gave an interval."""
    metrics, intervals = result.get("metrics") or {}, ((result.get("bootstrap") or {}).get("metrics") or {})
    out: dict[str, Any] = {"split": "test", "n": metrics.get("n")}
    for name in HEADLINE_METRICS:
        if metrics.get(name) is None:
            continue
        ci = intervals.get(name) or {}
        out[name] = {"estimate": metrics[name], "low": ci.get("low"), "high": ci.get("high")}
    return out if len(out) > 2 else {}


def info_with_report(info: ModelInfo, pipeline: Optional[dict[str, Any]]) -> ModelInfo:
    """The checkpoint's ModelInfo with what the report adds where the checkpoint is silent (checkpoints of older
    pipelines): the temperature fitted on validation, the training data description and the headline test metrics,
    as flat numbers like those the pipeline now stores in the checkpoint."""
    if pipeline is None:
        return info
    scaling = pipeline["result"].get("temperature_scaling") or {}
    temperature = info.temperature
    if temperature is None and scaling.get("fitted_on") == "validation" and scaling.get("temperature"):
        temperature = float(scaling["temperature"])
    return dataclasses.replace(
        info,
        temperature=temperature,
        training_data=info.training_data or pipeline["meta"].get("dataset"),
        metrics=info.metrics or headline_metrics(pipeline["result"].get("metrics")),
    )


def model_card_facts(
    checkpoint,
    output: Path,
    torch_model: TorchClassifier,
    info: ModelInfo,
    opset: int,
    check: dict,
    pipeline: Optional[dict],
    int8_report: Optional[dict],
    size: int,
) -> dict[str, Any]:
    """Everything the model card states, computed here; `render_model_card` only lays it out."""
    result, meta = (pipeline or {}).get("result") or {}, (pipeline or {}).get("meta") or {}
    scaling = result.get("temperature_scaling") or {}
    calibration = None
    if info.temperature is not None:
        calibration = {
            "temperature": info.temperature,
            "fitted_on": scaling.get("fitted_on", "validation"),
            "n_val": scaling.get("n_val"),
            "test_ece_before": (scaling.get("test_before") or {}).get("ece"),
            "test_ece_after": (scaling.get("test_after") or {}).get("ece"),
            "test_nll_before": (scaling.get("test_before") or {}).get("nll"),
            "test_nll_after": (scaling.get("test_after") or {}).get("nll"),
        }
    return {
        "file": output.name,
        "format": f"ONNX (opset {opset})",
        "size_bytes": size,
        "precision": "int8" if int8_report else "float32",
        "model": {
            "name": info.model_name,
            "role": info.role,
            "params": count_params(torch_model.model),
            "checkpoint": str(checkpoint),
            "hdkd_version": info.hdkd_version,
        },
        "classes": list(info.class_names),
        "input": {
            "name": INPUT_NAME,
            "output": OUTPUT_NAME,
            "img_size": info.img_size,
            "in_chans": info.in_chans,
            "mean": list(info.mean),
            "std": list(info.std),
        },
        "training_data": info.training_data,
        "class_counts": meta.get("class_counts"),
        "splits": meta.get("splits"),
        "selection": meta.get("selection"),
        "metrics": metrics_with_intervals(result) if pipeline else info.metrics,
        "metrics_source": _metrics_source(info, pipeline),
        "confidence_intervals": meta.get("confidence_intervals"),
        "calibration": calibration,
        "check": check,
        "int8": int8_report,
    }


def _metrics_source(info: ModelInfo, pipeline: Optional[dict]) -> Optional[str]:
    if pipeline is not None:
        return f"{pipeline['path']} ({pipeline['role']}, the PyTorch checkpoint)"
    return "the checkpoint's metadata" if info.metrics else None
