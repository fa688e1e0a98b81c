"""The one inference path for a trained model: what `hdkd predict`, `export`, `explain` and `serve` share.

A `ModelInfo` is everything a model needs besides its weights to be used on a new image: the class names, the
input size and channels, the normalisation, the temperature fitted on validation (if any) and where the model came
from. It is read from a checkpoint's metadata (`ModelInfo.from_checkpoint`) and written into an exported model's
metadata as flat strings (`to_metadata` / `from_metadata`), so an ONNX file describes itself to ONNX Runtime alone.

An image reaches a model exactly as in training: decoded to uint8 (H, W, in_chans) (`hdkd.data.imageio`), resized
to img_size x img_size with PIL bilinear (aspect ratio ignored, as the authors do), scaled to [0, 1] and normalised
with the mean and std of the model's channels (`hdkd.data.transforms.eval_transform`).

A `Classifier` turns such images into logits and calibrated probabilities; `TorchClassifier` runs a checkpoint
(the ONNX Runtime one lives in `hdkd.deploy`, which may import this module but not the other way round).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from hdkd.data.imageio import load_image, resize_image, to_channels
from hdkd.data.transforms import eval_transform, mean_std
from hdkd.errors import CheckpointError
from hdkd.models import create_model_from_checkpoint, read_checkpoint_metadata
from hdkd.models.fuse import fold_batchnorm
from hdkd.runtime import reuse_freed_memory
from hdkd.version import __version__

METADATA_PREFIX = "hdkd."
_JSON_FIELDS = ("class_names", "mean", "std", "metrics")


@dataclass(frozen=True)
class ModelInfo:
    """What a trained model needs besides its weights to be used on a new image (see the module docstring)."""

    model_name: str
    class_names: tuple[str, ...]
    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    temperature: Optional[float] = None  # fitted on validation by the pipeline; None: uncalibrated
    role: Optional[str] = None
    training_data: Optional[str] = None
    hdkd_version: str = __version__
    metrics: dict[str, Any] = field(default_factory=dict)  # headline test metrics, where the pipeline knew them

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "ModelInfo":
        meta = read_checkpoint_metadata(path)
        if not meta.get("model_name"):
            raise CheckpointError(
                f"{path}: not an hdkd checkpoint (no model metadata); use the best.safetensors "
                f"or last.safetensors written by `hdkd train` or `hdkd pipeline`"
            )
        extra, args = meta.get("extra") or {}, meta.get("model_args") or {}
        in_chans = int(extra.get("in_chans") or args.get("in_chans") or 3)
        names = extra.get("class_names") or [str(i) for i in range(int(args.get("num_classes", 0)))]
        mean, std = mean_std(in_chans)
        temperature = extra.get("temperature")
        return cls(
            model_name=meta["model_name"],
            class_names=tuple(str(n) for n in names),
            img_size=int(extra.get("img_size") or args.get("img_size") or 224),
            in_chans=in_chans,
            mean=tuple(mean),
            std=tuple(std),
            temperature=None if temperature is None else float(temperature),
            role=extra.get("role"),
            training_data=extra.get("data"),
            hdkd_version=str(extra.get("hdkd_version") or __version__),
            metrics=dict(extra.get("metrics") or {}),
        )

    def to_metadata(self) -> dict[str, str]:
        """Flat ``hdkd.<field>`` -> string pairs (ONNX metadata_props); lists and dicts as JSON, None as ""."""
        out = {}
        for name, value in self.__dict__.items():
            if name in _JSON_FIELDS:
                text = json.dumps(list(value) if isinstance(value, tuple) else value)
            else:
                text = "" if value is None else str(value)
            out[METADATA_PREFIX + name] = text
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], where: str = "model") -> "ModelInfo":
        values = {k[len(METADATA_PREFIX) :]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}
        required = ("model_name", "class_names", "img_size", "in_chans", "mean", "std")
        missing = [k for k in required if not values.get(k)]
        if missing:
            raise CheckpointError(
                f"{where}: no hdkd metadata ({', '.join(METADATA_PREFIX + k for k in missing)} "
                f"missing); export models with `hdkd export`"
            )
        try:
            return cls(
                model_name=values["model_name"],
                class_names=tuple(json.loads(values["class_names"])),
                img_size=int(values["img_size"]),
                in_chans=int(values["in_chans"]),
                mean=tuple(json.loads(values["mean"])),
                std=tuple(json.loads(values["std"])),
                temperature=float(values["temperature"]) if values.get("temperature") else None,
                role=values.get("role") or None,
                training_data=values.get("training_data") or None,
                hdkd_version=values.get("hdkd_version") or "unknown",
                metrics=json.loads(values["metrics"]) if values.get("metrics") else {},
            )
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{where}: malformed hdkd metadata ({exc})") from None


def read_model_image(path: str | Path, info: ModelInfo) -> np.ndarray:
    """An image file as the model's training saw it: uint8 (img_size, img_size, in_chans)."""
    return resize_image(load_image(path, info.in_chans), info.img_size)


