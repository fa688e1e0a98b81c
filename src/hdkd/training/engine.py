"""One epoch of training and one pass of inference: the plain loops every role shares."""
from __future__ import annotations

import contextlib
import time
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


def autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def train_one_epoch(model: nn.Module, criterion, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                    amp: str = "none", channels_last: bool = False, progress: bool = True,
                    max_steps: Optional[int] = None, desc: str = "train") -> dict[str, float]:
    model.train()
    criterion.train()
    sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0, "feature": 0.0}
    correct, seen, steps = 0, 0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for images, labels in bar:
        images, labels = to_device(images, labels, device, channels_last)
        with autocast(device, amp):
            out = criterion(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()

        n = labels.shape[0]
        for key, value in out.components().items():
            sums[key] += value * n
        correct += int((out.logits.argmax(1) == labels).sum())
        seen += n
        steps += 1
        if progress:
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")
        if max_steps is not None and steps >= max_steps:
            break
    elapsed = time.perf_counter() - start
    if seen == 0:
        raise RuntimeError("the training loader produced no batch")
    stats = {f"train_{k}": v / seen for k, v in sums.items()}
    stats.update(train_accuracy=correct / seen, train_images_per_s=seen / elapsed, train_time_s=elapsed)
    return stats


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, amp: str = "none",
            channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, softmax probabilities, mean cross-entropy) over a loader, the model in eval mode."""
    model.eval()
    all_labels, all_probs, loss_sum, seen = [], [], 0.0, 0
    for images, labels in loader:
        images, labels = to_device(images, labels, device, channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        seen += labels.shape[0]
        all_probs.append(torch.softmax(logits, 1).cpu().numpy())
        all_labels.append(labels.cpu().numpy())
    if seen == 0:
        raise RuntimeError("the evaluation loader produced no batch")
    return np.concatenate(all_labels), np.concatenate(all_probs).astype(np.float64), loss_sum / seen
