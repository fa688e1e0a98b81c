"""One epoch of training and one pass of inference: the plain loops every role shares."""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from hdkd.runtime import autocast, to_device


class EpochStats:
    """Running sums of an epoch (kept in resumable checkpoints; summed over ranks at the end of the epoch)."""

    KEYS = ("loss", "ce", "kd", "feature")

    def __init__(self, state: Optional[dict[str, float]] = None):
        self.sums = dict(state or {})
        for key in (*self.KEYS, "correct", "seen", "elapsed"):
            self.sums.setdefault(key, 0.0)

    def add(self, out, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        for key, value in out.components().items():
            self.sums[key] += value * n
        self.sums["correct"] += int((out.logits.argmax(1) == labels).sum())
        self.sums["seen"] += n

    def all_reduce(self, device: torch.device) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            keys = [*self.KEYS, "correct", "seen"]
            t = torch.tensor([self.sums[k] for k in keys], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            self.sums.update(zip(keys, t.tolist()))

    def result(self) -> dict[str, float]:
        seen = max(self.sums["seen"], 1)
        stats = {f"train_{k}": self.sums[k] / seen for k in self.KEYS}
        stats.update(
            train_accuracy=self.sums["correct"] / seen,
            train_images_per_s=self.sums["seen"] / max(self.sums["elapsed"], 1e-9),
            train_time_s=self.sums["elapsed"],
        )
        return stats


def train_one_epoch(
    model: nn.Module,
    criterion,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    progress: bool = True,
    max_steps: Optional[int] = None,
    desc: str = "train",
    stats: Optional[EpochStats] = None,
    on_step: Optional[Callable[[int, EpochStats], None]] = None,
    first_step: int = 0,
    world_size: int = 1,
    batch_transform: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> dict[str, float]:
    """Train over `loader`; `on_step(steps_done, stats)` runs after each optimiser step (periodic checkpoints).

    With `batch_transform` the loader yields raw (uint8 images, labels, indices) and the batch is augmented on
    the device: `batch_transform(images on device, indices)`.
    """
    model.train()
    criterion.train()
    stats = stats or EpochStats()
    step = first_step
    start = time.perf_counter() - stats.sums["elapsed"]
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        if max_steps is not None and step >= max_steps:
            break
        images, labels = batch[0], batch[1]
        if batch_transform is None:
            images, labels = to_device(images, labels, device, channels_last)
        else:
            images, labels = to_device(images, labels, device, False)
            images = batch_transform(images, batch[2])
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out = criterion(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        stats.add(out, labels)
        step += 1
        stats.sums["elapsed"] = time.perf_counter() - start
        if progress:
            seen = stats.sums["seen"]
            bar.set_postfix(
                loss=f"{stats.sums['loss'] / seen:.4f}",
                acc=f"{stats.sums['correct'] / seen:.3f}",
                img_s=f"{seen * world_size / max(stats.sums['elapsed'], 1e-9):.0f}",
            )
        if on_step is not None:
            on_step(step, stats)
    if stats.sums["seen"] == 0:
        raise RuntimeError("the training loader produced no batch")
    stats.all_reduce(device)
    return stats.result()