def fit_array(array: np.ndarray, info: ModelInfo) -> np.ndarray:
    """A decoded uint8 (H, W) or (H, W, 1|3) array -> uint8 (img_size, img_size, in_chans), as `read_model_image`."""
    return resize_image(to_channels(np.asarray(array, dtype=np.uint8), info.in_chans), info.img_size)


def to_input(images: Sequence[np.ndarray] | np.ndarray, info: ModelInfo) -> torch.Tensor:
    """uint8 (N, img_size, img_size, in_chans) -> the normalised float32 (N, in_chans, H, W) the model takes."""
    batch = torch.from_numpy(np.array(np.stack(list(images)) if not isinstance(images, np.ndarray) else images))
    return eval_transform(info.in_chans)(batch.permute(0, 3, 1, 2))


def softmax(logits: np.ndarray, temperature: Optional[float] = None) -> np.ndarray:
    """Softmax of float logits (N, C), divided by ``temperature`` first when given; float64."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature is not None:
        z = z / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Classifier(ABC):
    """A trained model behind one interface: logits and (calibrated) probabilities of prepared images."""

    info: ModelInfo

    @abstractmethod
    def logits(self, inputs: torch.Tensor) -> np.ndarray:
        """Float logits (N, classes) of normalised inputs (N, in_chans, H, W), as the model computes them."""

    def probabilities(
        self, images: Sequence[np.ndarray] | np.ndarray, calibrated: bool = True, batch_size: int = 64
    ) -> np.ndarray:
        """Softmax probabilities (N, classes) of uint8 images already at the model's size (`read_model_image`);
        divided by the model's temperature first when ``calibrated`` and it has one."""
        images = list(images)
        temperature = self.info.temperature if calibrated else None
        chunks = [
            softmax(self.logits(to_input(images[i : i + batch_size], self.info)), temperature)
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.info.num_classes))


def prepare_for_inference(
    model: nn.Module,
    fold_bn: bool = True,
    channels_last: Optional[bool] = None,
    compile: bool = False,
    reuse_memory: bool = True,
) -> nn.Module:
    """The model as inference runs it, in eval mode with no gradients; the same outputs up to float rounding.

    ``fold_bn`` folds the BatchNorms into the convs (on a copy; `hdkd.models.fuse.fold_batchnorm`); ``channels_last``
    (default: when the model is on the CPU, where it is PyTorch's fastest convolution layout) stores the weights
    NHWC, so every feature map is computed NHWC whatever the input's layout; ``compile`` wraps it in torch.compile
    (pays a compile on the first batch of each input shape); ``reuse_memory`` (on the CPU) keeps freed activations
    in the process for the next call (`hdkd.runtime.reuse_freed_memory`, process-wide). Without ``fold_bn`` the model
    itself is changed."""
    model = fold_batchnorm(model) if fold_bn else model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and reuse_memory:
        reuse_freed_memory()
    if on_cpu if channels_last is None else channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


class TorchClassifier(Classifier):
    """A PyTorch model with its `ModelInfo` (normally from a checkpoint: `TorchClassifier.from_checkpoint`), run on
    the inference path (`prepare_for_inference`) without autograd."""

    def __init__(
        self,
        model: nn.Module,
        info: ModelInfo,
        device: torch.device | str = "cpu",
        fold_bn: bool = True,
        channels_last: Optional[bool] = None,
        compile: bool = False,
    ):
        self.device = torch.device(device)
        self.model = prepare_for_inference(model.to(self.device), fold_bn, channels_last, compile)
        self.info = info

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: torch.device | str = "cpu", fold_bn: bool = True
    ) -> "TorchClassifier":
        info = ModelInfo.from_checkpoint(path)
        return cls(create_model_from_checkpoint(path), info, device, fold_bn)

    @torch.inference_mode()
    def logits(self, inputs: torch.Tensor) -> np.ndarray:
        return self.model(inputs.to(self.device)).float().cpu().numpy()
