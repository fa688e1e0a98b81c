"""A model built from a run's config: the arguments a checkpoint stores so it can rebuild its own model."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from hdkd.config import Config
from hdkd.errors import ConfigError
from hdkd.models.factory import create_model


def model_args(cfg: Config, num_classes: int, in_chans: int) -> dict[str, Any]:
    """Arguments for timm.create_model; stored in checkpoints so they can rebuild their model."""
    m = cfg.model
    args: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "img_size": m.img_size}
    if m.name.startswith("hdkd"):
        args.update(
            block=m.block,
            stem_stride=m.stem_stride,
            widths=list(m.widths),
            dflt_depth=m.dflt_depth,
            dflt_heads=m.dflt_heads,
            dflt_patch_size=m.dflt_patch_size,
        )
        if m.depths is not None:
            args["depths"] = list(m.depths)
    args.update(m.kwargs)
    return args


def build_model(cfg: Config, num_classes: int, in_chans: int) -> nn.Module:
    try:
        return create_model(cfg.model.name, **model_args(cfg, num_classes, in_chans))
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"model.name: unknown model {cfg.model.name!r}") from None
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: cannot build {cfg.model.name!r}: {exc}") from None
