"""Why a model decided what it did: saliency maps for one image at the model's input size.

Two methods, both returning float maps in [0, 1] with the image's height and width (min-max scaled per map):

- Grad-CAM (Selvaraju et al., 2017) on the last convolutional stage (``model.stages[-1]`` for HDKD models: the
  last entry of timm's ``feature_info``), computed by the maintained ``pytorch_grad_cam`` library. The explained
  score is the logit of the target class as the model returns it in eval mode: for the distilled ``hdkd`` model
  that is the average of its class-token and distillation-token heads, as at inference.
- Attention rollout (Abnar & Zuidema, 2020) through the DFLT of the students: per block the attention matrix is
  recomputed from the output of its ``qkv`` projection (a forward hook; the model is not modified), averaged over
  heads, mixed with the identity for the residual (0.5 A + 0.5 I), and the blocks' matrices are multiplied from the
  first to the last. A prefix token's row over the patch tokens, reshaped to the patch grid and upsampled
  (bilinear) to the image, is its map. Rollout does not depend on the class: ``--target`` changes only Grad-CAM.
  ``rollout`` is the class token's map; for ``hdkd`` it is the map of the mean of the class and distillation
  tokens' rows (its two heads are averaged too), with ``rollout_cls`` and ``rollout_dist`` beside it.

Both methods hook the model for the duration of a call, and a hook sees every forward pass of that model object:
`explain_image` therefore holds `EXPLAIN_LOCK`, and a server that also predicts with the same model object in
other threads should hold it around those predictions too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..errors import ConfigError
from ..evaluation.inference import Classifier, ModelInfo, TorchClassifier, softmax, to_input

METHODS = ("gradcam", "rollout")
EXPLAIN_LOCK = threading.RLock()  # see the module docstring
Target = Union[str, int, None]


@dataclass
class Explanation:
    """One image explained: the model's prediction, the class the maps explain, and the maps (H x W, [0, 1])."""

    predicted: int
    target: int
    probabilities: np.ndarray  # (classes,), calibrated with the model's temperature when it has one
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def torch_model(model_or_classifier: Union[nn.Module, Classifier]) -> nn.Module:
    """The PyTorch model behind a classifier; an ONNX export cannot be explained (no gradients, no hooks)."""
    if isinstance(model_or_classifier, TorchClassifier):
        return model_or_classifier.model
    if isinstance(model_or_classifier, nn.Module):
        return model_or_classifier
    raise ConfigError(
        f"explanations need the PyTorch model (a .safetensors checkpoint); got "
        f"{type(model_or_classifier).__name__} (an exported ONNX model cannot be explained)"
    )


def resolve_target(target: Target, info: ModelInfo) -> Optional[int]:
    """A class name (or index) -> its index; None stays None (explain the predicted class)."""
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if 0 <= int(target) < info.num_classes:
            return int(target)
    elif str(target) in info.class_names:
        return info.class_names.index(str(target))
    raise ConfigError(f"--target: unknown class {target!r}; the model's classes are {', '.join(info.class_names)}")


def has_dflt(model: nn.Module) -> bool:
    return getattr(model, "head_type", None) == "dflt" and hasattr(model, "blocks")


def available_methods(model: nn.Module) -> tuple[str, ...]:
    return METHODS if has_dflt(model) else ("gradcam",)


def check_methods(methods: Optional[Sequence[str]], model: nn.Module, model_name: str) -> tuple[str, ...]:
    """The methods to run: all the model supports when None; a method it cannot do is a ConfigError."""
    if methods is None:
        return available_methods(model)
    for method in methods:
        if method not in METHODS:
            raise ConfigError(f"--method: unknown {method!r}; choose from {', '.join(METHODS)}")
        if method not in available_methods(model):
            raise ConfigError(
                f"--method {method}: needs a model with a transformer head (hdkd_student, hdkd); {model_name} has none"
            )
    return tuple(dict.fromkeys(methods))


# ------------------------------------------------------------------------------------------------------- Grad-CAM
def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage: ``model.stages[-1]`` for HDKD models, timm's last feature module otherwise."""
    info = getattr(model, "feature_info", None)
    if not info or not isinstance(info, (list, tuple)) or "module" not in info[-1]:
        raise ConfigError(f"Grad-CAM: {type(model).__name__} does not name its feature stages (timm feature_info)")
    return model.get_submodule(info[-1]["module"])


