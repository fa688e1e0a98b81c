"""One epoch of training and one pass of inference: the plain loops every role shares."""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from hdkd.runtime import autocast, to_device

SHARE_TERMS = ("ce", "kd", "feature")


def gradient_shares(terms: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]) -> dict[str, float]:
    """Each weighted loss term's share of the gradient: ||d term / d params|| / sum over terms of the same norms.

    The norm is the L2 norm over all of ``params`` together. A term that does not depend on the parameters (or
    is absent) has share 0; when every norm is 0 the shares are all 0; a single term has share 1 (not measured).
    Costs one extra backward pass per term (the graph is kept for the training step's own backward).
    """
    present = [n for n in SHARE_TERMS if terms.get(n) is not None and terms[n].requires_grad]
    if len(present) < 2:  # one term (a model trained alone) drives all of the gradient: nothing to measure
        return {name: float(name in present) for name in SHARE_TERMS}
    norms = {}
    for name in SHARE_TERMS:
        term = terms.get(name)
        if term is None or not term.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[name] = math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None))
    total = sum(norms.values())
    return {name: (n / total if total > 0 else 0.0) for name, n in norms.items()}


class EpochStats:
    """Running sums of an epoch (kept in resumable checkpoints; summed over ranks at the end of the epoch).

    ``share_<term>`` sums the gradient shares of the measured steps (``share_steps`` of them); the epoch's
    ``grad_share_<term>`` is their mean."""

    KEYS = ("loss", "ce", "kd", "feature")
    SHARE_KEYS = (*(f"share_{t}" for t in SHARE_TERMS), "share_steps")

    def __init__(self, state: Optional[dict[str, float]] = None):
        self.sums = dict(state or {})
        for key in (*self.KEYS, *self.SHARE_KEYS, "correct", "seen", "elapsed"):
            self.sums.setdefault(key, 0.0)

    def add(self, out, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        for key, value in out.components().items():
            self.sums[key] += value * n
        self.sums["correct"] += int((out.logits.argmax(1) == labels).sum())
        self.sums["seen"] += n

    def add_shares(self, shares: Mapping[str, float]) -> None:
        for term in SHARE_TERMS:
            self.sums[f"share_{term}"] += shares.get(term, 0.0)
        self.sums["share_steps"] += 1

    def all_reduce(self, device: torch.device) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            keys = [*self.KEYS, *self.SHARE_KEYS, "correct", "seen"]
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
        if self.sums["share_steps"]:
            stats.update({f"grad_share_{t}": self.sums[f"share_{t}"] / self.sums["share_steps"] for t in SHARE_TERMS})
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
    grad_share_every: int = 0,
) -> dict[str, float]:
    """Train over `loader`; `on_step(steps_done, stats)` runs after each optimiser step (periodic checkpoints).

    With `batch_transform` the loader yields raw (uint8 images, labels, indices) and the batch is augmented on
    the device: `batch_transform(images on device, indices)`. With `grad_share_every` = N > 0, every N-th step
    (steps 0, N, 2N, ... of the epoch) also measures each loss term's share of the gradient norm
    (`gradient_shares`); the epoch's mean share per term is returned as `grad_share_<term>`.
    """
    if grad_share_every < 0:
        raise ValueError(f"grad_share_every must be >= 0, got {grad_share_every}")
    params = [p for p in model.parameters() if p.requires_grad]
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
        if grad_share_every and step % grad_share_every == 0 and out.terms:
            stats.add_shares(gradient_shares(out.terms, params))
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
