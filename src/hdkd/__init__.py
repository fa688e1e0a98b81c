"""hdkd: data-efficient medical image classification by hybrid knowledge distillation (HDKD)."""
__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, HDKDError
from .models import (HDKDNet, count_flops, count_params, create_model_from_checkpoint, load_checkpoint,
                     save_checkpoint)
from .distillation import HDKDLoss, LossOutput, SupervisedLoss

__all__ = ["__version__", "HDKDNet", "HDKDLoss", "SupervisedLoss", "LossOutput", "load_checkpoint",
           "save_checkpoint", "create_model_from_checkpoint", "count_params", "count_flops", "HDKDError",
           "DataError", "CheckpointError", "ConfigError"]
