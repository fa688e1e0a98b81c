"""Training: one loop for every role; the criterion is what makes a run HDKD."""
from .engine import predict, resolve_amp, train_one_epoch
from .trainer import TrainResult, build_model, model_args, resolve_device, train, train_or_reuse

__all__ = ["train", "train_or_reuse", "TrainResult", "build_model", "model_args", "predict", "train_one_epoch", "resolve_device",
           "resolve_amp"]
