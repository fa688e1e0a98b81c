"""Distillation criteria: `HDKDLoss` (logits + shared-stage features) and `SupervisedLoss` (training alone)."""

from hdkd.distillation.losses import HDKDLoss, LossOutput, SupervisedLoss

__all__ = ["HDKDLoss", "LossOutput", "SupervisedLoss"]
