"""int8 static quantization of an exported float model with ONNX Runtime's own tools, calibrated on training images.

Why these choices (measured on the HDKD student, 2-core AMD EPYC with AVX-512 VNNI, ORT 1.32, 1 thread):
- static quantization (activation ranges observed on calibration images), not dynamic: ORT's dynamic quantization
  covers MatMul/Gemm only and would leave the convolutions, most of an HDKD model's work, in float;
- QDQ format (ORT's recommended format), every operator ORT can quantize (its default);
- uint8 activations with int8 weights (U8S8): ORT's x86 kernels run it 2 to 4 times faster than int8 activations
  (S8S8) here, for the same agreement with the float model. (On CPUs without VNNI, ORT's U8S8 kernels may
  saturate; there ``reduce_range`` would be the remedy.)
- `quant_pre_process` first (ONNX shape inference and ORT's graph optimisations such as Conv+BatchNorm fusion), as
  ORT recommends, without its symbolic shape inference, which does not know opset 20's Gelu;
- weight scales per output channel or per tensor: per channel usually keeps more accuracy (depthwise convolutions
  have very different ranges per channel) but not always; `choose_per_channel` compares both on held-out
  *training* images by agreement with the float model, so the test split never selects anything.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from hdkd.errors import CheckpointError

CALIBRATION_BATCH = 32


class _DropPerChannelAxisNotes(logging.Filter):
    """ORT warns once per 1-D norm weight (BatchNorm in front of a conv, LayerNorm) that it has no channel axis and
    gets one scale instead: expected for these models, and noise on the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is out-of-range for weight" not in record.getMessage()


@contextlib.contextmanager
def _quiet_axis_notes():
    root, note_filter = logging.getLogger(), _DropPerChannelAxisNotes()
    root.addFilter(note_filter)
    try:
        yield
    finally:
        root.removeFilter(note_filter)


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds normalised float32 inputs (N, C, H, W) to ORT's calibrator in batches (the graph's batch is dynamic)."""

    def __init__(self, inputs: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH):
        self.inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self.position = 0

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self.position >= len(self.inputs):
            return None
        batch = self.inputs[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.position = 0


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration_inputs: np.ndarray, input_name: str, per_channel: bool
) -> Path:
    """Quantize the float model in ``fp32_path`` into ``out_path`` (QDQ, U8S8, MinMax ranges on the inputs)."""
    if len(calibration_inputs) == 0:
        raise ValueError("int8 calibration needs at least one image")
    with tempfile.TemporaryDirectory(prefix="hdkd-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # ORT's pre-processing raises its own types; the float graph is then unusable here
            raise CheckpointError(f"{fp32_path}: ONNX Runtime's quantization pre-processing failed ({exc})") from None
        with _quiet_axis_notes():
            quantize_static(
                str(prepared),
                str(out_path),
                ArrayCalibrationReader(calibration_inputs, input_name),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    return out_path


def cpu_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_logits(session: ort.InferenceSession, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: np.ascontiguousarray(inputs[i : i + batch_size], dtype=np.float32)})[0]
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(chunks).astype(np.float32)


def fidelity(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """How closely ``logits`` follow the float model's ``reference`` logits: top-1 agreement and logit errors."""
    diff = np.asarray(logits, np.float64) - np.asarray(reference, np.float64)
    return {
        "n": int(len(reference)),
        "top1_agreement": float(np.mean(reference.argmax(1) == logits.argmax(1))) if len(reference) else 0.0,
        "logit_rmse": float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0,
        "logit_max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0,
    }


def choose_per_channel(reference: np.ndarray, candidates: dict[bool, np.ndarray]) -> bool:
    """The per-channel setting whose logits agree best with the float model (top-1 agreement, then logit RMSE)."""
    scores = {setting: fidelity(reference, logits) for setting, logits in candidates.items()}
    return max(scores, key=lambda s: (scores[s]["top1_agreement"], -scores[s]["logit_rmse"], s))


def interleaved_latencies(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each run, sampled round-robin so that machine noise hits all of them alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}
