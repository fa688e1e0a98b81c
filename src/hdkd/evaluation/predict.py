"""One pass of inference over a loader: labels, softmax probabilities and the mean cross-entropy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hdkd.runtime import autocast, to_device


@torch.no_grad()
def predict(
    model: nn.Module, loader, device: torch.device, amp: str = "none", channels_last: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
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
