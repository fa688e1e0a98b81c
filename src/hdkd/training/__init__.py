"""Training: one loop for every role; the criterion is what makes a run HDKD."""

from hdkd.training.engine import train_one_epoch
from hdkd.training.trainer import TrainResult, build_model, model_args, train, train_or_reuse

__all__ = ["train", "train_or_reuse", "TrainResult", "build_model", "model_args", "train_one_epoch"]
