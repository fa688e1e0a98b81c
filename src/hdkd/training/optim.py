"""Optimisers and schedules, with the authors' choices as each role's defaults (see `config.AUTHORS_OPTIM`)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler

from hdkd.config import OptimConfig
from hdkd.errors import ConfigError


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay or 0.0)
    raise ConfigError(f"optim.name: unknown optimiser {cfg.name!r}; choose adam, adamw or sgd")


class ConstantLR:
    """Same interface as timm's schedulers, for the teacher's constant learning rate."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def step(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int):
    """Stepped once per epoch with the epoch index, as the authors' timm cosine schedule is."""
    if cfg.schedule == "constant":
        return ConstantLR(optimizer)
    if cfg.schedule == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=max(epochs, 1),
            lr_min=cfg.min_lr,
            warmup_t=cfg.warmup_epochs,
            warmup_lr_init=cfg.warmup_lr,
            warmup_prefix=False,
        )
    raise ConfigError(f"optim.schedule: unknown schedule {cfg.schedule!r}; choose constant or cosine")
