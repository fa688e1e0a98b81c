"""`train(cfg)`: one parametrised path for teacher, student and HDKD (only the criterion differs).

Outputs in cfg.output: `config.yaml`, `best.safetensors` (chosen on validation, never on test), `last.safetensors`,
`last_state.pt` (everything needed to resume exactly), `log.jsonl` (one line per epoch) and, when the run has
finished, `summary.json`. Checkpoints are written atomically.

With train.tensorboard (the default) rank 0 also writes TensorBoard event files (``events.out.tfevents.*``) into
cfg.output, one scalar per log.jsonl value and epoch: ``train/*`` (loss terms, accuracy, speed), ``val/*``,
``lr`` and ``grad_share/*`` (each loss term's share of the gradient norm, every train.grad_share_every-th step);
view them with ``tensorboard --logdir runs/...``. A fresh (not resumed) run removes the old event files first; a
resumed one purges the events from the epoch it restarts at.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader

from hdkd.config import Config, result_differences, save_yaml, selection_score, validate
from hdkd.data import DataSplits, build_datasets
from hdkd.data.batch_augment import BatchAugment, batch_seeds
from hdkd.data.imbalance import balanced_sample_weights
from hdkd.data.loaders import make_loader, resolve_num_workers, single_threaded_worker
from hdkd.distillation import HDKDLoss
from hdkd.distillation.teacher import build_criterion
from hdkd.errors import ConfigError
from hdkd.evaluation import classification_metrics
from hdkd.evaluation.predict import predict
from hdkd.io import atomic_write_text
from hdkd.models import count_params, save_checkpoint
from hdkd.models.checkpoint import atomic_torch_save
from hdkd.models.from_config import build_model, model_args
from hdkd.runtime import (
    check_compile_options,
    compile_model,
    resolve_amp,
    resolve_channels_last,
    resolve_device,
    reuse_freed_memory,
    seed_everything,
)
from hdkd.training.distributed import (
    DistContext,
    GlobalBatchSampler,
    cleanup_distributed,
    init_distributed,
    restarted_by_elastic,
)
from hdkd.training.engine import EpochStats, train_one_epoch
from hdkd.training.optim import build_optimizer, build_scheduler
from hdkd.training.resume import check_resume_state, prepare_output_folder, remove_stale_temp_files, run_identity


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


@dataclass
class Run:
    """What `train` sets up before the first step: resolved config, devices, data, model, criterion, optimiser."""

    cfg: Config
    ctx: DistContext
    device: torch.device
    amp: str
    augment_on: str
    channels_last: bool
    data: DataSplits
    core: nn.Module  # the plain model: validated and saved (`model` may wrap it in DDP and torch.compile)
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    out: Path
    identity: dict[str, Any]  # what a resume state must match (`hdkd.training.resume.run_identity`)
    tensorboard: Any = None  # the SummaryWriter, opened at the first logged epoch (rank 0, train.tensorboard)

    @property
    def state_path(self) -> Path:
        return self.out / "last_state.pt"


@dataclass
class Progress:
    """Where training stands: what `last_state.pt` holds besides the weights and optimiser state."""

    epoch: int = 0
    batch: int = 0
    best_value: float = -float("inf")
    best_epoch: int = -1
    best_val: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_stats: Optional[dict[str, float]] = None


def check_train_config(cfg: Config) -> None:
    """Every setting's type and range and the rules between them (`hdkd.config.validate`), and the torch.compile
    backend this torch offers, before anything is built."""
    validate(cfg)
    if cfg.train.compile:
        check_compile_options(cfg.train.compile_mode, cfg.train.compile_backend)
    if cfg.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard: needs the tensorboard package (pip install tensorboard), or set it false")
    if cfg.train.grad_share_every < 0:
        raise ConfigError(f"train.grad_share_every: must be >= 0 (0: off), got {cfg.train.grad_share_every}")


def set_up(cfg: Config, data: Optional[DataSplits]) -> Run:
    """Devices, data, model, criterion (with its frozen teacher) and optimiser; nothing is written yet, so a bad
    teacher or dataset leaves no output behind."""
    ctx = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    if cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError("train.sync_bn: SyncBatchNorm needs CUDA devices (PyTorch has no CPU implementation)")
    augment_on, amp = resolve_augment_on(cfg.data.augment_on, device), resolve_amp(cfg.train.amp, device)
    channels_last = resolve_channels_last(cfg.train.channels_last, device, amp)
    if device.type == "cpu" and cfg.train.reuse_memory:
        reuse_freed_memory()
    if data is None:
        data = build_datasets(cfg.data, cfg.model.img_size, cfg.model.in_chans)
    if data.train is None or data.val is None:
        raise ConfigError("data: training needs a train and a validation split (set data.val_fraction > 0)")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    model = build_model(cfg, data.num_classes, data.in_chans).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg, data, device).to(device)
    if channels_last:  # the frozen teacher's weights in the layout of its inputs (else oneDNN reorders)
        criterion = criterion.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs)
    identity = run_identity(cfg, model_args(cfg, data.num_classes, data.in_chans), data)
    out = Path(cfg.output)
    return Run(
        cfg, ctx, device, amp, augment_on, channels_last, data, model, model, criterion, optimizer, scheduler, out,
        identity,
    )  # fmt: skip


def resume_progress(run: Run, resume: bool, missing_ok: bool = False) -> Optional[Progress]:
    """With `resume`, the `last_state.pt` of this same run (checked: `check_resume_state`) loaded into the model,
    optimiser and scheduler; None for a fresh start (no `resume`, or `missing_ok` and no state yet)."""
    state = check_resume_state(run.state_path, run.identity, missing_ok=missing_ok) if resume else None
    if state is None:
        return None
    run.core.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    return Progress(
        epoch=state["epoch"],
        batch=state["batch"],
        best_value=state["best_value"],
        best_epoch=state["best_epoch"],
        best_val=json.loads(state["best_val"]),
        history=json.loads(state["history"]),
        epoch_stats=json.loads(state["epoch_stats"]) if state["batch"] else None,
    )


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """log.jsonl: one line per finished epoch, rewritten whole (atomically) from the history the state holds, so a
    kill between saving the state and writing the log loses no line."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in history))


