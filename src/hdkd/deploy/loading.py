"""One call from a model file to a `Classifier`: a `.safetensors` checkpoint (PyTorch) or an exported `.onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from hdkd.deploy.onnx_classifier import OnnxClassifier
from hdkd.errors import CheckpointError
from hdkd.evaluation.inference import Classifier, TorchClassifier

MODEL_SUFFIXES = (".safetensors", ".onnx")


def load_classifier(path: str | Path, device: str = "auto", threads: Optional[int] = None) -> Classifier:
    """The model in `path`, ready for inference; ``device`` applies to checkpoints (ONNX runs on the CPU)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxClassifier(path, threads)
    if path.suffix == ".safetensors":
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return TorchClassifier.from_checkpoint(path, device)
    raise CheckpointError(
        f"{path}: expected a .safetensors checkpoint or an exported .onnx model, got {path.suffix or 'no suffix'!r}"
    )
