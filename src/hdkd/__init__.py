"""hdkd: data-efficient medical image classification by hybrid knowledge distillation (HDKD).

The package face: its names are imported on first use (PEP 562), so that ``import hdkd`` and ``hdkd --help`` do not
load torch and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

from hdkd.errors import CheckpointError, ConfigError, DataError, HDKDError
from hdkd.version import __version__

_LAZY = {
    "HDKDNet": "hdkd.models",
    "HDKDTeacher": "hdkd.models",
    "HDKDStudent": "hdkd.models",
    "HDKDDistilled": "hdkd.models",
    "count_flops": "hdkd.models",
    "count_params": "hdkd.models",
    "create_model_from_checkpoint": "hdkd.models",
    "load_checkpoint": "hdkd.models",
    "save_checkpoint": "hdkd.models",
    "HDKDLoss": "hdkd.distillation",
    "LossOutput": "hdkd.distillation",
    "SupervisedLoss": "hdkd.distillation",
}

__all__ = ["__version__", "HDKDError", "DataError", "CheckpointError", "ConfigError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hdkd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