def prepare_output(run: Run, progress: Progress, resumed: bool, overwrite: bool = False) -> None:
    """A fresh run first moves an earlier run's files aside (deletes them with `overwrite`); a resumed one removes
    temp files a kill left. Then a stale summary goes (nothing may look like this run's result), config.yaml is
    written, and the log as the state knows it (empty for a fresh start)."""
    if not run.ctx.is_main:
        return
    if resumed:
        remove_stale_temp_files(run.out)
    else:
        prepare_output_folder(run.out, overwrite)
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "summary.json").unlink(missing_ok=True)
    save_yaml(run.cfg, run.out / "config.yaml")
    write_log(run.out / "log.jsonl", progress.history)
    if not resumed:
        for events in run.out.glob(TENSORBOARD_EVENTS):
            events.unlink()


def wrap(run: Run) -> None:
    """DistributedDataParallel under torchrun (SyncBatchNorm first if asked), then torch.compile of the trained
    model and of the criterion's teacher; validation and checkpoints keep using the plain `run.core`."""
    cfg = run.cfg
    if run.ctx.enabled:
        if cfg.train.sync_bn:
            run.core = run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
        ids = [run.device.index] if run.device.type == "cuda" else None
        run.model = nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    if cfg.train.compile:
        run.model = compile_model(run.model, cfg.train.compile_mode, cfg.train.compile_backend)
        if isinstance(run.criterion, HDKDLoss):
            run.criterion.compile_teacher(cfg.train.compile_mode, cfg.train.compile_backend)


def save_state(run: Run, progress: Progress, epoch: int, batch: int, stats: Optional[EpochStats]) -> None:
    """Everything needed to resume exactly, atomically (mid-epoch with `batch` > 0 and the epoch's running sums)."""
    state = {
        "model": run.core.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epoch,
        "batch": batch,
        "epoch_stats": json.dumps(stats.sums if stats else {}),
        "best_value": progress.best_value,
        "best_epoch": progress.best_epoch,
        "best_val": json.dumps(progress.best_val),
        "history": json.dumps(progress.history),
        "run": run.identity,
    }
    atomic_torch_save(state, run.state_path)


