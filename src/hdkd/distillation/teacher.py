"""The criterion a role trains with, and the frozen teacher HDKD distils from (loaded, checked, moved with it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from hdkd.config import Config
from hdkd.data import DataSplits
from hdkd.data.imbalance import class_weights
from hdkd.distillation.losses import HDKDLoss, SupervisedLoss
from hdkd.errors import CheckpointError, ConfigError
from hdkd.models import create_model_from_checkpoint, load_checkpoint, read_checkpoint_metadata
from hdkd.models.from_config import build_model


def load_teacher(cfg: Config, num_classes: int, in_chans: int, class_names: list[str]) -> nn.Module:
    """The frozen teacher for the hdkd role: a project checkpoint, an authors' .pth, or any timm model's weights."""
    path = cfg.distill.teacher
    if not path:
        raise ConfigError(
            "distill.teacher: the hdkd role needs a trained teacher checkpoint "
            "(train one with `hdkd train teacher`, or run `hdkd pipeline`)"
        )
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: teacher checkpoint not found")
    meta = read_checkpoint_metadata(path)
    if meta.get("model_name"):
        saved_classes = (meta.get("extra") or {}).get("class_names")
        if saved_classes and list(saved_classes) != list(class_names):
            raise CheckpointError(f"{path}: teacher was trained on classes {saved_classes}, the data has {class_names}")
        teacher = create_model_from_checkpoint(path)
        if teacher.num_classes != num_classes:
            raise CheckpointError(f"{path}: teacher has {teacher.num_classes} classes, the data has {num_classes}")
        return teacher
    name = cfg.distill.teacher_model or "hdkd_teacher"
    tcfg = Config(model=dataclasses.replace(cfg.model, name=name, depths=None))
    teacher = build_model(tcfg, num_classes, in_chans)
    return load_checkpoint(teacher, path)


def build_criterion(cfg: Config, data: DataSplits, device: torch.device) -> nn.Module:
    labels = data.train.labels if data.train is not None else np.zeros(0, dtype=np.int64)
    weight = class_weights(cfg.train.class_weight, labels, data.num_classes)  # train.class_weight (None: off)
    weight = None if weight is None else torch.as_tensor(weight, device=device)
    if cfg.role != "hdkd":
        return SupervisedLoss(weight=weight)
    teacher = load_teacher(cfg, data.num_classes, data.in_chans, data.class_names)
    d = cfg.distill
    return HDKDLoss(
        teacher,
        alpha=d.alpha,
        tau=d.tau,
        lam=d.lam,
        kd=d.kd,
        beta=d.beta,
        kd_reduction=d.kd_reduction,
        feature_stages=d.feature_stages,
        fold_teacher_bn=d.fold_teacher_bn,
        class_weight=weight,
        feature_norm=d.feature_norm,
    )
