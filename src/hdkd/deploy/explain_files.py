"""`hdkd explain CHECKPOINT IMAGE... -o DIR`: Grad-CAM and attention-rollout overlays, and explanations.json.

Per image ``<stem>_gradcam.png`` and, for the students, ``<stem>_rollout.png`` (for ``hdkd`` also
``<stem>_rollout_cls.png`` and ``<stem>_rollout_dist.png``): the map over the image as the model saw it (its input
size), enlarged to a viewable size. ``explanations.json`` holds per image the predicted class, the probabilities,
the class explained and the files. An image that cannot be read gets an ``error`` entry, the others are explained
and the exit status is 1. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError, DataError
from ..evaluation.inference import ModelInfo, TorchClassifier, read_model_image
from ..io import atomic_write, atomic_write_text, remove_stale
from ..reporting.overlay import render_overlay
from .explain import check_methods, explain_image, resolve_target, torch_model
from .loading import load_classifier

REPORT_NAME = "explanations.json"


def load_explainable(path: str | Path, device: str = "auto") -> TorchClassifier:
    """The checkpoint as a TorchClassifier; an ONNX export is refused (explanations need gradients and hooks)."""
    path = Path(path)
    if path.suffix == ".onnx":
        raise ConfigError(
            f"{path}: an ONNX export cannot be explained (Grad-CAM and rollout need the PyTorch "
            f"model); pass the .safetensors checkpoint it was exported from"
        )
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise ConfigError(f"--device: unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is available here; use --device cpu")
    classifier = load_classifier(path, device)
    torch_model(classifier)  # a classifier without a PyTorch model is refused with a clear message
    return classifier


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 2
    while stem in used:
        stem, n = f"{path.stem}-{n}", n + 1
    used.add(stem)
    return stem


def explain_file(
    classifier: TorchClassifier, path: Path, stem: str, target: Optional[str], methods: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One image's explanations.json entry and its PNG files (name -> bytes), not yet written."""
    info: ModelInfo = classifier.info
    image = read_model_image(path, info)
    result = explain_image(classifier, info, image, target, methods)
    pngs = {f"{stem}_{name}.png": render_overlay(image, saliency) for name, saliency in result.maps.items()}
    entry = {
        "path": str(path),
        "predicted": info.class_names[result.predicted],
        "probabilities": {c: float(p) for c, p in zip(info.class_names, result.probabilities, strict=True)},
        "target": info.class_names[result.target],
        "files": {name: f"{stem}_{name}.png" for name in result.maps},
        "error": None,
    }
    return entry, pngs


def run_explain(args: argparse.Namespace) -> int:
    """`hdkd explain`'s work, given its parsed options (see ``hdkd.commands.explain``)."""
    classifier = load_explainable(args.checkpoint, args.device)
    info = classifier.info
    methods = check_methods(args.method, classifier.model, info.model_name)
    resolve_target(args.target, info)  # an unknown class fails before any image is read
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output: {out} exists and is not a folder")
    entries, files, used, failed = [], {}, set(), 0
    for name in args.images:
        path = Path(name)
        try:
            if path.is_dir():
                raise DataError(f"{path}: is a folder; pass image files")
            entry, pngs = explain_file(classifier, path, _unique_stem(path, used), args.target, methods)
        except DataError as exc:
            failed += 1
            print(f"hdkd: warning: {exc}", file=sys.stderr)
            entries.append({"path": str(path), "error": str(exc)})
            continue
        entries.append(entry)
        files.update(pngs)
        print(
            f"{path}: predicted {entry['predicted']} ({entry['probabilities'][entry['predicted']]:.3f}), "
            f"explained {entry['target']}"
        )
    remove_stale(out, (REPORT_NAME,))  # new overlays never stand beside an earlier run's explanations.json
    for filename, data in files.items():
        atomic_write(out / filename, lambda f, data=data: f.write(data))
    report = {
        "checkpoint": str(args.checkpoint),
        "model": info.model_name,
        "class_names": list(info.class_names),
        "img_size": info.img_size,
        "calibrated": info.temperature is not None,
        "methods": list(methods),
        "images": entries,
    }
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2))
    print(
        f"{len(entries) - failed} of {len(entries)} images explained; {len(files)} overlays and {REPORT_NAME} in {out}"
    )
    return 1 if failed else 0