def gradcam_maps(model: nn.Module, inputs: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of normalised inputs for one class per input, by pytorch_grad_cam.

    The input is made to require gradients so that the stage's output has a gradient even when the model's
    parameters are frozen, as `TorchClassifier` leaves them."""
    with GradCAM(model, [gradcam_layer(model)]) as cam:
        maps = cam(inputs.detach().requires_grad_(True), [ClassifierOutputTarget(int(t)) for t in targets])
    return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- attention rollout
def _attention_of(attn: nn.Module, qkv: torch.Tensor) -> torch.Tensor:
    """Softmax attention probabilities (B, heads, N, N) from the output of ``attn.qkv``, as `Attention` computes
    them inside scaled_dot_product_attention (scale head_dim ** -0.5)."""
    b, n, _ = qkv.shape
    q, k, _ = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return torch.softmax((q @ k.transpose(-2, -1)) * attn.head_dim**-0.5, dim=-1)


@torch.no_grad()
def attention_matrices(model: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Every DFLT block's attention (B, heads, N, N), captured by forward hooks on the blocks' ``qkv``."""
    captured: list[torch.Tensor] = []
    hooks = [
        blk.attn.qkv.register_forward_hook(
            lambda module, args, output, attn=blk.attn: captured.append(_attention_of(attn, output.float()))
        )
        for blk in model.blocks
    ]
    try:
        model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (B, N, N) of per-block attentions (B, heads, N, N) or (B, N, N), first block first:
    heads averaged, 0.5 A + 0.5 I, rows renormalised, multiplied so that the last block is on the left."""
    result = None
    for a in attentions:
        a = a.double()
        a = a.mean(1) if a.dim() == 4 else a
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    if result is None:
        raise ValueError("rollout needs at least one attention matrix")
    return result


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) map of (N, H, W) to [0, 1]; a constant map becomes all 0."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return torch.where(high > low, (maps - low) / (high - low).clamp_min(1e-12), torch.zeros_like(maps))


def token_maps(rolled: torch.Tensor, num_prefix: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The prefix tokens' rows of a rollout (B, N, N) over the patch tokens, as (B, H, W) maps in [0, 1]."""
    patches = rolled[:, :num_prefix, num_prefix:]  # (B, prefix, patches)
    grid = int(round(patches.shape[-1] ** 0.5))
    if grid * grid != patches.shape[-1]:
        raise ValueError(f"{patches.shape[-1]} patch tokens do not form a square grid")
    if num_prefix == 2:
        rows = {"rollout": patches.mean(1), "rollout_cls": patches[:, 0], "rollout_dist": patches[:, 1]}
    else:
        rows = {"rollout": patches[:, 0]}
    out = {}
    for name, row in rows.items():
        up = F.interpolate(row.reshape(-1, 1, grid, grid), size=size, mode="bilinear", align_corners=False)
        out[name] = _minmax(up[:, 0])
    return out


def rollout_maps(model: nn.Module, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """Rollout maps (N, H, W) in [0, 1] of normalised inputs: ``rollout`` (+ ``rollout_cls``, ``rollout_dist``)."""
    if not has_dflt(model):
        raise ConfigError(f"attention rollout needs a model with a transformer head; {type(model).__name__} has none")
    maps = token_maps(rollout(attention_matrices(model, inputs)), model.num_prefix_tokens, tuple(inputs.shape[-2:]))
    return {name: m.float().cpu().numpy() for name, m in maps.items()}


# ------------------------------------------------------------------------------------------------------- one image
def explain_image(
    model_or_classifier: Union[nn.Module, Classifier],
    info: ModelInfo,
    image: np.ndarray,
    target: Target = None,
    methods: Optional[Sequence[str]] = None,
) -> Explanation:
    """Predict one uint8 image already at the model's size (`read_model_image` / `fit_array`) and explain the
    target class (the predicted one when ``target`` is None) with ``methods`` (all the model supports: None)."""
    model = torch_model(model_or_classifier)
    methods = check_methods(methods, model, info.model_name)
    target_index = resolve_target(target, info)
    expected = (info.img_size, info.img_size, info.in_chans)
    if np.shape(image) != expected:
        raise ValueError(f"image must be uint8 {expected} (read_model_image / fit_array), got {np.shape(image)}")
    inputs = to_input(np.array(image, dtype=np.uint8)[None], info).to(next(model.parameters()).device)
    with EXPLAIN_LOCK:
        model.eval()
        with torch.no_grad():
            logits = model(inputs).float().cpu().numpy()
        predicted = int(logits[0].argmax())
        target_index = predicted if target_index is None else target_index
        maps: dict[str, np.ndarray] = {}
        if "gradcam" in methods:
            maps["gradcam"] = gradcam_maps(model, inputs, [target_index])[0]
        if "rollout" in methods:
            maps.update({name: m[0] for name, m in rollout_maps(model, inputs).items()})
    return Explanation(predicted, target_index, softmax(logits, info.temperature)[0], maps)


def explain_array(
    model_or_classifier: Union[nn.Module, Classifier],
    info: ModelInfo,
    image: np.ndarray,
    target: Target = None,
    methods: Optional[Sequence[str]] = None,
) -> dict[str, np.ndarray]:
    """The maps of `explain_image` alone: name -> float32 (H, W) in [0, 1] (what the web app overlays)."""
    return explain_image(model_or_classifier, info, image, target, methods).maps
