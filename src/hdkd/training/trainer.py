"""`train(cfg)`: one parametrised path for teacher, student and HDKD (only the criterion differs).

Outputs in cfg.output: `config.yaml`, `best.safetensors` (chosen on validation, never on test), `last.safetensors`,
`last_state.pt` (everything needed to resume exactly), `log.jsonl` (one line per epoch) and, when the run has
finished, `summary.json`. Checkpoints are written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from hdkd.config import Config, save_yaml
from hdkd.data import DataSplits, build_datasets
from hdkd.data.batch_augment import BatchAugment, batch_seeds
from hdkd.data.imbalance import balanced_sample_weights, check_sampler, class_weights
from hdkd.data.loaders import make_loader, resolve_num_workers, single_threaded_worker
from hdkd.distillation import HDKDLoss, SupervisedLoss
from hdkd.errors import CheckpointError, ConfigError
from hdkd.evaluation import classification_metrics
from hdkd.evaluation.predict import predict
from hdkd.io import atomic_write_text
from hdkd.models import count_params, create_model_from_checkpoint, load_checkpoint, save_checkpoint
from hdkd.models.checkpoint import atomic_torch_save, read_checkpoint_metadata
from hdkd.models.factory import create_model
from hdkd.runtime import check_compile_options, compile_model, resolve_amp, resolve_device, seed_everything
from hdkd.training.distributed import DistContext, GlobalBatchSampler, cleanup_distributed, init_distributed
from hdkd.training.engine import EpochStats, train_one_epoch
from hdkd.training.optim import build_optimizer, build_scheduler

_ARCH_KEYS = (
    "img_size",
    "in_chans",
    "block",
    "stem_stride",
    "depths",
    "widths",
    "dflt_depth",
    "dflt_heads",
    "dflt_patch_size",
)


@dataclass
class TrainResult:
    output: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_val: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    params: int = 0
    train_time_s: float = 0.0


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
    teacher = load_teacher(cfg, data.num_classes, data.in_chans, data.class_names).to(device)
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
    )


def _select_value(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    if value is None:
        raise ConfigError(
            f"train.select_metric: {key!r} is not a validation metric (try accuracy, balanced_accuracy or macro_f1)"
        )
    return float(value)


def _train_loader(
    train_set, cfg: Config, epoch: int, workers: int, ctx: DistContext, start_batch: int = 0
) -> DataLoader:
    """This rank's batches of the epoch: the same images and augmentations whatever the worker or process count,
    and from any batch on (resume)."""
    train_set.set_epoch(cfg.train.seed, epoch)
    weights = None
    if cfg.train.sampler == "balanced":
        weights = torch.as_tensor(balanced_sample_weights(train_set.labels))
    drop_last = ctx.enabled or len(train_set) > cfg.train.batch_size
    sampler = GlobalBatchSampler(
        len(train_set),
        cfg.train.batch_size,
        cfg.train.seed,
        epoch,
        ctx.rank,
        ctx.world_size,
        drop_last,
        start_batch,
        weights,
    )
    return DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=workers,
        worker_init_fn=single_threaded_worker,
        pin_memory=torch.cuda.is_available(),
    )


AUGMENT_ON = ("auto", "loader", "device")


def resolve_augment_on(option: str, device: torch.device) -> str:
    """data.augment_on: "auto" augments batches on the device when training on a GPU (where per-image CPU
    augmentation in loader workers would starve it), per image in the loader otherwise."""
    if option not in AUGMENT_ON:
        raise ConfigError(f"data.augment_on: unknown {option!r}; choose {', '.join(AUGMENT_ON)}")
    if option == "auto":
        return "device" if device.type == "cuda" else "loader"
    return option


def device_augmentation(train_set, cfg: Config, device: torch.device):
    """(raw view of the training set, batch transform) for data.augment_on=device: the same recipe and
    per-(seed, epoch, image) seeds as the loader path (see hdkd.data.batch_augment). The view shares the images;
    the caller's dataset, which a pipeline shares between roles, is left as it is."""
    raw = copy.copy(train_set)
    raw.raw = True
    augment = BatchAugment(train_set.num_channels, cfg.data.augment).to(device)

    def transform(images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return augment(images, batch_seeds(raw.augment_seed, indices))

    return raw, transform


def _load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def train(cfg: Config, data: Optional[DataSplits] = None, resume: bool = False) -> TrainResult:
    """Train one model as configured; `data` lets a pipeline share one decoded dataset between roles.

    Under torchrun (WORLD_SIZE > 1) this is data-parallel: each process takes its slice of every global batch of
    train.batch_size images, the frozen teacher is replicated on each, metrics are summed over processes, and only
    rank 0 validates, logs and writes checkpoints.
    """
    cfg = cfg.resolved()
    check_sampler(cfg.train.sampler)
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs: must be at least 1, got {cfg.train.epochs}")
    if cfg.train.save_every_steps is not None and cfg.train.save_every_steps < 1:
        raise ConfigError(f"train.save_every_steps: must be >= 1, got {cfg.train.save_every_steps}")
    if cfg.train.compile:
        check_compile_options(cfg.train.compile_mode, cfg.train.compile_backend)
    ctx = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    augment_on = resolve_augment_on(cfg.data.augment_on, device)
    amp = resolve_amp(cfg.train.amp, device)
    if cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError("train.sync_bn: SyncBatchNorm needs CUDA devices (PyTorch has no CPU implementation)")
    if data is None:
        data = build_datasets(cfg.data, cfg.model.img_size, cfg.model.in_chans)
    if data.train is None or data.val is None:
        raise ConfigError("data: training needs a train and a validation split (set data.val_fraction > 0)")
    seed_everything(cfg.train.seed, cfg.train.deterministic)

    model = build_model(cfg, data.num_classes, data.in_chans).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg, data, device)  # before any output exists: a bad teacher leaves nothing behind
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs)

    out = Path(cfg.output)
    state_path = out / "last_state.pt"
    history: list[dict[str, Any]] = []
    start_epoch, start_batch, best_value, best_epoch, best_val = 0, 0, -float("inf"), -1, {}
    epoch_stats: Optional[dict[str, float]] = None
    if resume and state_path.is_file():
        state = _load_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_batch = state["epoch"], state["batch"]
        best_value, best_epoch = state["best_value"], state["best_epoch"]
        best_val, history = json.loads(state["best_val"]), json.loads(state["history"])
        epoch_stats = json.loads(state["epoch_stats"]) if start_batch else None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
        (out / "summary.json").unlink(missing_ok=True)  # a stale summary must not look like this run's result
        if not (resume and state_path.is_file()):
            (out / "log.jsonl").unlink(missing_ok=True)
    args = model_args(cfg, data.num_classes, data.in_chans)
    extra = {
        "class_names": data.class_names,
        "role": cfg.role,
        "img_size": cfg.model.img_size,
        "in_chans": data.in_chans,
    }

    core = model  # the unwrapped model: evaluated and saved
    if ctx.enabled:
        if cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            core = model
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:  # the training forward passes; validation and checkpoints use the plain `core`
        model = compile_model(model, cfg.train.compile_mode, cfg.train.compile_backend)
        if isinstance(criterion, HDKDLoss):
            criterion.teacher = compile_model(criterion.teacher, cfg.train.compile_mode, cfg.train.compile_backend)

    def save_state(epoch: int, batch: int, stats: Optional[EpochStats]) -> None:
        atomic_torch_save(
            {
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "batch": batch,
                "epoch_stats": json.dumps(stats.sums if stats else {}),
                "best_value": best_value,
                "best_epoch": best_epoch,
                "best_val": json.dumps(best_val),
                "history": json.dumps(history),
            },
            state_path,
        )

    workers = resolve_num_workers(cfg.data.num_workers)
    val_loader = make_loader(data.val, cfg.train.eval_batch_size, False, workers)
    train_set, batch_transform = data.train, None
    if augment_on == "device":
        train_set, batch_transform = device_augmentation(data.train, cfg, device)
    params = count_params(core)
    select = cfg.train.select_metric
    every = cfg.train.save_every_steps
    run_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        scheduler.step(epoch)
        lr = optimizer.param_groups[0]["lr"]
        first = start_batch if epoch == start_epoch else 0
        train_loader = _train_loader(train_set, cfg, epoch, workers, ctx, first)

        def on_step(steps_done: int, stats: EpochStats, epoch=epoch) -> None:
            if every and ctx.is_main and steps_done % every == 0:
                save_state(epoch, steps_done, stats)

        stats = train_one_epoch(
            model,
            criterion,
            train_loader,
            optimizer,
            device,
            amp,
            cfg.train.channels_last,
            cfg.train.progress and ctx.is_main,
            cfg.train.max_steps_per_epoch,
            desc=f"{cfg.role} {epoch + 1}/{cfg.train.epochs}",
            stats=EpochStats(epoch_stats if epoch == start_epoch else None),
            on_step=on_step,
            first_step=first,
            world_size=ctx.world_size,
            batch_transform=batch_transform,
        )
        if not ctx.is_main:
            continue
        y, probs, val_loss = predict(core, val_loader, device, amp, cfg.train.channels_last)
        val = classification_metrics(y, probs, data.class_names)
        value = _select_value(val, select)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **stats,
            "val_loss": val_loss,
            "val_accuracy": val["accuracy"],
            "val_balanced_accuracy": val["balanced_accuracy"],
            "val_macro_f1": val["macro_f1"],
        }
        improved = value > best_value
        if improved:
            best_value, best_epoch, best_val = value, epoch + 1, val
            save_checkpoint(
                core,
                out / "best.safetensors",
                cfg.model.name,
                args,
                extra={**extra, "epoch": epoch + 1, f"val_{select}": value},
            )
        save_checkpoint(core, out / "last.safetensors", cfg.model.name, args, extra={**extra, "epoch": epoch + 1})
        history.append(record)
        save_state(epoch + 1, 0, None)
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        if cfg.train.progress:
            print(
                f"{cfg.role} epoch {epoch + 1}/{cfg.train.epochs}: loss {stats['train_loss']:.4f} "
                f"train acc {stats['train_accuracy']:.3f} | val acc {val['accuracy']:.3f} "
                f"bal acc {val['balanced_accuracy']:.3f} | {stats['train_images_per_s']:.0f} img/s"
                + (" *" if improved else ""),
                flush=True,
            )
    train_time = time.perf_counter() - run_start
    result = TrainResult(
        output=out,
        best_checkpoint=out / "best.safetensors",
        last_checkpoint=out / "last.safetensors",
        best_epoch=best_epoch,
        best_val=best_val,
        history=history,
        params=params,
        train_time_s=train_time,
    )
    if ctx.is_main:
        summary = {
            "role": cfg.role,
            "model": cfg.model.name,
            "params": params,
            "best_epoch": best_epoch,
            f"best_val_{select}": best_value,
            "best_val": best_val,
            "train_time_s": train_time,
            "data": data.description,
            "counts": data.counts,
            "world_size": ctx.world_size,
            "amp": amp,
            "augment_on": augment_on,
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    cleanup_distributed(ctx)
    return result


# settings that change where or how verbosely a run happens, not what it computes
_RESULT_NEUTRAL = {
    ("output",),
    ("train", "progress"),
    ("train", "device"),
    ("data", "num_workers"),
    ("data", "cache_dir"),
    ("roles",),
    ("distill", "fold_teacher_bn"),
}  # folding: exact up to rounding


def _config_differences(a: dict[str, Any], b: dict[str, Any], prefix: tuple = ()) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = prefix + (key,)
        if path in _RESULT_NEUTRAL:
            continue
        if key not in a:  # an option newer than the saved run: it ran with the option's default
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_differences(va, vb, path)
        elif va != vb:
            out.append(".".join(path))
    return out


def train_or_reuse(cfg: Config, data: Optional[DataSplits] = None, resume: bool = False) -> TrainResult:
    """With `resume`: reuse a finished run in cfg.output made with the same settings, or continue an unfinished
    one from its last_state.pt; otherwise train from scratch."""
    cfg = cfg.resolved()
    out = Path(cfg.output)
    if resume and (out / "summary.json").is_file() and (out / "config.yaml").is_file():
        import yaml

        saved = yaml.safe_load((out / "config.yaml").read_text())
        differences = _config_differences(saved, cfg.to_dict())
        if differences:
            raise ConfigError(
                f"{out}: was trained with other settings ({', '.join(differences[:4])}); "
                f"delete it or choose another --output"
            )
        summary = json.loads((out / "summary.json").read_text())
        history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
        return TrainResult(
            output=out,
            best_checkpoint=out / "best.safetensors",
            last_checkpoint=out / "last.safetensors",
            best_epoch=summary["best_epoch"],
            best_val=summary["best_val"],
            history=history,
            params=summary["params"],
            train_time_s=summary["train_time_s"],
        )
    return train(cfg, data=data, resume=resume)
