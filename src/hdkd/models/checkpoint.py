"""The one checkpoint format, and strict loading of the authors' `.pth` state dicts.

Weights are stored as `.safetensors` with the model's construction arguments in the metadata, so a checkpoint can
rebuild its own model (`create_model_from_checkpoint`). `.pth`/`.pt` files are read with `weights_only=True`
(never unrestricted pickle); the authors' parameter names are mapped onto ours and loading is always strict, so a
checkpoint of another architecture or class count is refused with a message saying which.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from hdkd.errors import CheckpointError
from hdkd.io import atomic_write
from hdkd.models.factory import create_model

FORMAT = "hdkd-checkpoint-v1"

# Authors' names (HDKD_SPEC / official_state_dict_keys.txt) -> ours, applied in order, first match wins.
_OFFICIAL_RENAMES = [
    (r"^stage(\d)\.(\d+)\.0\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.conv."),
    (r"^stage(\d)\.(\d+)\.1\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.bn."),
    (r"^stage(\d)\.(\d+)\.proj\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.proj."),
    (r"^stage(\d)\.(\d+)\.conv\.norm\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.pre_norm."),
    (
        r"^stage(\d)\.(\d+)\.conv\.fn\.6\.spatial_attention\.conv1\.",
        lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.attn.spatial.conv.",
    ),
    (
        r"^stage(\d)\.(\d+)\.conv\.fn\.6\.channel_attention\.fc\.0\.",
        lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.attn.channel.fc1.",
    ),
    (
        r"^stage(\d)\.(\d+)\.conv\.fn\.6\.channel_attention\.fc\.2\.",
        lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.attn.channel.fc2.",
    ),
    (
        r"^stage(\d)\.(\d+)\.conv\.fn\.([0-9])\.",
        lambda m: (
            f"stages.{int(m[1]) - 1}.{m[2]}."
            + {
                "0": "conv_expand",
                "1": "bn_expand",
                "3": "conv_dw",
                "4": "bn_dw",
                "7": "conv_project",
                "8": "bn_project",
            }.get(m[3], f"UNKNOWN_fn{m[3]}")
            + "."
        ),
    ),
    (r"^fn1\.", lambda m: "head_hidden."),
    (r"^classifier\.", lambda m: "head."),
    (r"^head_cls\.", lambda m: "head."),
    (r"^head_distill\.", lambda m: "head_dist."),
    (r"^DFLT_module\.pos_embedding$", lambda m: "pos_embed"),
    (r"^DFLT_module\.cls_token$", lambda m: "cls_token"),
    (r"^DFLT_module\.distill_token$", lambda m: "dist_token"),
    (r"^DFLT_module\.to_patch_embedding\.1\.", lambda m: "patch_embed.norm_in."),
    (r"^DFLT_module\.to_patch_embedding\.2\.", lambda m: "patch_embed.proj."),
    (r"^DFLT_module\.to_patch_embedding\.3\.", lambda m: "patch_embed.norm_out."),
    (r"^DFLT_module\.transformer\.norm\.", lambda m: "norm."),
    (r"^DFLT_module\.transformer\.layers\.(\d+)\.0\.norm\.", lambda m: f"blocks.{m[1]}.norm."),
    (r"^DFLT_module\.transformer\.layers\.(\d+)\.0\.to_qkv\.", lambda m: f"blocks.{m[1]}.attn.qkv."),
    (r"^DFLT_module\.transformer\.layers\.(\d+)\.0\.to_out\.0\.", lambda m: f"blocks.{m[1]}.attn.proj."),
    (r"^DFLT_module\.transformer\.layers\.(\d+)\.1\.net\.0\.", lambda m: f"blocks.{m[1]}.mlp.fc1."),
    (r"^DFLT_module\.transformer\.layers\.(\d+)\.1\.net\.3\.", lambda m: f"blocks.{m[1]}.mlp.fc2."),
]
_RENAMES = [(re.compile(pattern), repl) for pattern, repl in _OFFICIAL_RENAMES]


def is_official_state_dict(state_dict: dict[str, Any]) -> bool:
    return any(k.startswith(("stage1.", "DFLT_module.")) for k in state_dict)


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' parameters to ours; unknown names are kept so strict loading reports them."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _RENAMES:
            m = pattern.match(key)
            if m:
                new = pattern.sub(repl, key, count=1)
                break
        out[new] = value
    return out


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    model_name: str,
    model_args: dict[str, Any],
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Weights as safetensors; `model_name` + `model_args` (JSON) let `create_model_from_checkpoint` rebuild it."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "model_name": model_name,
        "model_args": json.dumps(model_args),
        "extra": json.dumps(extra or {}),
    }
    data = save(state, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    out: dict[str, Any] = dict(meta)
    for key in ("model_args", "extra"):
        if key in out:
            out[key] = json.loads(out[key])
    return out


def update_checkpoint_extra(path: str | Path, **values: Any) -> Path:
    """Add ``values`` to a project checkpoint's ``extra`` metadata (e.g. the temperature fitted on validation after
    training), rewriting the file atomically; the weights are unchanged."""
    meta = read_checkpoint_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an hdkd checkpoint with model metadata")
    state = load_file(str(path))
    metadata = {
        "format": FORMAT,
        "model_name": meta["model_name"],
        "model_args": json.dumps(meta["model_args"]),
        "extra": json.dumps({**(meta.get("extra") or {}), **values}),
    }
    data = save(state, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    return Path(path)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Any supported file -> a flat state dict in our names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad or unsafe pickle
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: cannot be loaded as a weights-only PyTorch checkpoint ({first})") from None
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    if is_official_state_dict(state):
        state = convert_official_state_dict(state)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _num_classes_of(state: dict[str, torch.Tensor]) -> Optional[int]:
    w = state.get("head.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights strictly into `model`; refuse, naming the reason, anything that does not fit exactly."""
    path = Path(path)
    state = read_state_dict(path)
    own = model.state_dict()
    ckpt_classes, model_classes = _num_classes_of(state), _num_classes_of(own)
    if ckpt_classes is not None and model_classes is not None and ckpt_classes != model_classes:
        raise CheckpointError(
            f"{path}: checkpoint has {ckpt_classes} classes but the model has {model_classes} "
            f"(head.weight {tuple(state['head.weight'].shape)} vs {tuple(own['head.weight'].shape)})"
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        meta = read_checkpoint_metadata(path)
        what = f" (it was saved from {meta['model_name']})" if meta.get("model_name") else ""
        name = getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(f"{path}: checkpoint does not match the {name} architecture{what}: {'; '.join(parts)}")
    bad = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(
            f"{path}: {len(bad)} tensors have the wrong shape for this model, e.g. {k} is {got}, "
            f"the model expects {want} (different img_size, widths or in_chans?)"
        )
    model.load_state_dict(state, strict=True)
    return model


def create_model_from_checkpoint(path: str | Path, **overrides) -> nn.Module:
    """Rebuild the model a project checkpoint was saved from, and load its weights."""

    meta = read_checkpoint_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an hdkd checkpoint with model metadata; create the model yourself and "
            f"use hdkd.load_checkpoint(model, path)"
        )
    args = {**meta["model_args"], **overrides}
    model = create_model(meta["model_name"], **args)
    return load_checkpoint(model, path)
