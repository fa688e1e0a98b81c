"""Building any timm model the same way everywhere (training, checkpoints, benchmarks)."""
from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn

from ..errors import ConfigError


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """timm.create_model without pretrained weights; `img_size` goes only to models that take it
    (transformers need it, convolutional models run at any size and reject it)."""
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc) or "img_size" not in kwargs:
            raise
        kwargs = {k: v for k, v in kwargs.items() if k != "img_size"}
        return timm.create_model(name, pretrained=False, **kwargs)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile's and DistributedDataParallel's wrappers (its own attributes and
    state-dict keys; the wrappers add `_orig_mod.` / `module.` prefixes)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's wrapper (torch._dynamo.eval_frame.OptimizedModule)
        else:
            return model


def check_compile_options(mode: str | None, backend: str, option: str = "train.compile") -> None:
    """Refuse an unknown torch.compile mode or backend before anything runs (not at the first training step)."""
    import torch

    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"{option}_mode: unknown {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    backends = torch.compiler.list_backends(exclude_tags=())
    if backend not in backends:
        raise ConfigError(f"{option}_backend: unknown {backend!r}; torch offers {', '.join(sorted(backends))}")


def compile_model(model: nn.Module, mode: str | None = None, backend: str = "inductor",
                  option: str = "train.compile") -> nn.Module:
    import torch

    check_compile_options(mode, backend, option)
    return torch.compile(model, mode=mode, backend=backend)