def run_epoch(run: Run, progress: Progress, epoch: int, train_set, batch_transform, workers: int) -> dict:
    """One epoch of training (from `progress.batch` when resuming mid-epoch), with step checkpoints every
    train.save_every_steps; its statistics, led by the epoch's learning rate."""
    cfg, every = run.cfg, run.cfg.train.save_every_steps
    first = progress.batch if epoch == progress.epoch else 0
    run.scheduler.step(epoch)
    lr = run.optimizer.param_groups[0]["lr"]

    def on_step(steps_done: int, stats: EpochStats) -> None:
        if every and run.ctx.is_main and steps_done % every == 0:
            save_state(run, progress, epoch, steps_done, stats)

    stats = train_one_epoch(
        run.model,
        run.criterion,
        _train_loader(train_set, cfg, epoch, workers, run.ctx, first),
        run.optimizer,
        run.device,
        run.amp,
        run.channels_last,
        cfg.train.progress and run.ctx.is_main,
        cfg.train.max_steps_per_epoch,
        desc=f"{cfg.role} {epoch + 1}/{cfg.train.epochs}",
        stats=EpochStats(progress.epoch_stats if epoch == progress.epoch else None),
        on_step=on_step,
        first_step=first,
        world_size=run.ctx.world_size,
        batch_transform=batch_transform,
        grad_share_every=cfg.train.grad_share_every,
    )
    return {"lr": lr, **stats}


def checkpoint_and_log(run: Run, progress: Progress, epoch: int, stats: dict, val_loader) -> None:
    """Validate the epoch's model, keep it as best.safetensors when the selection metric improved, write
    last.safetensors, the resume state and the log line (rank 0 only)."""
    cfg, select = run.cfg, run.cfg.train.select_metric
    y, probs, val_loss = predict(run.core, val_loader, run.device, run.amp, run.channels_last)
    val = classification_metrics(y, probs, run.data.class_names)
    value = selection_score(select, _select_value(val, select))  # lower-is-better metrics negated
    record = {"epoch": epoch + 1, **stats, "val_loss": val_loss, "val_accuracy": val["accuracy"],
              "val_balanced_accuracy": val["balanced_accuracy"], "val_macro_f1": val["macro_f1"]}  # fmt: skip
    args = model_args(cfg, run.data.num_classes, run.data.in_chans)
    extra = {"class_names": run.data.class_names, "role": cfg.role, "img_size": cfg.model.img_size,
             "in_chans": run.data.in_chans}  # fmt: skip
    improved = value > progress.best_value
    if improved:
        progress.best_value, progress.best_epoch, progress.best_val = value, epoch + 1, val
        best_extra = {**extra, "epoch": epoch + 1, f"val_{select}": val[select]}
        save_checkpoint(run.core, run.out / "best.safetensors", cfg.model.name, args, extra=best_extra)
    save_checkpoint(run.core, run.out / "last.safetensors", cfg.model.name, args, extra={**extra, "epoch": epoch + 1})
    progress.history.append(record)
    save_state(run, progress, epoch + 1, 0, None)
    write_log(run.out / "log.jsonl", progress.history)
    log_tensorboard(run, record)
    if cfg.train.progress:
        print(
            f"{cfg.role} epoch {epoch + 1}/{cfg.train.epochs}: loss {stats['train_loss']:.4f} "
            f"train acc {stats['train_accuracy']:.3f} | val acc {val['accuracy']:.3f} "
            f"bal acc {val['balanced_accuracy']:.3f} | {stats['train_images_per_s']:.0f} img/s"
            + (" *" if improved else ""),
            flush=True,
        )


TENSORBOARD_EVENTS = "events.out.tfevents.*"


