"""The main job: teacher, then the student alone, then HDKD distilled from that teacher, all three tested once.

The test split is used only here, after every model has been trained and selected on validation.
"""
from __future__ import annotations

import dataclasses
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from . import __version__
from .config import Config, save_yaml
from .data import build_datasets
from .data.build import resolve_num_workers
from .errors import ConfigError
from .evaluation import classification_metrics, format_comparison_table, write_pipeline_report
from .models import count_flops, create_model_from_checkpoint
from .training import predict, resolve_device, train
from .training.trainer import make_loader

ROLE_ORDER = ("teacher", "student", "hdkd")


def run_pipeline(cfg: Config, roles: Sequence[str] = ROLE_ORDER, command: Optional[str] = None) -> dict[str, Any]:
    """Train the roles in order into cfg.output/<role>/, evaluate on test, write the report; returns its results."""
    unknown = [r for r in roles if r not in ROLE_ORDER]
    if unknown:
        raise ConfigError(f"roles: unknown {unknown}; choose from {list(ROLE_ORDER)}")
    if "hdkd" in roles and "teacher" not in roles and not cfg.distill.teacher:
        raise ConfigError("distill.teacher: HDKD without training a teacher needs a teacher checkpoint")
    base = cfg.for_role("teacher")  # data and model settings are shared by every role
    data = build_datasets(base.data, base.model.img_size, base.model.in_chans)  # decode once for all three
    if data.test is None:
        raise ConfigError(f"data: {base.data.path or 'the embedded dataset'} has no test split to report on")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.md", "report.json"):
        (out / stale).unlink(missing_ok=True)  # never leave an old report looking like this run's
    device = resolve_device(base.train.device)
    test_loader = make_loader(data.test, base.train.eval_batch_size, False, resolve_num_workers(base.data.num_workers))

    results: dict[str, dict[str, Any]] = {}
    teacher_ckpt = cfg.distill.teacher
    for role in roles:
        role_cfg = dataclasses.replace(cfg.for_role(role), output=str(out / role))
        if role == "hdkd":
            role_cfg.distill.teacher = str(teacher_ckpt)
        result = train(role_cfg, data=data)
        if role == "teacher":
            teacher_ckpt = result.best_checkpoint
        model = create_model_from_checkpoint(result.best_checkpoint).to(device)
        y, probs, test_loss = predict(model, test_loader, device, role_cfg.train.amp)
        metrics = classification_metrics(y, probs, data.class_names)
        metrics["loss"] = test_loss
        results[role] = {
            "model": role_cfg.model.name, "params": result.params,
            "flops": count_flops(model.cpu(), role_cfg.model.img_size, data.in_chans),
            "metrics": metrics, "val_metrics": result.best_val, "history": result.history,
            "best_epoch": result.best_epoch, "train_time_s": result.train_time_s,
            "checkpoint": str(result.best_checkpoint),
        }
    meta = {
        "dataset": data.description, "class_counts": data.counts, "splits": data.source,
        "img_size": base.model.img_size, "in_chans": data.in_chans,
        "epochs": {r: cfg.for_role(r).train.epochs for r in roles}, "seed": base.train.seed,
        "selection": f"best validation {base.train.select_metric}; test used only for this report",
        "command": command or " ".join(shlex.quote(a) for a in sys.argv), "hdkd_version": __version__,
        "torch": torch.__version__, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": str(device), "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    save_yaml(cfg, out / "config.yaml")
    paths = write_pipeline_report(out, results, meta)
    return {"results": results, "meta": meta, "paths": paths, "table": format_comparison_table(results)}
