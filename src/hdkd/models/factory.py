"""Building any timm model the same way everywhere (training, checkpoints, benchmarks)."""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn


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