def tensorboard_tag(key: str) -> str:
    """log.jsonl key -> TensorBoard tag: ``train_loss`` -> ``train/loss``, ``grad_share_kd`` -> ``grad_share/kd``."""
    for prefix in ("grad_share", "train", "val"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return key


def log_tensorboard(run: Run, record: dict) -> None:
    """One epoch's log line as TensorBoard scalars at step = epoch (nothing when train.tensorboard is off)."""
    if not run.cfg.train.tensorboard:
        return
    if run.tensorboard is None:
        from torch.utils.tensorboard import SummaryWriter  # loads tensorboard only when it is used

        run.tensorboard = SummaryWriter(log_dir=str(run.out), purge_step=record["epoch"])
    for key, value in record.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            run.tensorboard.add_scalar(tensorboard_tag(key), value, record["epoch"])
    run.tensorboard.flush()


def close_tensorboard(run: Run) -> None:
    if run.tensorboard is not None:
        run.tensorboard.close()
        run.tensorboard = None


def write_summary(run: Run, progress: Progress, params: int, train_time: float) -> None:
    """summary.json: written last, so its presence means the run finished."""
    select = run.cfg.train.select_metric
    summary = {
        "role": run.cfg.role,
        "model": run.cfg.model.name,
        "params": params,
        "best_epoch": progress.best_epoch,
        f"best_val_{select}": progress.best_val.get(select),
        "best_val": progress.best_val,
        "train_time_s": train_time,
        "data": run.data.description,
        "counts": run.data.counts,
        "world_size": run.ctx.world_size,
        "amp": run.amp,
        "augment_on": run.augment_on,
        "channels_last": run.channels_last,
    }
    atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2))


def train(
    cfg: Config,
    data: Optional[DataSplits] = None,
    resume: bool = False,
    overwrite: bool = False,
    resume_missing_ok: bool = False,
) -> TrainResult:
    """Train one model as configured; `data` lets a pipeline share one decoded dataset between roles.

    Under torchrun (WORLD_SIZE > 1) this is data-parallel: each process takes its slice of every global batch of
    train.batch_size images, the frozen teacher is replicated on each, metrics are summed over processes, and only
    rank 0 validates, logs and writes checkpoints.

    ``resume`` continues from this run's `last_state.pt` (an error when there is none, or it belongs to another run,
    unless ``resume_missing_ok``: then a fresh start). A fresh run into a used folder moves the earlier run's files
    aside first, or deletes them with ``overwrite``.
    """
    cfg = cfg.resolved()
    check_train_config(cfg)
    if restarted_by_elastic():  # torchrun repeats the command, without --resume; rank 1 may die before any save
        resume, resume_missing_ok = True, True
    run = set_up(cfg, data)
    loaded = resume_progress(run, resume, resume_missing_ok)
    progress = loaded or Progress()
    prepare_output(run, progress, resumed=loaded is not None, overwrite=overwrite)
    wrap(run)
    workers = resolve_num_workers(cfg.data.num_workers)
    val_loader = make_loader(run.data.val, cfg.train.eval_batch_size, False, workers)
    train_set, batch_transform = run.data.train, None
    if run.augment_on == "device":
        train_set, batch_transform = device_augmentation(run.data.train, cfg, run.device)
    params = count_params(run.core)
    run_start = time.perf_counter()
    for epoch in range(progress.epoch, cfg.train.epochs):
        stats = run_epoch(run, progress, epoch, train_set, batch_transform, workers)
        if run.ctx.is_main:
            checkpoint_and_log(run, progress, epoch, stats, val_loader)
    close_tensorboard(run)
    train_time = time.perf_counter() - run_start
    if run.ctx.is_main:
        write_summary(run, progress, params, train_time)
    cleanup_distributed(run.ctx)
    return TrainResult(
        output=run.out,
        best_checkpoint=run.out / "best.safetensors",
        last_checkpoint=run.out / "last.safetensors",
        best_epoch=progress.best_epoch,
        best_val=progress.best_val,
        history=progress.history,
        params=params,
        train_time_s=train_time,
    )


def train_or_reuse(cfg: Config, data: Optional[DataSplits] = None, resume: bool = False) -> TrainResult:
    """With `resume`: reuse a finished run in cfg.output made with the same settings, or continue an unfinished
    one from its last_state.pt; otherwise train from scratch."""
    cfg = cfg.resolved()
    out = Path(cfg.output)
    if resume and (out / "summary.json").is_file() and (out / "config.yaml").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text())
        differences = result_differences(saved, cfg.to_dict())
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
    return train(cfg, data=data, resume=resume, resume_missing_ok=True)
