"""An exported ONNX model behind the `Classifier` interface, run by ONNX Runtime on the CPU.

The graph takes ``images`` (float32, N x in_chans x H x W, normalised as in training) and returns ``logits``; its
metadata (`ModelInfo.to_metadata`) says how to prepare the images, so nothing else is needed to use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort
import torch

from hdkd.errors import CheckpointError
from hdkd.evaluation.inference import Classifier, ModelInfo

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def onnx_session(path: str | Path, threads: Optional[int] = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session; an unreadable or non-ONNX file is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...) for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a loadable ONNX model ({first})") from None


class OnnxClassifier(Classifier):
    def __init__(self, path: str | Path, threads: Optional[int] = None):
        self.path = Path(path)
        self.session = onnx_session(path, threads)
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, where=str(path))
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, inputs: torch.Tensor) -> np.ndarray:
        array = inputs.detach().cpu().numpy().astype(np.float32, copy=False)
        return np.asarray(self.session.run(None, {self.input_name: array})[0], dtype=np.float32)
