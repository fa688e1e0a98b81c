"""The one checkpoint format, and strict loading of the authors' `.pth` state dicts.

Weights are stored as `.safetensors` with the model's construction arguments in the metadata, so a checkpoint can
rebuild its own model (`create_model_from_checkpoint`). `.pth`/`.pt` files are read with `weights_only=True`
(never unrestricted pickle); the authors' parameter names are mapped onto ours and loading is always strict, so a
checkpoint of another architecture or class count is refused with a message saying which.
"""

from __future__ import annotations

import json
import math
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


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: Optional[nn.Module] = None
) -> dict[str, torch.Tensor]:
    """timm-style filter: any state dict we read (the authors' names, DDP's `module.` prefix) -> our names.

    `model` is unused (timm's signature); the renames do not depend on it."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if is_official_state_dict(state_dict):
        state_dict = convert_official_state_dict(state_dict)
    return state_dict


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
    """The metadata of a `.safetensors` checkpoint ({} for other files), every field checked: the file is data from
    anywhere, so a malformed field is a CheckpointError naming it, never a traceback later."""
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
            try:
                out[key] = json.loads(out[key])
            except (ValueError, RecursionError):
                raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON") from None
            if not isinstance(out[key], dict):
                raise CheckpointError(f"{path}: metadata {key!r} must be a JSON object, got {_shown(out[key])}")
    if out.get("format") == FORMAT:
        if not isinstance(out.get("model_name"), str) or "model_args" not in out:
            raise CheckpointError(f"{path}: {FORMAT} metadata without model_name and model_args")
        _check_extra(out.get("extra") or {}, path)
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# what the `extra` fields the project reads must be (others are kept as they are: notes for people)
_EXTRA_RULES: dict[str, tuple[Any, str]] = {
    "class_names": (
        lambda v: isinstance(v, list) and 0 < len(v) <= _MAX_CLASSES and all(isinstance(n, str) for n in v),
        "a list of class name strings",
    ),
    "img_size": (lambda v: _is_int(v) and 8 <= v <= 4096, "an integer from 8 to 4096"),
    "in_chans": (lambda v: v in (1, 3) and _is_int(v), "1 or 3"),
    "temperature": (lambda v: v is None or (_is_number(v) and v > 0), "a positive number or null"),
    "role": (lambda v: v is None or isinstance(v, str), "a string"),
    "data": (lambda v: v is None or isinstance(v, str), "a string"),
    "metrics": (lambda v: v is None or isinstance(v, dict), "a mapping"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
}


def _check_extra(extra: dict[str, Any], path: Path) -> None:
    for key, (ok, expected) in _EXTRA_RULES.items():
        if key in extra and not ok(extra[key]):
            raise CheckpointError(f"{path}: metadata extra.{key} must be {expected}, got {_shown(extra[key])}")


# ------------------------------------------------------------------------------------- which models a file may build
HDKD_ARCHITECTURES = ("hdkd_teacher", "hdkd_student", "hdkd")
# timm models the project itself trains or measures (hdkd benchmark's peers, the ablation's timm teacher, and the
# common CNN baselines); a checkpoint naming any other model is refused, whatever its metadata says
SUPPORTED_TIMM_MODELS = (
    "deit_tiny_distilled_patch16_224",
    "mobilevit_s",
    "efficientformerv2_s1",
    "edgenext_small",
    "fastvit_t8",
    "levit_128s",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "convnext_tiny",
    # the peers the ablation trains in the student role (variants group "peers")
    "mobilevit_xs",
    "edgenext_x_small",
    "deit_tiny_patch16_224",
)
_MAX_CLASSES = 100_000
_MAX_PARAMS = 500_000_000  # far above any architecture here (the teacher has about 20 M)


def _int_list(low: int, high: int) -> tuple[Any, str]:
    def ok(v: Any) -> bool:
        return isinstance(v, list) and len(v) == 3 and all(_is_int(x) and low <= x <= high for x in v)

    return ok, f"a list of 3 integers from {low} to {high}"


_COMMON_ARGS: dict[str, tuple[Any, str]] = {
    "num_classes": (lambda v: _is_int(v) and 1 <= v <= _MAX_CLASSES, f"an integer from 1 to {_MAX_CLASSES}"),
    "in_chans": (lambda v: _is_int(v) and v in (1, 3), "1 or 3"),
    "img_size": (lambda v: _is_int(v) and 8 <= v <= 4096, "an integer from 8 to 4096"),
    "drop_rate": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
}
_HDKD_ARGS: dict[str, tuple[Any, str]] = {
    **_COMMON_ARGS,
    "block": (lambda v: v in ("mbcsa", "mbconv"), "mbcsa or mbconv"),
    "stem_stride": (lambda v: _is_int(v) and v in (1, 2, 4), "1, 2 or 4"),
    "depths": _int_list(1, 64),
    "widths": _int_list(1, 4096),
    "dflt_depth": (lambda v: _is_int(v) and 1 <= v <= 64, "an integer from 1 to 64"),
    "dflt_heads": (lambda v: _is_int(v) and 1 <= v <= 64, "an integer from 1 to 64"),
    "dflt_patch_size": (lambda v: _is_int(v) and 1 <= v <= 64, "an integer from 1 to 64"),
    "dflt_head_dim": (lambda v: _is_int(v) and 1 <= v <= 1024, "an integer from 1 to 1024"),
    "dflt_mlp_dim": (lambda v: _is_int(v) and 1 <= v <= 16384, "an integer from 1 to 16384"),
    "embed_dim": (lambda v: _is_int(v) and 1 <= v <= 4096, "an integer from 1 to 4096"),
    "hidden_dim": (lambda v: _is_int(v) and 1 <= v <= 4096, "an integer from 1 to 4096"),
}
_TIMM_ARGS: dict[str, tuple[Any, str]] = {
    **_COMMON_ARGS,
    # some peers' attention tables grow with the 4th power of the size (EfficientFormerV2: 1 GB at 1024 px)
    "img_size": (lambda v: _is_int(v) and 8 <= v <= 512, "an integer from 8 to 512"),
    "drop_path_rate": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
}


def check_model_spec(name: Any, args: Any, where: str = "checkpoint") -> None:
    """Refuse, before anything is built, a model a checkpoint may not build: a name outside the project's
    architectures (an `hf-hub:` or `timm/` name would download), an argument the architecture does not take (a
    `checkpoint_path` would load another file), or a value out of range (huge widths would allocate 100s of GB)."""
    if not isinstance(name, str) or name not in HDKD_ARCHITECTURES + SUPPORTED_TIMM_MODELS:
        raise CheckpointError(
            f"{where}: model_name {_shown(name)} is not a model hdkd builds from a checkpoint (one of "
            f"{', '.join(HDKD_ARCHITECTURES)} or the timm models {', '.join(SUPPORTED_TIMM_MODELS)}); "
            f"build it yourself and use hdkd.load_checkpoint(model, path)"
        )
    if not isinstance(args, dict):
        raise CheckpointError(f"{where}: model_args must be a mapping, got {_shown(args)}")
    rules = _HDKD_ARGS if name in HDKD_ARCHITECTURES else _TIMM_ARGS
    unknown = sorted(str(k) for k in args if k not in rules)
    if unknown:
        raise CheckpointError(
            f"{where}: model_args {', '.join(map(repr, unknown))} not accepted for {name} "
            f"(accepted: {', '.join(sorted(rules))})"
        )
    for key, value in args.items():
        ok, expected = rules[key]
        if not ok(value):
            raise CheckpointError(f"{where}: model_args.{key} must be {expected}, got {_shown(value)}")
    if name in HDKD_ARCHITECTURES and _estimated_params(name, args) > _MAX_PARAMS:
        raise CheckpointError(
            f"{where}: model_args describe a {name} of about {_estimated_params(name, args) / 1e6:,.0f} M "
            f"parameters (widths {args.get('widths')}, depths {args.get('depths')}); refused, over "
            f"{_MAX_PARAMS / 1e6:,.0f} M"
        )


def _estimated_params(name: str, args: dict[str, Any]) -> float:
    """A rough upper bound of the parameter count from the architecture's arguments, without building anything:
    inverted bottlenecks with expansion 4 (two 1x1 convolutions of 4 w^2 each, plus the 3x3 depthwise and
    attention), the DFLT's attention and MLP per block, and its position table."""
    widths = args.get("widths") or [64, 96, 192]
    depths = args.get("depths") or ([6, 6, 9] if name == "hdkd_teacher" else [2, 2, 3])
    convs = sum(d * 9 * w * w for d, w in zip(depths, widths))
    if name == "hdkd_teacher":
        return convs + widths[-1] * (args.get("hidden_dim") or 128)
    embed = args.get("embed_dim") or 256
    inner = (args.get("dflt_heads") or 8) * (args.get("dflt_head_dim") or 32)
    block = 4 * embed * inner + 2 * embed * (args.get("dflt_mlp_dim") or 1024)
    grid = (args.get("img_size") or 224) // ((args.get("stem_stride") or 2) * 4)
    return convs + (args.get("dflt_depth") or 3) * block + grid * grid * embed


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
    return checkpoint_filter_fn(state)


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
    """Rebuild the model a project checkpoint was saved from, and load its weights; the name and arguments in the
    file are checked first (`check_model_spec`), so a file cannot make hdkd download, load or allocate anything."""
    meta = read_checkpoint_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an hdkd checkpoint with model metadata; create the model yourself and "
            f"use hdkd.load_checkpoint(model, path)"
        )
    args = {**meta["model_args"], **overrides}
    check_model_spec(meta["model_name"], args, where=str(path))
    try:
        model = create_model(meta["model_name"], **args)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:  # timm checks arguments all these ways
        raise CheckpointError(f"{path}: cannot build {meta['model_name']} from its metadata ({exc})") from None
    return load_checkpoint(model, path)
